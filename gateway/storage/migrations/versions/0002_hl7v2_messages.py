"""HL7v2 messages: control id, fingerprint, message type and the ACK sent, on raw inputs.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("raw_inputs") as batch:
        batch.add_column(sa.Column("control_id", sa.String(199)))
        batch.add_column(sa.Column("fingerprint", sa.String(64)))
        batch.add_column(sa.Column("message_type", sa.String(32)))
        batch.add_column(sa.Column("ack", sa.Text))
    op.create_index("ix_raw_inputs_control", "raw_inputs", ["sender", "control_id"])


def downgrade() -> None:
    op.drop_index("ix_raw_inputs_control", "raw_inputs")
    with op.batch_alter_table("raw_inputs") as batch:
        for column in ("ack", "message_type", "fingerprint", "control_id"):
            batch.drop_column(column)
