"""An INS printed in groups ("1 85 06 75 112 045 54", or with dots) is its 15 characters
(mapping.identity.identifier_value): a CDA's recordTarget and a Patient registered over FHIR kept
it as printed, in their Patient's body and index rows, where no search by the INS found the Patient
or its documents. Rewritten as 0023 rewrote authority names: the Patients' token index rows, the
unique identifiers a patient is found by, and the current version of each resource of such a
record (the Patient, the copy of it its DocumentReferences contain); AuditEvents and the earlier
versions keep what they recorded. A printed INS whose 15 characters another Patient claims already
stays claimed as it was: those are two records of one patient, which only a merge (A40) joins.
The downgrade changes nothing: how each INS was printed is not kept.

Revision ID: 0029
Revises: 0028
"""
import json

import sqlalchemy as sa
from alembic import op
from stdnum.fr import nir

revision = "0029"
down_revision = "0028"
branch_labels = None
depends_on = None

INS_SYSTEMS = tuple(f"urn:oid:1.2.250.1.213.1.4.{n}" for n in (8, 9, 10, 11))


def _printed(value: str) -> bool:
    return nir.compact(value) != value


def upgrade() -> None:
    conn = op.get_bind()
    systems = sa.bindparam("systems", INS_SYSTEMS, expanding=True)
    printed = {}   # record (its Patient's id): {INS as printed: its 15 characters}
    for res_id, system, code in conn.execute(sa.text(
            "SELECT res_id, system, code FROM search_token WHERE res_type = 'Patient' AND param = 'identifier' "
            "AND system IN :systems").bindparams(systems)).all():
        if _printed(code):
            # A Patient merged into another (A40) is in the survivor's record, with its documents.
            record = conn.execute(sa.text("SELECT patient_id FROM resources WHERE res_type = 'Patient' "
                                          "AND res_id = :res_id"), {"res_id": res_id}).scalar_one_or_none()
            printed.setdefault(record or res_id, {})[code] = nir.compact(code)
            conn.execute(sa.text("UPDATE search_token SET code = :new WHERE res_type = 'Patient' AND res_id = :res_id "
                                 "AND param = 'identifier' AND system = :system AND code = :old"),
                         {"new": nir.compact(code), "res_id": res_id, "system": system, "old": code})
    for system, value, res_id in conn.execute(sa.text(
            "SELECT system, value, res_id FROM unique_identifiers WHERE res_type = 'Patient' AND system IN :systems")
            .bindparams(systems)).all():
        if not _printed(value):
            continue
        holder = conn.execute(sa.text("SELECT res_id FROM unique_identifiers WHERE res_type = 'Patient' "
                                      "AND system = :system AND value = :value"),
                              {"system": system, "value": nir.compact(value)}).scalar_one_or_none()
        key = {"system": system, "old": value, "new": nir.compact(value)}
        if holder is None:
            conn.execute(sa.text("UPDATE unique_identifiers SET value = :new WHERE res_type = 'Patient' "
                                 "AND system = :system AND value = :old"), key)
        elif holder == res_id:
            conn.execute(sa.text("DELETE FROM unique_identifiers WHERE res_type = 'Patient' AND system = :system "
                                 "AND value = :old"), key)
    # A record's resources a page at a time, in key order, in bounded memory. The INS as printed
    # stands in a body as a JSON string of its own (an identifier's value).
    for patient_id, values in printed.items():
        written = {json.dumps(old, ensure_ascii=False): json.dumps(new) for old, new in values.items()}
        after = ("", "")
        while True:
            rows = conn.execute(sa.text(
                "SELECT res_type, res_id, body FROM resources WHERE patient_id = :patient_id "
                "AND res_type <> 'AuditEvent' AND (res_type > :res_type OR (res_type = :res_type AND res_id > :res_id)) "
                "ORDER BY res_type, res_id LIMIT 500"),
                {"patient_id": patient_id, "res_type": after[0], "res_id": after[1]}).all()
            if not rows:
                break
            for row in rows:
                body = row.body
                for old, new in written.items():
                    body = body.replace(old, new)
                if body != row.body:
                    conn.execute(sa.text("UPDATE resources SET body = :body WHERE res_type = :res_type "
                                         "AND res_id = :res_id"), {"body": body, "res_type": row.res_type,
                                                                   "res_id": row.res_id})
            after = (rows[-1].res_type, rows[-1].res_id)


def downgrade() -> None:
    pass
