"""A decision about a structure named by its IdNatSt of a FINESS (1 + FINESS, as the CI-SIS names
structures) is a rule about that FINESS, the organisation a professional's token names: its rule
named the IdNatSt, and applied to no one (access.rules.rule_actor). The rules already written so are
rewritten. A downgrade leaves them: the rules before named nothing a token could match, and a rule
about a FINESS is what the decision said.

Revision ID: 0034
Revises: 0033
"""
import re

import sqlalchemy as sa
from alembic import op

revision = "0034"
down_revision = "0033"
branch_labels = None
depends_on = None

FINESS_SYSTEM = "https://finess.esante.gouv.fr"
IDNATST_SYSTEM = "urn:oid:1.2.250.1.71.4.2.2"
# As access.rules has it: 1 + a FINESS (nine characters, digits but for 2A or 2B in front).
IDNATST_OF_FINESS = re.compile(r"1((?:\d{2}|2A|2B)\d{7})")


def upgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT DISTINCT actor_value FROM access_rules WHERE actor_system = :system"),
                        {"system": IDNATST_SYSTEM}).scalars().all()
    for value in rows:
        found = IDNATST_OF_FINESS.fullmatch(value)
        if found:
            conn.execute(sa.text("UPDATE access_rules SET actor_system = :finess, actor_value = :value "
                                 "WHERE actor_system = :system AND actor_value = :idnatst"),
                         {"finess": FINESS_SYSTEM, "value": found.group(1), "system": IDNATST_SYSTEM,
                          "idnatst": value})


def downgrade() -> None:
    pass
