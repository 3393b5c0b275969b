"""A Consent's actor that is a structure is indexed under its FINESS and under its IdNatSt of that
FINESS (access.rules.structure_spellings): a search by one spelling missed the decisions written
in the other. The Consents indexed before get the other spelling's row. A downgrade removes none:
the rows are those a Consent indexed now has.

Revision ID: 0036
Revises: 0035
"""
import re

import sqlalchemy as sa
from alembic import op

revision = "0036"
down_revision = "0035"
branch_labels = None
depends_on = None

FINESS_SYSTEM = "https://finess.esante.gouv.fr"
IDNATST_SYSTEM = "urn:oid:1.2.250.1.71.4.2.2"
# As access.rules has them.
FINESS = re.compile(r"(?:\d{2}|2A|2B)\d{7}")
IDNATST_OF_FINESS = re.compile(rf"1({FINESS.pattern})")


def upgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.text(
        "SELECT res_id, system, code FROM search_token WHERE res_type = 'Consent' AND param = 'actor' "
        "AND system IN (:finess, :idnatst)"), {"finess": FINESS_SYSTEM, "idnatst": IDNATST_SYSTEM}).all()
    present = {(row.res_id, row.system, row.code) for row in rows}
    missing = set()
    for row in rows:
        found = IDNATST_OF_FINESS.fullmatch(row.code) if row.system == IDNATST_SYSTEM else None
        if found:
            missing.add((row.res_id, FINESS_SYSTEM, found.group(1)))
        elif row.system == FINESS_SYSTEM and FINESS.fullmatch(row.code):
            missing.add((row.res_id, IDNATST_SYSTEM, f"1{row.code}"))
    missing -= present
    if missing:
        conn.execute(sa.text("INSERT INTO search_token (res_type, res_id, param, system, code) "
                             "VALUES ('Consent', :res_id, 'actor', :system, :code)"),
                     [{"res_id": res_id, "system": system, "code": code} for res_id, system, code in sorted(missing)])


def downgrade() -> None:
    pass
