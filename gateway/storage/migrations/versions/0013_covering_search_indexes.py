"""The token and date indexes carry every column their searches read, so neither reads a row:

- the owner indexes carry the values compared (a token's code and system, a date's bounds): a check
  on a resource's own rows (a DocumentReference's type, status or date, for each document of a
  reader's patients) read the index and then the row it pointed to, a page more per document when
  neither was in memory;
- the lookup indexes carry the resource's id, which is what a lookup returns. Covering owner
  indexes alone led SQLite, at a million documents, to scan every Patient's token rows in the owner
  index rather than seek the identifier in the lookup index and read its row (30 ms a search
  instead of 4).

Revision ID: 0013
Revises: 0012
"""
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

BEFORE = {
    ("search_token", "ix_token_owner"): ["res_type", "res_id", "param"],
    ("search_token", "ix_token_lookup"): ["res_type", "param", "code", "system"],
    ("search_date", "ix_date_owner"): ["res_type", "res_id", "param"],
    ("search_date", "ix_date_lookup"): ["res_type", "param", "low", "high"],
}
AFTER = {
    ("search_token", "ix_token_owner"): ["res_type", "res_id", "param", "code", "system"],
    ("search_token", "ix_token_lookup"): ["res_type", "param", "code", "system", "res_id"],
    ("search_date", "ix_date_owner"): ["res_type", "res_id", "param", "low", "high"],
    ("search_date", "ix_date_lookup"): ["res_type", "param", "low", "high", "res_id"],
}


def _rebuild(indexes: dict[tuple[str, str], list[str]]) -> None:
    for (table, name), columns in indexes.items():
        op.drop_index(name, table)
        op.create_index(name, table, columns)


def upgrade() -> None:
    _rebuild(AFTER)


def downgrade() -> None:
    _rebuild(BEFORE)
