"""The access rules, checked against an independent statement of them, through every read path.

Hypothesis draws a small world (patients, documents with random visibility labels and authors,
the patients' consents); every kind of reader (each role, professional, patient and purpose) asks
through the FHIR API: search (with paging, totals and _summary=count), _revinclude, read, vread, history and the
Binary. Nothing the rules forbid may appear, nothing they allow may be missing.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete

from conftest import REPORT
from gateway.access import AccessContext, context
from gateway.access.writes import Write
from gateway.access.rules import CONSENT_KIND_SYSTEM, IDNATPS_SYSTEM
from gateway.mapping import codes
from gateway.storage.repository import Repository
from gateway.storage.schema import metadata

INS = ["185067511204554", "292086938701277"]
# Few patients and professionals, so that rules and readers meet often.
PROFESSIONALS = ["800000000011", "800000000029", "800000000037"]
ORGANIZATIONS = ["750712184", "130783236"]   # FINESS
LABELS = ["MASQUE_PS", "INVISIBLE_PATIENT", "INVISIBLE_REPRESENTANTS_LEGAUX"]
PATIENT_INS = f"urn:oid:{'1.2.250.1.213.1.4.10'}"
BASE = "http://gateway.test/fhir"


def years_before(day: date, years: int) -> date:
    return day.replace(year=day.year - years) if (day.month, day.day) != (2, 29) else date(day.year - years, 3, 1)


TODAY = datetime.now(ZoneInfo("Europe/Paris")).date()
# A patient's birth date, and whether they are a minor today: a legal representative reads a
# minor's record only (Code civil art. 371-1), one without a birth date shows no minor.
BIRTHS = {
    years_before(TODAY, 10).isoformat(): True,
    years_before(TODAY, 18).isoformat(): False,                          # of age today
    (years_before(TODAY, 18) + timedelta(days=1)).isoformat(): True,      # of age tomorrow
    str(TODAY.year - 10): True,                                          # a year alone
    "1980-04-02": False,
    None: False,
}


@dataclass(frozen=True)
class Document:
    patient: int
    labels: frozenset
    author: int | None
    custodian: int | None = None   # an organisation of ORGANIZATIONS (who may change it: test_write_rules)


@dataclass(frozen=True)
class Rule:
    patient: int
    kind: str
    effect: str
    professional: int | None
    organization: int | None = None   # a decision about every professional acting for it
    by_idnatst: bool = False           # the organisation named by its IdNatSt (1 + FINESS), else its FINESS
    period: str | None = None          # an authorisation's period, of PERIODS


@dataclass(frozen=True)
class Reader:
    role: str
    professional: int
    patient: int | None
    purpose: str
    organization: int | None = None   # the organisation the professional acts for (the token's org)


# An authorisation given for a period (provision.period), and whether it holds today.
PERIODS = {None: True, "ended": False, "current": True, "future": False}
PERIOD_BODIES = {"ended": {"end": "2020-02-01"}, "current": {"start": "2020-01-01", "end": "2099-12-31"},
                 "future": {"start": "2099-01-01"}}


def for_a_period(rule: Rule, period: str | None) -> Rule:
    """The rule, an authorisation given for `period` (a block holds until revoked)."""
    return replace(rule, period=period if rule.effect == "permit" else None)


documents = st.builds(Document, st.integers(0, len(INS) - 1), st.frozensets(st.sampled_from(LABELS)),
                      st.one_of(st.none(), st.integers(0, len(PROFESSIONALS) - 1)))
rules = st.one_of(
    st.builds(for_a_period, st.builds(Rule, st.integers(0, len(INS) - 1), st.just("professional"),
                                      st.sampled_from(["permit", "deny"]), st.integers(0, len(PROFESSIONALS) - 1)),
              st.sampled_from(list(PERIODS))),
    st.builds(for_a_period, st.builds(Rule, st.integers(0, len(INS) - 1), st.just("professional"),
                                      st.sampled_from(["permit", "deny"]), st.none(),
                                      st.integers(0, len(ORGANIZATIONS) - 1), st.booleans()),
              st.sampled_from(list(PERIODS))),
    st.builds(Rule, st.integers(0, len(INS) - 1), st.just("attending-physician"), st.just("permit"),
              st.integers(0, len(PROFESSIONALS) - 1)),
    st.builds(Rule, st.integers(0, len(INS) - 1),
              st.sampled_from(["consultation", "emergency-access", "regulation-access", "record"]),
              st.sampled_from(["permit", "deny"]), st.none()),
)
# Those who act for the patient: the patient, a parent, a protected adult's guardian (a
# representative token with the claim guardianship).
HOLDERS = ("patient", "representative", "guardian")
# Every kind of reader, each time: each professional in care, emergency and regulation, each
# patient and representative, and the roles that see no patient data.
READERS = (
    [Reader(role, 0, p, "care") for role in HOLDERS for p in range(len(INS))]
    + [Reader(role, n, None, "care") for role in ("doctor", "nurse", "occupational-doctor")
       for n in range(len(PROFESSIONALS))]
    + [Reader(role, n, None, "care", n % len(ORGANIZATIONS)) for role in ("doctor", "occupational-doctor")
       for n in range(len(PROFESSIONALS))]
    + [Reader("doctor", n, p, "emergency") for n in range(len(PROFESSIONALS)) for p in range(len(INS))]
    + [Reader("doctor", 0, p, "emergency", 0) for p in range(len(INS))]
    + [Reader("regulator", n, p, "regulation") for n in range(len(PROFESSIONALS)) for p in range(len(INS))]
    + [Reader("system", 0, None, "care"), Reader("admin", 0, None, "care")]
)


# Whether a patient died, as a Patient states it (deceasedBoolean, deceasedDateTime): the record is
# closed to the patient's own accounts and their representatives.
DEATHS = {None: False, False: False, True: True, "2026-11-30T08:00:00+01:00": True}


def refused_outright(reader: Reader, births: list[str | None], deaths: list) -> bool:
    """The patient or a legal representative of a patient who died, or a parent of one who is not a
    minor: every request refused (403)."""
    return reader.role in HOLDERS and DEATHS[deaths[reader.patient]] or (
        reader.role == "representative" and not BIRTHS[births[reader.patient]])


def may_see(reader: Reader, doc: Document, world_rules: list[Rule]) -> bool:
    """The matrix of the README's access section, stated plainly."""
    def has(kind, effect, professional=None, organization=None):
        return any(r.patient == doc.patient and r.kind == kind and r.effect == effect
                   and (professional is None or r.professional == professional)
                   and (organization is None or r.organization == organization) and PERIODS[r.period]
                   for r in world_rules)

    def about(effect):   # a decision about this reader: by name, or through the organisation they act for
        return has("professional", effect, me) or (
            reader.organization is not None and has("professional", effect, organization=reader.organization))

    me = reader.professional
    if reader.role in HOLDERS:
        hidden = "INVISIBLE_PATIENT" in doc.labels or (
            reader.role != "patient" and "INVISIBLE_REPRESENTANTS_LEGAUX" in doc.labels)
        return reader.patient == doc.patient and not hidden
    refused = has("record", "deny") or has("consultation", "deny") or about("deny")
    if reader.role in ("doctor", "nurse") and reader.purpose == "care":
        attending = has("attending-physician", "permit", me)
        return ((attending or about("permit")) and not refused
                and ("MASQUE_PS" not in doc.labels or attending or doc.author == me))
    if reader.role == "occupational-doctor":
        return (has("professional", "permit", me) and not refused
                and ("MASQUE_PS" not in doc.labels or doc.author == me))
    if reader.purpose in ("emergency", "regulation"):
        opposition = "emergency-access" if reader.purpose == "emergency" else "regulation-access"
        return (reader.patient == doc.patient and not refused and not has(opposition, "deny")
                and "MASQUE_PS" not in doc.labels)
    return False


