"""Notifications tell of an emergency access too (R1111-48: the patient is informed of it after
the fact): each has a kind, and names what it tells of, a document added (its id, as before) or
the first emergency access of the hour (its AuditEvent's id).

Revision ID: 0031
Revises: 0030
"""
import sqlalchemy as sa
from alembic import op

revision = "0031"
down_revision = "0030"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.alter_column("docref_id", new_column_name="about_id", existing_type=sa.String(64),
                           existing_nullable=False)
        batch.add_column(sa.Column("kind", sa.String(24), nullable=False, server_default="new-document"))


def downgrade() -> None:
    op.execute("DELETE FROM notifications WHERE kind <> 'new-document'")
    with op.batch_alter_table("notifications") as batch:
        batch.drop_column("kind")
        batch.alter_column("about_id", new_column_name="docref_id", existing_type=sa.String(64),
                           existing_nullable=False)
