"""A document's masking from professionals (MASQUE_PS) that the patient, or their representative,
asked for: only they lift it. Before, the author of a document lifted the patient's mask with the
same PATCH that lifts their own.

Who set a stored mask was not kept. One the document came with (its first version's) is taken as
its author's; one a later version added, as the patient's: a PATCH of the patient or of the author
added it, and taking it as the author's would leave the patient's open to the author.

Revision ID: 0030
Revises: 0029
"""
import json

import sqlalchemy as sa
from alembic import op

revision = "0030"
down_revision = "0029"
branch_labels = None
depends_on = None

VISIBILITY_SYSTEM = ("https://mos.esante.gouv.fr/NOS/TRE_A07-StatutVisibiliteDocument/FHIR/"
                     "TRE-A07-StatutVisibiliteDocument")


def _masked(body: str) -> bool:
    return any(coding.get("system") == VISIBILITY_SYSTEM and coding.get("code") == "MASQUE_PS"
               for label in json.loads(body).get("securityLabel", []) for coding in label.get("coding", []))


def upgrade() -> None:
    with op.batch_alter_table("resources") as batch:
        batch.add_column(sa.Column("masked_by_patient", sa.Boolean, nullable=False, server_default=sa.false()))
    conn = op.get_bind()
    after = ""
    while True:   # the masked documents a page at a time, in key order, in bounded memory
        masked = conn.execute(sa.text(
            "SELECT res_id FROM resources WHERE res_type = 'DocumentReference' AND masked AND version > 1 "
            "AND res_id > :after ORDER BY res_id LIMIT 500"), {"after": after}).scalars().all()
        if not masked:
            break
        after = masked[-1]
        for res_id in masked:
            first = conn.execute(sa.text(
                "SELECT body FROM resource_versions WHERE res_type = 'DocumentReference' AND res_id = :res_id "
                "AND version = 1"), {"res_id": res_id}).scalar_one_or_none()
            if first is None or not _masked(first):
                conn.execute(sa.text("UPDATE resources SET masked_by_patient = :masked WHERE "
                                     "res_type = 'DocumentReference' AND res_id = :res_id"),
                             {"masked": True, "res_id": res_id})


def downgrade() -> None:
    with op.batch_alter_table("resources") as batch:
        batch.drop_column("masked_by_patient")