def build_world(engine, docs: list[Document], world_rules: list[Rule], births: list[str | None] | None = None,
                deaths: list | None = None) -> dict[int, tuple[str, str, str]]:
    """Patients (born on `births`, else minors; dead as `deaths` say, else alive), practitioners,
    documents (each with its Binary) and consents, written through the repository as the feeds
    would. Returns doc index -> (DocumentReference id, Binary id, Patient id)."""
    births = births or [years_before(TODAY, 10).isoformat()] * len(INS)
    deaths = deaths or [None] * len(INS)
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(delete(table))
    repo = Repository(engine, AccessContext.system("world"), "http://gateway.test")
    made = {}
    with repo.unit_of_work(Write.FEED) as uow:
        for p, ins in enumerate(INS):
            uow.claim_identifier("Patient", PATIENT_INS, ins, f"p{p}")
            death = {} if deaths[p] is None else {"deceasedDateTime": deaths[p]} if isinstance(deaths[p], str) \
                else {"deceasedBoolean": deaths[p]}
            uow.save({"resourceType": "Patient", "id": f"p{p}", "identifier": [{"system": PATIENT_INS, "value": ins}],
                      **({"birthDate": births[p]} if births[p] else {}), **death}, patient_id=f"p{p}")
        for n, idnatps in enumerate(PROFESSIONALS):
            uow.claim_identifier("Practitioner", IDNATPS_SYSTEM, idnatps, f"ps{n}")
            uow.save({"resourceType": "Practitioner", "id": f"ps{n}",
                      "identifier": [{"system": IDNATPS_SYSTEM, "value": idnatps}]})
        for i, doc in enumerate(docs):
            patient_id = f"p{doc.patient}"
            uow.save({"resourceType": "Binary", "id": f"b{i}", "contentType": "text/plain"}, patient_id=patient_id,
                     blob_sha256=uow.store_blob(f"document {i}".encode()))
            uow.save({
                "resourceType": "DocumentReference", "id": f"d{i}", "status": "current",
                "subject": {"reference": f"Patient/{patient_id}"},
                # The author as the PDSm has it: the document's own contained copy.
                "contained": ([{"resourceType": "Practitioner", "id": "author1", "identifier": [
                    {"system": IDNATPS_SYSTEM, "value": PROFESSIONALS[doc.author]}]}] if doc.author is not None else [])
                + ([{"resourceType": "Organization", "id": "custodian1", "identifier": [
                    {"system": codes.FINESS_SYSTEM, "value": ORGANIZATIONS[doc.custodian]}]}]
                   if doc.custodian is not None else []),
                "author": [{"reference": "#author1"}] if doc.author is not None else [],
                **({"custodian": {"reference": "#custodian1"}} if doc.custodian is not None else {}),
                "securityLabel": [{"coding": [{"system": codes.VISIBILITY_SYSTEM, "code": label}]}
                                  for label in sorted(doc.labels)]
                + [{"coding": [{"system": codes.CONFIDENTIALITY_SYSTEM, "code": "N"}]}],
                "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:oid:1.2.250.1.999.{i}"},
                "content": [{"attachment": {"contentType": "text/plain", "url": f"{BASE}/Binary/b{i}"}}],
            }, patient_id=patient_id)
            made[i] = (f"d{i}", f"b{i}", patient_id)
        for n, rule in enumerate(world_rules):
            provision = {"type": rule.effect}
            if rule.professional is not None:
                provision["actor"] = [{"reference": {"identifier": {
                    "system": IDNATPS_SYSTEM, "value": PROFESSIONALS[rule.professional]}}}]
            if rule.organization is not None:
                finess = ORGANIZATIONS[rule.organization]
                provision["actor"] = [{"reference": {"identifier": {
                    "system": f"urn:oid:{codes.IDNATST_OID}", "value": "1" + finess}
                    if rule.by_idnatst else {"system": codes.FINESS_SYSTEM, "value": finess}}}]
            if rule.period:
                provision["period"] = PERIOD_BODIES[rule.period]
            uow.save({"resourceType": "Consent", "id": f"c{n}", "status": "active",
                      "category": [{"coding": [{"system": CONSENT_KIND_SYSTEM, "code": rule.kind}]}],
                      "patient": {"reference": f"Patient/p{rule.patient}"}, "provision": provision},
                     patient_id=f"p{rule.patient}")
    return made


