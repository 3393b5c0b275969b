"""The operators' listings (`/hl7v2/messages?status=`, `/documents/received?status=`, newest first)
read the raw inputs of one status in the order of their ids: on PostgreSQL, whose index on the
status alone keeps equal keys in their rows' order, the newest refusals were found by walking every
input back from the newest (1.1–1.7 s at 5,000,000 raw inputs whose refusals were all old; at a
national record's 10^9, minutes). SQLite's index held the rowid after the status already.

Revision ID: 0022
Revises: 0021
"""
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_raw_inputs_status_id", "raw_inputs", ["status", "id"])
    op.drop_index("ix_raw_inputs_status", "raw_inputs")


def downgrade() -> None:
    op.create_index("ix_raw_inputs_status", "raw_inputs", ["status"])
    op.drop_index("ix_raw_inputs_status_id", "raw_inputs")
