"""An HL7v2 assigning authority named by its name for want of an OID (PID-3 `Homerton Case Note
Number`) is written `urn:hl7v2-assigning-authority:` with its whitespace percent-encoded
(mapping.hl7v2.assigning_authority_system): a URI holds none, and such a Patient was served
failing the official check. The identifiers stored are rewritten as 0018 rewrote UUID roots: the
unique identifiers a patient is found by, the token index rows, the awaited parents, and the
current version of each resource; AuditEvents and the earlier versions keep what they recorded.

Revision ID: 0023
Revises: 0022
"""
import json
import re
from urllib.parse import quote, unquote

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None

URN = "urn:hl7v2-assigning-authority:"
COLUMNS = (("unique_identifiers", "system"), ("search_token", "system"), ("awaited_parents", "system"))
# A system as a JSON string in a body: its name, escapes and all.
IN_BODY = re.compile(r'"urn:hl7v2-assigning-authority:((?:[^"\\]|\\.)*)"')


def _encoded(name: str) -> str:
    return re.sub(r"\s", lambda space: quote(space.group(), safe=""), name)


def _decoded(name: str) -> str:
    """What the code before wrote: the whitespace this revision encodes (a % it did not write stays)."""
    return re.sub(r"(?:%[0-9A-F]{2})+", lambda run: run.group() if not unquote(run.group()).isspace()
                  else unquote(run.group()), name)


def _rewrite(name_written) -> None:
    def system(text: str) -> str:
        return URN + name_written(text[len(URN):]) if text.startswith(URN) else text

    def string(found: re.Match) -> str:
        old = URN + json.loads(f'"{found.group(1)}"')
        return found.group() if system(old) == old else json.dumps(system(old), ensure_ascii=False)

    def body(text: str) -> str:
        return IN_BODY.sub(string, text)

    conn = op.get_bind()
    for table, column in COLUMNS:
        audit_rows = " AND res_type <> 'AuditEvent'" if table == "search_token" else ""
        olds = conn.execute(sa.text(f"SELECT DISTINCT {column} FROM {table} WHERE {column} LIKE :like"),
                            {"like": f"{URN}%"}).scalars().all()
        for old in olds:
            if system(old) != old:
                conn.execute(sa.text(f"UPDATE {table} SET {column} = :new WHERE {column} = :old{audit_rows}"),
                             {"new": system(old), "old": old})
    # The bodies a page at a time, in key order, in bounded memory.
    after = ("", "")
    while True:
        rows = conn.execute(sa.text(
            "SELECT res_type, res_id, body FROM resources WHERE res_type <> 'AuditEvent' AND body LIKE :like "
            "AND (res_type > :res_type OR (res_type = :res_type AND res_id > :res_id)) "
            "ORDER BY res_type, res_id LIMIT 500"), {"like": f"%{URN}%", "res_type": after[0], "res_id": after[1]}).all()
        if not rows:
            return
        for row in rows:
            rewritten = body(row.body)
            if rewritten != row.body:
                conn.execute(sa.text("UPDATE resources SET body = :body WHERE res_type = :res_type AND res_id = :res_id"),
                             {"body": rewritten, "res_type": row.res_type, "res_id": row.res_id})
        after = (rows[-1].res_type, rows[-1].res_id)


def upgrade() -> None:
    _rewrite(_encoded)


def downgrade() -> None:
    _rewrite(_decoded)