def token_claims(reader: Reader) -> dict:
    claims = {"role": reader.role, "purpose": reader.purpose}
    if reader.role == "guardian":
        claims.update(role="representative", guardianship=True)
    if reader.role in HOLDERS:
        claims.update(sub=f"holder-{reader.patient}", patient=INS[reader.patient])
    else:
        claims["sub"] = PROFESSIONALS[reader.professional] if reader.role not in ("system", "admin") else reader.role
        if reader.patient is not None:
            claims["patient"] = INS[reader.patient]
        if reader.organization is not None:
            claims["org"] = ORGANIZATIONS[reader.organization]
    return claims


CHECKED = {"worlds": 0, "answers": 0}


def match_ids(bundle: dict) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


@pytest.fixture(autouse=True)
def gateway_day(monkeypatch):
    """The gateway's day in Paris is TODAY, the day BIRTHS was drawn on, even when a run crosses
    midnight there: who is a minor changes at midnight."""
    monkeypatch.setattr(context, "_today", lambda: TODAY)


@pytest.fixture
def backend():
    """Thousands of requests: on SQLite (the rules are the same SQL on PostgreSQL, which the
    other access tests run)."""
    return "sqlite"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(docs=st.lists(documents, min_size=1, max_size=4), world_rules=st.lists(rules, min_size=1, max_size=6),
       births=st.lists(st.sampled_from(list(BIRTHS)), min_size=len(INS), max_size=len(INS)),
       deaths=st.lists(st.sampled_from(list(DEATHS)), min_size=len(INS), max_size=len(INS)))
