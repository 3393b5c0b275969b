"""Notifications: how many of their recipients the mail server refused for good. Such a
notification was sent again every five minutes, for good.

Revision ID: 0025
Revises: 0024
"""
import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.add_column(sa.Column("refused", sa.Integer))


def downgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.drop_column("refused")
