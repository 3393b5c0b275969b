"""The audit trail in several hash chains, each extended under its own lock: writers in parallel no
longer queue on one lock held through every commit. The entries written so far form chain 0.

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_chain") as batch:
        batch.add_column(sa.Column("chain", sa.Integer, nullable=False, server_default="0"))
    op.create_index("ix_audit_chain_head", "audit_chain", ["chain", "seq"])


def downgrade() -> None:
    op.drop_index("ix_audit_chain_head", "audit_chain")
    with op.batch_alter_table("audit_chain") as batch:
        batch.drop_column("chain")