# The author of a masked document, named by the patient but not the attending physician, reads its Binary too.
@example(docs=[Document(1, frozenset({"MASQUE_PS"}), 0)], world_rules=[Rule(1, "professional", "permit", 0)],
         births=[years_before(TODAY, 18).isoformat(), (years_before(TODAY, 18) + timedelta(days=1)).isoformat()],
         deaths=[None, False])
def test_every_read_path_shows_exactly_what_the_rules_allow(client, database, bearer, docs, world_rules, births,
                                                            deaths):
    made = build_world(database[0], docs, world_rules, births, deaths)
    CHECKED["worlds"] += 1
    for reader in READERS:
        headers = bearer(**token_claims(reader))
        context = (reader, docs, world_rules, births, deaths)
        if refused_outright(reader, births, deaths):
            for path in ["/fhir/DocumentReference?_count=2", "/fhir/DocumentReference?_summary=count",
                         f"/fhir/Patient?_id=p{reader.patient}&_revinclude=DocumentReference:subject"] + [
                    f"/fhir/{path}" for doc_id, binary_id, _ in made.values()
                    for path in (f"DocumentReference/{doc_id}", f"Binary/{binary_id}")]:
                response = client.get(path, headers=headers)
                assert response.status_code == 403 and response.json["issue"][0]["code"] == "forbidden", context
                CHECKED["answers"] += 1
            continue
        allowed = {made[i][0] for i, doc in enumerate(docs) if may_see(reader, doc, world_rules)}

        # search: every page (paging by 2), the totals, and the count-only answer
        seen, url, totals = [], "/fhir/DocumentReference?_count=2", set()
        while url:
            page = client.get(url, headers=headers).json
            seen += match_ids(page)
            totals.add(page["total"])
            url = next((link["url"].replace("http://gateway.test", "") for link in page["link"]
                        if link["relation"] == "next"), None)
        assert sorted(seen) == sorted(allowed) and totals == {len(allowed)}, context
        CHECKED["answers"] += len(docs)
        count = client.get("/fhir/DocumentReference?_summary=count", headers=headers).json
        assert count["total"] == len(allowed) and "entry" not in count, context

        # _revinclude from each patient the reader may see
        for p in range(len(INS)):
            bundle = client.get(f"/fhir/Patient?_id=p{p}&_revinclude=DocumentReference:subject",
                                headers=headers).json
            included = {e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "include"}
            assert included == {made[i][0] for i in made if made[i][2] == f"p{p}"} & allowed, context
            CHECKED["answers"] += 1

        # read, vread, history, the Binary (ITI-68): 200 when allowed, 404 (never 403) otherwise
        for i, (doc_id, binary_id, _) in made.items():
            expected = 200 if doc_id in allowed else 404
            for path in (f"/fhir/DocumentReference/{doc_id}", f"/fhir/DocumentReference/{doc_id}/_history/1",
                         f"/fhir/DocumentReference/{doc_id}/_history", f"/fhir/Binary/{binary_id}"):
                response = client.get(path, headers=headers)
                assert response.status_code == expected, (path, context)
                if expected == 404:
                    assert response.json["issue"][0]["code"] == "not-found"
                CHECKED["answers"] += 1


@pytest.fixture(scope="module", autouse=True)
def report_checks():
    yield
    if CHECKED["worlds"]:
        REPORT.append(f"access rules: {CHECKED['answers']} answers checked against the matrix, "
                      f"{len(READERS)} readers in each of {CHECKED['worlds']} random worlds")

