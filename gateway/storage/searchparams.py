"""Search parameters: what each one indexes, extracted from a resource as written.

Token values are (system, code), strings are text, dates are FHIR date strings turned into
(low, high) ranges, references are (target type, target id).
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Callable, Iterable

from gateway.access.rules import structure_spellings
from gateway.fhir.primitives import present
from gateway.mapping import codes
from gateway.mapping.dates import InvalidTime, fhir_range


@dataclass(frozen=True)
class SearchParam:
    name: str
    type: str  # token | string | date | reference
    extract: Callable[[dict], Iterable]
    targets: tuple[str, ...] = field(default=())


def normalize(text: str) -> str:
    """Case- and accent-insensitive form used by string search (FHIR: 'starts with, ignoring case/accents')."""
    decomposed = unicodedata.normalize("NFKD", text)
    return " ".join("".join(c for c in decomposed if not unicodedata.combining(c)).lower().split())


def _codings(cc: dict | None) -> list[tuple[str, str]]:
    if not cc:
        return []
    return [(c.get("system") or "", c["code"]) for c in cc.get("coding", []) if c.get("code")]


def _many_codings(items: list | None) -> list[tuple[str, str]]:
    return [pair for cc in items or [] for pair in _codings(cc)]


def _identifiers(items: list | None) -> list[tuple[str, str]]:
    return [(i.get("system") or "", i["value"]) for i in items or [] if i.get("value")]


def _ref(reference: dict | None) -> list[tuple[str, str]]:
    """Local 'Type/id' references; contained ('#x') and absolute URLs are not indexed."""
    if not reference or "reference" not in reference:
        return []
    value = reference["reference"]
    if value.startswith("#") or "://" in value or value.count("/") != 1:
        return []
    target_type, target_id = value.split("/")
    return [(target_type, target_id)]


def _name_parts(names: list | None, part: str) -> list[str]:
    out: list[str] = []
    for name in names or []:
        if part in ("family", "name") and name.get("family"):
            out.append(name["family"])
        if part in ("given", "name"):
            out += present(name.get("given"))
        if part == "name" and name.get("text"):
            out.append(name["text"])
    return out


def _period(period: dict | None) -> list[str | tuple[str | None, str | None]]:
    if not period:
        return []
    return [(period.get("start"), period.get("end"))]


def _boolean_extension(url: str, default: str) -> Callable[[dict], list]:
    def extract(resource: dict) -> list:
        for ext in resource.get("extension", []):
            if ext.get("url") == url and "valueBoolean" in ext:
                return [("", "true" if ext["valueBoolean"] else "false")]
        return [("", default)]
    return extract


def _contained_people(resource: dict, references: list) -> list[tuple[str, dict]]:
    """The people that references to contained resources name, each with the FHIR chain to it: a
    Patient or Practitioner itself, a PractitionerRole's practitioner
    ("PractitionerRole.practitioner:Practitioner")."""
    contained = {c.get("id"): c for c in resource.get("contained", []) if isinstance(c, dict)}

    def named(reference) -> dict | None:
        value = reference.get("reference") if isinstance(reference, dict) else None
        return contained.get(value[1:]) if isinstance(value, str) and value.startswith("#") else None

    people = []
    for reference in references:
        found = named(reference)
        if found and found.get("resourceType") == "PractitionerRole":
            found = named(found.get("practitioner"))
            if found and found.get("resourceType") == "Practitioner":
                people.append(("PractitionerRole.practitioner:Practitioner", found))
        elif found and found.get("resourceType") in ("Practitioner", "Patient"):
            people.append((found["resourceType"], found))
    return people


def _people_names(references: Callable[[dict], list], part: str, chain: str | None = None) -> Callable[[dict], list[str]]:
    """The `part` names of the contained people `references` name, of those reached by `chain` alone if given."""
    return lambda r: [n for reached, person in _contained_people(r, references(r)) if chain in (None, reached)
                      for n in _name_parts(person.get("name"), part)]


def _author_names(part: str) -> Callable[[dict], list[str]]:
    return _people_names(lambda r: r.get("author", []), part)


def _source_names(part: str, chain: str | None = None) -> Callable[[dict], list[str]]:
    return _people_names(lambda r: [r.get("source")], part, chain)


def _doc_content(resource: dict, key: str) -> list:
    return [c.get("attachment", {}).get(key) for c in resource.get("content", []) if c.get("attachment", {}).get(key)]


DOCUMENT_REFERENCE = [
    SearchParam("patient", "reference", lambda r: [t for t in _ref(r.get("subject")) if t[0] == "Patient"], ("Patient",)),
    SearchParam("subject", "reference", lambda r: _ref(r.get("subject")), ("Patient",)),
    SearchParam("status", "token", lambda r: [("", r["status"])] if r.get("status") else []),
    SearchParam("type", "token", lambda r: _codings(r.get("type"))),
    SearchParam("category", "token", lambda r: _many_codings(r.get("category"))),
    SearchParam("date", "date", lambda r: [r["date"]] if r.get("date") else []),
    SearchParam("period", "date", lambda r: _period(r.get("context", {}).get("period"))),
    SearchParam("period-start", "date",
                lambda r: [v for v in [r.get("context", {}).get("period", {}).get("start")] if v]),
    SearchParam("period-end", "date",
                lambda r: [v for v in [r.get("context", {}).get("period", {}).get("end")] if v]),
    SearchParam("setting", "token", lambda r: _codings(r.get("context", {}).get("practiceSetting"))),
    SearchParam("facility", "token", lambda r: _codings(r.get("context", {}).get("facilityType"))),
    SearchParam("event", "token", lambda r: _many_codings(r.get("context", {}).get("event"))),
    SearchParam("security-label", "token", lambda r: _many_codings(r.get("securityLabel"))),
    SearchParam("format", "token",
                lambda r: [p for c in r.get("content", []) for p in _codings({"coding": [c["format"]]} if c.get("format") else None)]),
    SearchParam("related", "reference",
                lambda r: [t for rel in r.get("context", {}).get("related", []) for t in _ref(rel)]),
    SearchParam("related-id", "token",
                lambda r: _identifiers([rel["identifier"] for rel in r.get("context", {}).get("related", []) if rel.get("identifier")])),
    SearchParam("identifier", "token",
                lambda r: _identifiers([r["masterIdentifier"]] if r.get("masterIdentifier") else []) + _identifiers(r.get("identifier"))),
    SearchParam("creation", "date", lambda r: _doc_content(r, "creation")),
    SearchParam("author", "reference", lambda r: [t for a in r.get("author", []) for t in _ref(a)],
                ("Practitioner", "Organization", "PractitionerRole", "Patient", "Device", "RelatedPerson")),
    # The authors are contained in the DocumentReference (PDSm): MHD's chained author.given and
    # author.family are answered from the names of those contained copies.
    SearchParam("author.given", "string", _author_names("given")),
    SearchParam("author.family", "string", _author_names("family")),
    SearchParam("authenticator", "reference", lambda r: _ref(r.get("authenticator")), ("Practitioner", "Organization")),
    SearchParam("custodian", "reference", lambda r: _ref(r.get("custodian")), ("Organization",)),
    SearchParam("relatesto", "reference", lambda r: [t for rel in r.get("relatesTo", []) for t in _ref(rel.get("target"))],
                ("DocumentReference",)),
    SearchParam("relation", "token", lambda r: [("", rel["code"]) for rel in r.get("relatesTo", []) if rel.get("code")]),
    SearchParam("contenttype", "token", lambda r: [("", v) for v in _doc_content(r, "contentType")]),
    SearchParam("language", "token", lambda r: [("", v) for v in _doc_content(r, "language")]),
    SearchParam("isArchived", "token", _boolean_extension(codes.PDSM_IS_ARCHIVED, "false")),
]

PATIENT = [
    SearchParam("identifier", "token", lambda r: _identifiers(r.get("identifier"))),
    SearchParam("name", "string", lambda r: _name_parts(r.get("name"), "name")),
    SearchParam("family", "string", lambda r: _name_parts(r.get("name"), "family")),
    SearchParam("given", "string", lambda r: _name_parts(r.get("name"), "given")),
    SearchParam("birthdate", "date", lambda r: [r["birthDate"]] if r.get("birthDate") else []),
    SearchParam("gender", "token", lambda r: [("", r["gender"])] if r.get("gender") else []),
    SearchParam("active", "token", lambda r: [("", str(r["active"]).lower())] if "active" in r else []),
    # R4: deceased.exists() and deceased != false; the access rules read it (access.context.ALIVE).
    SearchParam("deceased", "token", lambda r: [("", "true" if r.get("deceasedBoolean") or "deceasedDateTime" in r
                                                  else "false")]),
]

PRACTITIONER = [
    SearchParam("identifier", "token", lambda r: _identifiers(r.get("identifier"))),
    SearchParam("name", "string", lambda r: _name_parts(r.get("name"), "name")),
    SearchParam("family", "string", lambda r: _name_parts(r.get("name"), "family")),
    SearchParam("given", "string", lambda r: _name_parts(r.get("name"), "given")),
]

PRACTITIONER_ROLE = [
    SearchParam("identifier", "token", lambda r: _identifiers(r.get("identifier"))),
    SearchParam("practitioner", "reference", lambda r: _ref(r.get("practitioner")), ("Practitioner",)),
    SearchParam("organization", "reference", lambda r: _ref(r.get("organization")), ("Organization",)),
    SearchParam("specialty", "token", lambda r: _many_codings(r.get("specialty"))),
]

ORGANIZATION = [
    SearchParam("identifier", "token", lambda r: _identifiers(r.get("identifier"))),
    SearchParam("name", "string", lambda r: [r["name"]] if r.get("name") else []),
]

LIST = [
    SearchParam("identifier", "token", lambda r: _identifiers(r.get("identifier"))),
    SearchParam("patient", "reference", lambda r: [t for t in _ref(r.get("subject")) if t[0] == "Patient"], ("Patient",)),
    SearchParam("subject", "reference", lambda r: _ref(r.get("subject")), ("Patient",)),
    SearchParam("code", "token", lambda r: _codings(r.get("code"))),
    SearchParam("status", "token", lambda r: [("", r["status"])] if r.get("status") else []),
    SearchParam("date", "date", lambda r: [r["date"]] if r.get("date") else []),
    SearchParam("item", "reference", lambda r: [t for e in r.get("entry", []) for t in _ref(e.get("item"))],
                ("DocumentReference",)),
    # ITI-66 Find Document Lists (IHE MHD), with PDSm's isArchived.
    SearchParam("designationType", "token", lambda r: [p for e in r.get("extension", [])
                                                       if e.get("url", "").endswith("/ihe-designationType")
                                                       for p in _codings(e.get("valueCodeableConcept"))]),
    SearchParam("sourceId", "token", lambda r: _identifiers([e["valueIdentifier"] for e in r.get("extension", [])
                                                             if e.get("url", "").endswith("/ihe-sourceId")
                                                             and isinstance(e.get("valueIdentifier"), dict)])),
    SearchParam("isArchived", "token", _boolean_extension(codes.PDSM_IS_ARCHIVED, "false")),
    # MHD's source.given and source.family, and the title and the chains typed by the source's kind
    # that PDSm's document sharing manager adds. A List's source is contained (PDSm; this gateway
    # contains one when the sender named none): the names are those of the contained copies.
    SearchParam("title", "string", lambda r: [r["title"]] if r.get("title") else []),
    SearchParam("source.given", "string", _source_names("given")),
    SearchParam("source.family", "string", _source_names("family")),
    SearchParam("source:Patient.given", "string", _source_names("given", "Patient")),
    SearchParam("source:Patient.family", "string", _source_names("family", "Patient")),
    SearchParam("source:PractitionerRole.practitioner:Practitioner.given", "string",
                _source_names("given", "PractitionerRole.practitioner:Practitioner")),
    SearchParam("source:PractitionerRole.practitioner:Practitioner.family", "string",
                _source_names("family", "PractitionerRole.practitioner:Practitioner")),
]

CONSENT = [
    SearchParam("patient", "reference", lambda r: [t for t in _ref(r.get("patient")) if t[0] == "Patient"], ("Patient",)),
    SearchParam("status", "token", lambda r: [("", r["status"])] if r.get("status") else []),
    SearchParam("category", "token", lambda r: _many_codings(r.get("category"))),
    SearchParam("scope", "token", lambda r: _codings(r.get("scope"))),
    SearchParam("action", "token", lambda r: _many_codings(r.get("provision", {}).get("action"))),
    SearchParam("date", "date", lambda r: [r["dateTime"]] if r.get("dateTime") else []),
    SearchParam("actor", "token", lambda r: [spelt for a in r.get("provision", {}).get("actor", [])
                                             for pair in _identifiers([a.get("reference", {}).get("identifier", {})])
                                             for spelt in structure_spellings(*pair)]),
]


RELATED_PERSON = [
    SearchParam("patient", "reference", lambda r: [t for t in _ref(r.get("patient")) if t[0] == "Patient"], ("Patient",)),
    SearchParam("relationship", "token", lambda r: _many_codings(r.get("relationship"))),
    SearchParam("name", "string", lambda r: _name_parts(r.get("name"), "name")),
    SearchParam("active", "token", lambda r: [("", str(r["active"]).lower())] if "active" in r else []),
]


def _audit_patient(r: dict) -> list[tuple[str, str]]:
    return [t for e in r.get("entity", []) for t in _ref(e.get("what")) if t[0] == "Patient"]


AUDIT_EVENT = [
    SearchParam("patient", "reference", _audit_patient, ("Patient",)),
    SearchParam("date", "date", lambda r: [r["recorded"]]),
    SearchParam("entity", "reference", lambda r: [t for e in r.get("entity", []) for t in _ref(e.get("what"))]),
    SearchParam("type", "token", lambda r: _codings({"coding": [r["type"]]})),
    SearchParam("subtype", "token", lambda r: _codings({"coding": r.get("subtype", [])})),
    SearchParam("action", "token", lambda r: [("", r["action"])] if r.get("action") else []),
    SearchParam("outcome", "token", lambda r: [("", r["outcome"])] if r.get("outcome") else []),
    SearchParam("agent", "reference", lambda r: [t for a in r.get("agent", []) for t in _ref(a.get("who"))],
                ("Patient",)),
    SearchParam("altid", "token", lambda r: [("", a["altId"]) for a in r.get("agent", []) if a.get("altId")]),
    SearchParam("agent-role", "token", lambda r: [pair for a in r.get("agent", []) for pair in _many_codings(a.get("role"))]),
    SearchParam("purpose", "token", lambda r: _many_codings(r.get("purposeOfEvent"))),
]

SEARCH_PARAMS: dict[str, dict[str, SearchParam]] = {
    "DocumentReference": {p.name: p for p in DOCUMENT_REFERENCE},
    "Patient": {p.name: p for p in PATIENT},
    "Practitioner": {p.name: p for p in PRACTITIONER},
    "PractitionerRole": {p.name: p for p in PRACTITIONER_ROLE},
    "Organization": {p.name: p for p in ORGANIZATION},
    "List": {p.name: p for p in LIST},
    "Consent": {p.name: p for p in CONSENT},
    "AuditEvent": {p.name: p for p in AUDIT_EVENT},
    "RelatedPerson": {p.name: p for p in RELATED_PERSON},
    "Binary": {},
}

# Parameters every type understands, answered from the resources table itself.
COMMON_PARAMS = ("_id", "_lastUpdated")


def index_rows(resource: dict) -> dict[str, list[dict]]:
    """Rows for each index table, for one resource version."""
    res_type, res_id = resource["resourceType"], resource["id"]
    rows: dict[str, list[dict]] = {"token": [], "string": [], "date": [], "reference": []}
    for param in SEARCH_PARAMS.get(res_type, {}).values():
        seen = set()
        for value in param.extract(resource):
            if value in seen:
                continue
            seen.add(value)
            base = {"res_type": res_type, "res_id": res_id, "param": param.name}
            if param.type == "token":
                rows["token"].append({**base, "system": value[0][:256], "code": value[1][:256]})
            elif param.type == "string":
                rows["string"].append({**base, "value": normalize(value)[:256], "exact": value[:256]})
            elif param.type == "reference":
                rows["reference"].append({**base, "target_type": value[0], "target_id": value[1]})
            elif param.type == "date":
                low_high = _date_bounds(value)
                if low_high:
                    rows["date"].append({**base, "low": low_high[0], "high": low_high[1]})
    return rows


def _date_bounds(value) -> tuple[str, str] | None:
    try:
        if isinstance(value, tuple):
            start, end = value
            low = fhir_range(start)[0] if start else "0001-01-01T00:00:00.000000"
            high = fhir_range(end)[1] if end else "9999-12-31T23:59:59.999999"
            return low, high
        return fhir_range(value)
    except InvalidTime:
        return None
