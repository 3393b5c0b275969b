"""The Binaries that read a blob, found by an index: a record's destruction asks it of each of its
blobs, and each question read the whole of `resources`: destroying a record of 3,000 documents,
among 6,000 in the database, held the write lock 69 s, most of it in those questions.

Revision ID: 0026
Revises: 0025
"""
import sqlalchemy as sa
from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_resources_blob", "resources", ["blob_sha256"],
                    sqlite_where=sa.text("blob_sha256 IS NOT NULL"), postgresql_where=sa.text("blob_sha256 IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_resources_blob", "resources")
