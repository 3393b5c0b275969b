"""Raw inputs found by their body's SHA-256: a document sent again after its processing failed
takes up its earlier copy, and erasure asks whether a blob still has a raw input.

Revision ID: 0016
Revises: 0015
"""
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_raw_inputs_sha256", "raw_inputs", ["sha256"])


def downgrade() -> None:
    op.drop_index("ix_raw_inputs_sha256", "raw_inputs")
