"""Patient's new search parameter `deceased`, which the access rules read (a patient who died: the
record is closed to their own accounts and their representatives), for the patients already
stored: the rows the code's index extraction gives the current version of each one not deleted.

Revision ID: 0032
Revises: 0031
"""
import json

import sqlalchemy as sa
from alembic import op

revision = "0032"
down_revision = "0031"
branch_labels = None
depends_on = None

resources = sa.table("resources", sa.column("res_type"), sa.column("res_id"), sa.column("deleted", sa.Boolean),
                     sa.column("body"))
search_token = sa.table("search_token", sa.column("res_type"), sa.column("res_id"), sa.column("param"),
                        sa.column("system"), sa.column("code"))


def upgrade() -> None:
    conn = op.get_bind()
    rows = []
    for res_id, body in conn.execute(sa.select(resources.c.res_id, resources.c.body).where(
            resources.c.res_type == "Patient", resources.c.deleted == sa.false())):
        patient = json.loads(body)
        deceased = bool(patient.get("deceasedBoolean")) or "deceasedDateTime" in patient
        rows.append({"res_type": "Patient", "res_id": res_id, "param": "deceased", "system": "",
                     "code": "true" if deceased else "false"})
        if len(rows) >= 1000:
            conn.execute(sa.insert(search_token), rows)
            rows = []
    if rows:
        conn.execute(sa.insert(search_token), rows)


def downgrade() -> None:
    op.execute("DELETE FROM search_token WHERE res_type = 'Patient' AND param = 'deceased'")
