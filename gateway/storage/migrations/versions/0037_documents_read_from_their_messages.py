"""A document an HL7v2 message carried in base64 (an MDM^T02's CDA) is read from the message's raw
copy, which holds it already, instead of being written a second time: each message's commit wrote
its CDA twice, and the database kept both. Blobs already stored stay as they are. A downgrade
writes the bytes of each document read so into its own row.

Revision ID: 0037
Revises: 0036
"""
import base64

import sqlalchemy as sa
from alembic import op

revision = "0037"
down_revision = "0036"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("blobs") as batch:
        batch.add_column(sa.Column("base64_of", sa.String(64)))
        batch.add_column(sa.Column("base64_at", sa.Integer))
        batch.add_column(sa.Column("base64_length", sa.Integer))
    op.create_index("ix_blobs_base64_of", "blobs", ["base64_of"], sqlite_where=sa.text("base64_of IS NOT NULL"),
                    postgresql_where=sa.text("base64_of IS NOT NULL"))


def downgrade() -> None:
    conn = op.get_bind()
    while True:   # a page at a time, in bounded memory: each document written leaves the pages
        read = conn.execute(sa.text("SELECT sha256, base64_of, base64_at, base64_length FROM blobs "
                                    "WHERE base64_of IS NOT NULL LIMIT 500")).all()
        if not read:
            break
        for sha256, carrier, at, length in read:
            text = bytes(conn.execute(sa.text("SELECT data FROM blobs WHERE sha256 = :s"), {"s": carrier}).scalar_one())
            encoded = text[at:at + length]
            data = base64.b64decode(encoded + b"=" * (-len(encoded) % 4))
            conn.execute(sa.text("UPDATE blobs SET data = :d, base64_of = NULL WHERE sha256 = :s"),
                         {"s": sha256, "d": data})
    op.drop_index("ix_blobs_base64_of", "blobs")
    with op.batch_alter_table("blobs") as batch:
        batch.drop_column("base64_length")
        batch.drop_column("base64_at")
        batch.drop_column("base64_of")
