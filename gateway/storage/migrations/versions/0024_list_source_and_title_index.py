"""ITI-66 searches Lists by the names of their contained source (MHD's `source.given` and
`source.family`, PDSm's `source:Patient.given`… typed by the source's kind) and by `title`. The
Lists already stored get their index rows, extracted as the code of this revision extracts them
(gateway.storage.searchparams), a page of Lists at a time.

Revision ID: 0024
Revises: 0023
"""
import json
import unicodedata

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None

ROLE_CHAIN = "PractitionerRole.practitioner:Practitioner"
STRINGS = ("title", "source.given", "source.family", "source:Patient.given", "source:Patient.family",
           f"source:{ROLE_CHAIN}.given", f"source:{ROLE_CHAIN}.family")


def _normalize(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return " ".join("".join(c for c in decomposed if not unicodedata.combining(c)).lower().split())


def _source_people(resource: dict) -> list[tuple[str, dict]]:
    contained = {c.get("id"): c for c in resource.get("contained", []) if isinstance(c, dict)}

    def named(reference) -> dict | None:
        value = reference.get("reference") if isinstance(reference, dict) else None
        return contained.get(value[1:]) if isinstance(value, str) and value.startswith("#") else None

    found = named(resource.get("source"))
    if found and found.get("resourceType") == "PractitionerRole":
        found = named(found.get("practitioner"))
        return [(ROLE_CHAIN, found)] if found and found.get("resourceType") == "Practitioner" else []
    return [(found["resourceType"], found)] if found and found.get("resourceType") in ("Practitioner", "Patient") else []


def _names(person: dict, part: str) -> list[str]:
    names = person.get("name", [])
    if part == "family":
        return [name["family"] for name in names if name.get("family")]
    return [given for name in names for given in name.get("given", [])]


def _rows(resource: dict) -> list[dict]:
    strings: dict[str, list[str]] = {"title": [resource["title"]] if resource.get("title") else []}
    people = _source_people(resource)
    for part in ("given", "family"):
        strings[f"source.{part}"] = [n for _, person in people for n in _names(person, part)]
        for chain in ("Patient", ROLE_CHAIN):
            strings[f"source:{chain}.{part}"] = [n for reached, person in people if reached == chain
                                                 for n in _names(person, part)]
    return [{"res_type": "List", "res_id": resource["id"], "param": param, "value": _normalize(value)[:256],
             "exact": value[:256]} for param, values in strings.items() for value in dict.fromkeys(values)]


def upgrade() -> None:
    conn = op.get_bind()
    after = ""
    while True:
        lists = conn.execute(sa.text(
            "SELECT res_id, body FROM resources WHERE res_type = 'List' AND NOT deleted AND res_id > :after "
            "ORDER BY res_id LIMIT 500"), {"after": after}).all()
        if not lists:
            return
        rows = [r for row in lists for r in _rows(json.loads(row.body))]
        if rows:
            conn.execute(sa.text("INSERT INTO search_string (res_type, res_id, param, value, exact) "
                                 "VALUES (:res_type, :res_id, :param, :value, :exact)"), rows)
        after = lists[-1].res_id


def downgrade() -> None:
    conn = op.get_bind()
    conn.execute(sa.text("DELETE FROM search_string WHERE res_type = 'List' AND param IN :params")
                 .bindparams(sa.bindparam("params", expanding=True)), {"params": list(STRINGS)})
