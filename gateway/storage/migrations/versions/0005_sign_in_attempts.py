"""Sign-in attempts counted per account and per source address, before the secret is checked.

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sign_in_attempts",
        sa.Column("key", sa.String(192), primary_key=True),
        sa.Column("window_start", sa.String(32), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("locked_until", sa.String(32)),
    )
    # The account's own failure count gives way to the table above.
    with op.batch_alter_table("patient_accounts") as batch:
        batch.drop_column("failed_attempts")
        batch.drop_column("locked_until")


def downgrade() -> None:
    with op.batch_alter_table("patient_accounts") as batch:
        batch.add_column(sa.Column("failed_attempts", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("locked_until", sa.String(32)))
    op.drop_table("sign_in_attempts")
