"""A merged Patient belongs to the record it was merged into (services.patients.merge): it is read
through that record's rules and destroyed with it. Before, it kept itself as its owner, and the
destruction of the survivor's record left it behind, with the person's names and identifiers; so
did the AuditEvents of what was read of it since. What a merged Patient owns now belongs to the
record where its chain of `replaced-by` links ends. A downgrade gives each merged Patient itself
back; the trail stays with the survivor's record, where the code before moved the rest of it.

Revision ID: 0027
Revises: 0026
"""
import json

import sqlalchemy as sa
from alembic import op

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None


def _replaced_by(conn) -> dict[str, str]:
    """merged Patient id -> the Patient id its `replaced-by` link names, read a page at a time."""
    found: dict[str, str] = {}
    after = ""
    while True:
        rows = conn.execute(sa.text(
            "SELECT res_id, body FROM resources WHERE res_type = 'Patient' AND body LIKE '%\"replaced-by\"%' "
            "AND res_id > :after ORDER BY res_id LIMIT 500"), {"after": after}).all()
        if not rows:
            return found
        for row in rows:
            for link in json.loads(row.body).get("link", []):
                reference = link.get("other", {}).get("reference", "")
                if link.get("type") == "replaced-by" and reference.startswith("Patient/"):
                    found[row.res_id] = reference.split("/", 1)[1]
        after = rows[-1].res_id


def upgrade() -> None:
    conn = op.get_bind()
    replaced_by = _replaced_by(conn)
    for merged, survivor in replaced_by.items():
        seen = {merged}
        while survivor in replaced_by and survivor not in seen:
            seen.add(survivor)
            survivor = replaced_by[survivor]
        conn.execute(sa.text("UPDATE resources SET patient_id = :survivor WHERE patient_id = :merged"),
                     {"survivor": survivor, "merged": merged})


def downgrade() -> None:
    conn = op.get_bind()
    for merged in _replaced_by(conn):
        conn.execute(sa.text("UPDATE resources SET patient_id = res_id WHERE res_type = 'Patient' AND res_id = :merged"),
                     {"merged": merged})
