"""An II root that is a UUID is written urn:uuid: in lower case, as FHIR writes it, where it was
written urn:oid: (mapping.document.root_uri). The identifiers stored are rewritten: the unique
identifiers a document, patient or professional is found by, the token index rows, the awaited
parents, and the current version of each resource. AuditEvents keep what they recorded (the trail's
chain covers their bodies), and so do the earlier versions in the history.

Revision ID: 0018
Revises: 0017
"""
import re

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

# LIKE finds the candidates on both backends; the expression decides.
FORMS = {
    "upgrade": ("urn:oid:________-____-____-____-____________",
                re.compile(r"urn:oid:([0-9A-Fa-f]{8}(?:-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12})(?![0-9A-Za-z.-])"),
                lambda uuid: f"urn:uuid:{uuid.lower()}"),
    # HL7 v3 writes a UUID root in upper case: what the code before this revision wrote.
    "downgrade": ("urn:uuid:________-____-____-____-____________",
                  re.compile(r"urn:uuid:([0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12})(?![0-9A-Za-z.-])"),
                  lambda uuid: f"urn:oid:{uuid.upper()}"),
}
COLUMNS = (("unique_identifiers", "system"), ("unique_identifiers", "value"), ("search_token", "system"),
           ("search_token", "code"), ("awaited_parents", "system"), ("awaited_parents", "value"))


def _rewrite(direction: str) -> None:
    like, expression, written = FORMS[direction]

    def rewritten(text: str) -> str:
        return expression.sub(lambda match: written(match.group(1)), text)

    conn = op.get_bind()
    for table, column in COLUMNS:
        audit_rows = " AND res_type <> 'AuditEvent'" if table == "search_token" else ""
        olds = conn.execute(sa.text(f"SELECT DISTINCT {column} FROM {table} WHERE {column} LIKE :like"),
                            {"like": like}).scalars().all()
        for old in olds:
            if rewritten(old) != old:
                conn.execute(sa.text(f"UPDATE {table} SET {column} = :new WHERE {column} = :old{audit_rows}"),
                             {"new": rewritten(old), "old": old})
    # The bodies a page at a time, in key order: a database where every document has a UUID id
    # is rewritten in bounded memory.
    after = ("", "")
    while True:
        rows = conn.execute(sa.text(
            "SELECT res_type, res_id, body FROM resources WHERE res_type <> 'AuditEvent' AND body LIKE :like "
            "AND (res_type > :res_type OR (res_type = :res_type AND res_id > :res_id)) "
            "ORDER BY res_type, res_id LIMIT 500"), {"like": f"%{like}%", "res_type": after[0], "res_id": after[1]}).all()
        if not rows:
            return
        for row in rows:
            body = rewritten(row.body)
            if body != row.body:
                conn.execute(sa.text("UPDATE resources SET body = :body WHERE res_type = :res_type AND res_id = :res_id"),
                             {"body": body, "res_type": row.res_type, "res_id": row.res_id})
        after = (rows[-1].res_type, rows[-1].res_id)


def upgrade() -> None:
    _rewrite("upgrade")


def downgrade() -> None:
    _rewrite("downgrade")
