"""A representative's record may be held as a protected adult's guardian (tutelle), whose access
does not end at the person's majority, as a parent's does. The representatives already stored are
parents of minors, as the gateway knew them.

Revision ID: 0033
Revises: 0032
"""
import sqlalchemy as sa
from alembic import op

revision = "0033"
down_revision = "0032"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("account_records") as batch:
        batch.add_column(sa.Column("guardianship", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("account_records") as batch:
        batch.drop_column("guardianship")
