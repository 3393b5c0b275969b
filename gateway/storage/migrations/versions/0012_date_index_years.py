"""Date index strings carry the year on four digits: they were written with strftime, which gives
the year 999 as '999', and a date before the year 1000 then sorted after every later one. The
strings already stored are padded the same way.

Revision ID: 0012
Revises: 0011
"""
import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    conn = op.get_bind()
    for column in ("low", "high"):
        unpadded = sa.text(f"SELECT DISTINCT {column} FROM search_date WHERE {column} NOT LIKE '____-%'")
        for (old,) in conn.execute(unpadded).all():
            year, rest = old.split("-", 1)
            conn.execute(sa.text(f"UPDATE search_date SET {column} = :new WHERE {column} = :old"),
                         {"new": year.zfill(4) + "-" + rest, "old": old})


def downgrade() -> None:
    """Nothing to undo: the code before compared these years wrongly either way."""
