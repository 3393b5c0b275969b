"""A raw input's body moves to blobs, under the SHA-256 its row already holds. SQLite rewrites a
whole row on UPDATE: every change of status rewrote the body with it (three times per input, a
20 MB document's bytes each time); and a CDA posted raw is its own Binary's blob, now stored once.

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("INSERT INTO blobs (sha256, size, data) SELECT r.sha256, r.size, r.body FROM raw_inputs r"
               " WHERE r.id IN (SELECT MIN(id) FROM raw_inputs GROUP BY sha256)"
               " AND NOT EXISTS (SELECT 1 FROM blobs b WHERE b.sha256 = r.sha256)")
    with op.batch_alter_table("raw_inputs") as batch:
        batch.drop_column("body")


def downgrade() -> None:
    with op.batch_alter_table("raw_inputs") as batch:
        batch.add_column(sa.Column("body", sa.LargeBinary, nullable=False, server_default=""))
    op.execute("UPDATE raw_inputs SET body = (SELECT data FROM blobs WHERE blobs.sha256 = raw_inputs.sha256)")
