"""The refusals recorded before this revision lose the patient data their texts carried: an INS, or
a birth date, in the reason kept with the raw input and in the ACK it was answered with. Operators
read those texts and no patient data; the texts now name the field instead (the sender has the
value). What the texts said cannot be restored: the downgrade leaves them as they are.

Revision ID: 0020
Revises: 0019
"""
import re

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

# The texts of the code before this revision, and what it writes now. A text ends at a JSON string's
# quote, or at an ACK field's end.
REWRITTEN = (
    (re.compile(r"INS '[^'\"|\r]*' is not valid"), "the INS is not valid"),
    (re.compile(r"PID-3 carries INS [^\"|\r]*? but the CDA recordTarget is INS [^\"|\r ;]*"),
     "the INS in PID-3 is not the INS of the CDA recordTarget"),
    (re.compile(r"subject does not designate the patient of the CDA \(INS [^)\"|\r]*\)"),
     "subject does not designate the patient of the CDA (its INS)"),
    (re.compile(r"PID-7 \(birth date\): '[^'\"|\r]*' (?:is not an HL7 TS value \(YYYYMMDDHHMMSS\+ZZZZ\)"
                r"|has a time but no full date|is not a valid date: [^\"|\r]*)"),
     "PID-7 (birth date) is not a valid date (YYYY[MM[DD]])"),
)
CANDIDATES = "(outcome LIKE '%INS %' OR outcome LIKE '%PID-7 (birth date): %')"


def without_patient_data(text: str | None) -> str | None:
    if text is None:
        return None
    for expression, written in REWRITTEN:
        text = expression.sub(written, text)
    return text


def upgrade() -> None:
    conn = op.get_bind()
    # A page at a time, in key order: bounded memory however many refusals were kept.
    after = 0
    while True:
        rows = conn.execute(sa.text(
            f"SELECT id, outcome, ack FROM raw_inputs WHERE status = 'refused' AND {CANDIDATES} AND id > :after "
            "ORDER BY id LIMIT 500"), {"after": after}).all()
        if not rows:
            return
        for row in rows:
            outcome, ack = without_patient_data(row.outcome), without_patient_data(row.ack)
            if (outcome, ack) != (row.outcome, row.ack):
                conn.execute(sa.text("UPDATE raw_inputs SET outcome = :outcome, ack = :ack WHERE id = :id"),
                             {"outcome": outcome, "ack": ack, "id": row.id})
        after = rows[-1].id


def downgrade() -> None:
    pass
