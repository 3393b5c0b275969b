"""The identifiers a raw input names its patient by, when no record of that patient was known as it
was refused (or stored nothing): the record made for them later takes it with its destruction. It
named no record, and outlived it. Kept apart from the outcome, which operators read.

Revision ID: 0028
Revises: 0027
"""
import sqlalchemy as sa
from alembic import op

revision = "0028"
down_revision = "0027"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("raw_inputs") as batch:
        batch.add_column(sa.Column("patient_identifiers", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("raw_inputs") as batch:
        batch.drop_column("patient_identifiers")
