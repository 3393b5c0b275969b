"""An authorisation of a professional may be given for a period (Consent.provision.period): its
rules hold from its start until its end (access_rules.valid_from, valid_until). Before, a period
was refused, and before that kept and ignored: the authorisations stored then with one, still in
force, are given the bounds they stated. A downgrade drops the bounds.

Revision ID: 0035
Revises: 0034
"""
import json
import re
from datetime import datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision = "0035"
down_revision = "0034"
branch_labels = None
depends_on = None

KIND_SYSTEM = "urn:dmp-gateway:consent-kind"
# A FHIR date or dateTime, to the day at least (a year or a month alone bound nothing here).
MOMENT = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?")


def _bounds(value: str) -> tuple[str, str] | None:
    """The first and the last instant (UTC, as the index strings) a date or dateTime covers, as
    gateway.mapping.dates.fhir_range has them."""
    found = MOMENT.fullmatch(value.strip())
    if not found:
        return None
    year, month, day, hour, minute, second, fraction, zone = found.groups()
    if hour is None:
        low, span = datetime(int(year), int(month), int(day)), timedelta(days=1)
    else:
        low = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0))
        if zone and zone != "Z":
            sign = 1 if zone[0] == "+" else -1
            low -= sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
        if fraction:
            low += timedelta(microseconds=int(float(fraction) * 1_000_000))
        span = timedelta(seconds=0 if fraction else 1 if second else 60, microseconds=1 if fraction else 0)
    return low.isoformat(timespec="microseconds"), (low + span - timedelta(microseconds=1)).isoformat(
        timespec="microseconds")


def upgrade() -> None:
    with op.batch_alter_table("access_rules") as batch:
        batch.add_column(sa.Column("valid_from", sa.String(32)))
        batch.add_column(sa.Column("valid_until", sa.String(32)))
    conn = op.get_bind()
    after = ""
    while True:
        rows = conn.execute(sa.text(
            "SELECT res_id, body FROM resources WHERE res_type = 'Consent' AND deleted = :no "
            "AND body LIKE '%\"period\"%' AND res_id > :after ORDER BY res_id LIMIT 500"),
            {"no": False, "after": after}).all()
        if not rows:
            return
        for row in rows:
            consent = json.loads(row.body)
            provision = consent.get("provision") or {}
            kinds = {coding.get("code") for category in consent.get("category", [])
                     for coding in category.get("coding", []) if coding.get("system") == KIND_SYSTEM}
            period = provision.get("period")
            if kinds != {"professional"} or provision.get("type") != "permit" or not isinstance(period, dict):
                continue
            start = _bounds(period["start"]) if isinstance(period.get("start"), str) else None
            end = _bounds(period["end"]) if isinstance(period.get("end"), str) else None
            conn.execute(sa.text("UPDATE access_rules SET valid_from = :start, valid_until = :end "
                                 "WHERE consent_id = :id"),
                         {"start": start[0] if start else None, "end": end[1] if end else None, "id": row.res_id})
        after = rows[-1].res_id


def downgrade() -> None:
    with op.batch_alter_table("access_rules") as batch:
        batch.drop_column("valid_until")
        batch.drop_column("valid_from")
