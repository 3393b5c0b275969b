"""A blob over 1 MiB keeps its first MiB in its row and the rest in `blob_parts`, a MiB each: the
drivers copy a value twice while they insert it, which made a 20 MB document cost 40 MB more than
itself. Blobs already stored stay whole in their row, which is still how they are read.

Revision ID: 0011
Revises: 0010
"""
import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blob_parts",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("part", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("sha256", "part"),
    )


def downgrade() -> None:
    conn = op.get_bind()
    for (sha256,) in conn.execute(sa.text("SELECT DISTINCT sha256 FROM blob_parts")).all():
        parts = conn.execute(sa.text("SELECT data FROM blob_parts WHERE sha256 = :s ORDER BY part"), {"s": sha256})
        first = conn.execute(sa.text("SELECT data FROM blobs WHERE sha256 = :s"), {"s": sha256}).scalar_one()
        conn.execute(sa.text("UPDATE blobs SET data = :d WHERE sha256 = :s"),
                     {"s": sha256, "d": bytes(first) + b"".join(bytes(p) for (p,) in parts)})
    op.drop_table("blob_parts")
