"""A raw input keeps who submitted it: a document's write rights are its requester's, so an
operator reprocesses it as that requester (services/messages.py).

Revision ID: 0019
Revises: 0018
"""
import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("raw_inputs", sa.Column("requester", sa.Text()))


def downgrade() -> None:
    with op.batch_alter_table("raw_inputs") as batch:
        batch.drop_column("requester")
