"""Who may change a document, checked against an independent statement of the rules.

Hypothesis draws a world (test_access_rules's: patients, documents with labels, authors and
custodians, the patients' consents) and a sequence of changes, each asked by any kind of requester
with a PDSM4DMP PATCH (TD3.3a-d), by id or by identifier, a JSON Patch or its FHIRPath Patch in
turn: a visibility label added or removed, the guide's masking and unmasking (`/securityLabel/0`
replaced by a label, or by `N`), a deletion, archiving. Each answer must be what the README's rules say (404 for a document the requester does
not see, 410 once it is deleted, 403 for a change they may not make, a mask the patient set lifted by
its author among them, 200 otherwise), what is stored
must follow exactly the changes made, every request must leave an AuditEvent, and at the end every
reader sees what the read rules allow of the documents as they now are.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from conftest import REPORT, patch_operation, patch_parameters
from gateway.mapping import codes
from gateway.storage.schema import resources
from test_access_rules import (
    INS,
    LABELS,
    ORGANIZATIONS,
    PROFESSIONALS,
    READERS,
    Document,
    Reader,
    Rule,
    build_world,
    match_ids,
    may_see,
    rules,
    token_claims,
)

MASQUE_PS, INVISIBLE_PATIENT, INVISIBLE_REPRESENTATIVES = LABELS
PATCH = {"Content-Type": "application/json-patch+json"}
FHIRPATH_PATCH = {"Content-Type": "application/fhir+json"}
NO_RESTRICTION = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}]}
CONFIDENTIALITY = {"coding": [{"system": codes.CONFIDENTIALITY_SYSTEM, "code": "N"}]}


@dataclass(frozen=True)
class Requester:
    reader: Reader
    organization: int | None = None   # the token's `org`, for a professional

    @property
    def reading(self) -> Reader:
        """The reader the read rules see: acting for the token's organisation, which a decision about
        it (a block of it, an authorisation) concerns."""
        return replace(self.reader, organization=self.organization)


@dataclass(frozen=True)
class Change:
    kind: str                 # add, remove, mask, unmask (the guide's requests), delete, archive
    label: str | None = None
    archived: bool | None = None


@dataclass
class State:
    """A document as the changes made so far left it."""
    labels: set = field(default_factory=set)
    archived: bool | None = None
    deleted: bool = False
    version: int = 1
    masked_by_patient: bool = False   # MASQUE_PS set by the patient or their representative


professional, patient, organization = (st.integers(0, len(PROFESSIONALS) - 1), st.integers(0, len(INS) - 1),
                                       st.one_of(st.none(), st.integers(0, len(ORGANIZATIONS) - 1)))
documents = st.builds(Document, patient, st.one_of(st.just(frozenset()), st.frozensets(st.sampled_from(LABELS))),
                      st.one_of(st.none(), professional), organization)
ORGANIZATION_CLAIMS = [None, *range(len(ORGANIZATIONS))]
# A requester who names a patient (a patient, a representative, an emergency access) names the
# patient of the document asked about (offset 0) twice as often as the other one (offset 1).
PATIENT_OFFSETS = (0, 0, 1)
# Every kind of requester: each professional in care (the most), with each organisation claim or
# none, in emergency, as the regulator and as an occupational doctor; patients and representatives;
# the roles that see no patient data.
REQUESTERS = (
    [Requester(Reader(role, n, None, "care"), org) for role in ("doctor", "nurse")
     for n in range(len(PROFESSIONALS)) for org in ORGANIZATION_CLAIMS]
    + [Requester(Reader(role, 0, offset, "care")) for role in ("patient", "representative")
       for offset in PATIENT_OFFSETS]
    + [Requester(Reader("occupational-doctor", n, None, "care"), org) for n in range(len(PROFESSIONALS))
       for org in ORGANIZATION_CLAIMS]
    + [Requester(Reader(role, n, offset, purpose), 0) for role, purpose in (("doctor", "emergency"),
                                                                             ("regulator", "regulation"))
       for n in range(len(PROFESSIONALS)) for offset in PATIENT_OFFSETS]
    + [Requester(Reader(role, 0, None, "care")) for role in ("system", "admin")]
)
# Every change but the deletion, which ends what may be asked of a document: in one step in three.
CHANGES = ([Change(kind, label) for kind in ("add", "remove", "mask") for label in LABELS]
           + [Change("unmask"), Change("archive", archived=True), Change("archive", archived=False)])
changes_asked = st.one_of(st.permutations(CHANGES), st.permutations(CHANGES),
                          st.permutations([*CHANGES, Change("delete")]))
# Every professional authorised by every patient but a few, so that most changes reach a document
# the requester sees.
PAIRS = [(p, n) for p in range(len(INS)) for n in range(len(PROFESSIONALS))]
permits = st.sets(st.sampled_from(PAIRS), max_size=2).map(
    lambda left_out: [Rule(p, "professional", "permit", n) for p, n in PAIRS if (p, n) not in left_out])
# A step: a requester asks every change of the document, in a random order.
steps = st.tuples(st.sampled_from(REQUESTERS), st.integers(0, 3), changes_asked, st.booleans())


# The rules of the README ("Masking", "Versions", "PDSM4DMP choices"), stated plainly.
def produced_by(requester: Requester, doc: Document) -> bool:
    """A professional who authored the document, or of its custodian organisation."""
    reader = requester.reader
    return reader.role not in ("patient", "representative", "system", "admin") and (
        doc.author == reader.professional
        or (doc.custodian is not None and doc.custodian == requester.organization))


def in_care(reader: Reader) -> bool:
    return reader.role in ("doctor", "nurse") and reader.purpose == "care"


def acts_for_patient(requester: Requester) -> bool:
    return requester.reader.role in ("patient", "representative")


def may_set(requester: Requester, doc: Document, state: State, label: str) -> bool:
    role = requester.reader.role
    if role == "patient":
        return label in (MASQUE_PS, INVISIBLE_REPRESENTATIVES)
    if role == "representative":
        return label == MASQUE_PS
    if in_care(requester.reader):
        return label == INVISIBLE_PATIENT or (label == MASQUE_PS and produced_by(requester, doc)
                                              and not state.masked_by_patient)
    return False


def may_delete(requester: Requester, doc: Document) -> bool:
    return in_care(requester.reader) and produced_by(requester, doc)


def may_archive(requester: Requester) -> bool:
    return requester.reader.role in ("patient", "representative") or in_care(requester.reader)


def expected(requester: Requester, doc: Document, state: State, change: Change, world_rules, by_identifier: bool):
    """(status, the state after it)."""
    now = replace(doc, labels=frozenset(state.labels))
    if not may_see(requester.reading, now, world_rules):
        return 404, state
    if state.deleted:
        # A search finds no deleted document; its read answers 410 Gone.
        return (404 if by_identifier else 410), state
    if change.kind == "delete":
        return (200, replace(state, deleted=True, version=state.version + 1)) if may_delete(requester, doc) \
            else (403, state)
    if change.kind == "archive":
        if state.archived == change.archived:
            return 200, state
        return (200, replace(state, archived=change.archived, version=state.version + 1)) if may_archive(requester) \
            else (403, state)
    # The guide's requests replace the first label: the first visibility label (they are listed
    # first, in order), or the confidentiality when there is none, which stays as authored.
    first_replaced = state.labels - {min(state.labels)} if state.labels else state.labels
    if change.kind == "unmask":
        wanted = first_replaced
    elif change.kind == "mask":
        wanted = first_replaced | {change.label}
    elif change.kind == "add":
        wanted = state.labels | {change.label}
    else:
        wanted = state.labels - {change.label}
    moved = wanted ^ state.labels
    if not moved:
        return 200, state
    if all(may_set(requester, doc, state, label) for label in moved):
        mask_kept = MASQUE_PS in state.labels and state.masked_by_patient
        return 200, replace(state, labels=wanted, version=state.version + 1, masked_by_patient=MASQUE_PS in wanted and (
            mask_kept or (MASQUE_PS not in state.labels and acts_for_patient(requester))))
    return 403, state


def patch_of(change: Change, state: State) -> list:
    if change.kind == "add":
        return [{"op": "add", "path": "/securityLabel/-",
                 "value": {"coding": [{"system": codes.VISIBILITY_SYSTEM, "code": change.label}]}}]
    if change.kind == "remove":   # the labels as the client read them, less one
        return [{"op": "replace", "path": "/securityLabel", "value": [
            {"coding": [{"system": codes.VISIBILITY_SYSTEM, "code": label}]}
            for label in sorted(state.labels - {change.label})] + [CONFIDENTIALITY]}]
    if change.kind == "mask":
        return [{"op": "replace", "path": "/securityLabel/0",
                 "value": {"coding": [{"system": codes.VISIBILITY_SYSTEM, "code": change.label}]}}]
    if change.kind == "unmask":
        return [{"op": "replace", "path": "/securityLabel/0", "value": NO_RESTRICTION}]
    if change.kind == "delete":
        return [{"op": "replace", "path": "/status", "value": "entered-in-error"}]
    return [{"op": "replace", "path": f"/extension[url:'{codes.PDSM_IS_ARCHIVED}']/valueBoolean",
             "value": change.archived}]


def fhirpath_patch_of(change: Change, state: State) -> dict:
    """The same change as a FHIRPath Patch (a Parameters resource), which PDSm takes too."""
    label = {"coding": [{"system": codes.VISIBILITY_SYSTEM, "code": change.label}]}
    if change.kind == "add":
        operation = patch_operation("add", "DocumentReference", name="securityLabel", valueCodeableConcept=label)
    elif change.kind == "remove":
        operation = patch_operation("delete", f"DocumentReference.securityLabel.where(coding.code = '{change.label}')")
    elif change.kind in ("mask", "unmask"):
        operation = patch_operation("replace", "DocumentReference.securityLabel[0]",
                                    valueCodeableConcept=label if change.kind == "mask" else NO_RESTRICTION)
    elif change.kind == "delete":
        operation = patch_operation("replace", "DocumentReference.status", valueCode="entered-in-error")
    elif state.archived is None:
        operation = patch_operation("add", "DocumentReference", name="extension", value_parts=[
            {"name": "url", "valueUri": codes.PDSM_IS_ARCHIVED}, {"name": "value", "valueBoolean": change.archived}])
    else:
        operation = patch_operation("replace", f"DocumentReference.extension('{codes.PDSM_IS_ARCHIVED}').value",
                                    valueBoolean=change.archived)
    return patch_parameters(operation)


def stored(engine, doc_id: str) -> State:
    with engine.connect() as conn:
        row = conn.execute(select(resources.c.body, resources.c.deleted, resources.c.version,
                                  resources.c.masked_by_patient).where(
            resources.c.res_type == "DocumentReference", resources.c.res_id == doc_id)).one()
    body = json.loads(row.body)
    labels = {c["code"] for label in body.get("securityLabel", []) for c in label["coding"]
              if c["system"] == codes.VISIBILITY_SYSTEM}
    archived = [e["valueBoolean"] for e in body.get("extension", []) if e["url"] == codes.PDSM_IS_ARCHIVED]
    return State(labels, archived[0] if archived else None, bool(row.deleted), row.version, row.masked_by_patient)


def audit_count(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(resources)
                            .where(resources.c.res_type == "AuditEvent")).scalar_one()


CHECKED = {"worlds": 0, "made": 0, "answers": Counter()}


@pytest.fixture
def backend():
    """Hundreds of requests: on SQLite (the rules are Python, the same on PostgreSQL)."""
    return "sqlite"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(docs=st.lists(documents, min_size=1, max_size=4), world_rules=st.lists(rules, max_size=2).flatmap(
    lambda drawn: permits.map(lambda granted: granted + drawn)),
       sequence=st.lists(steps, min_size=1, max_size=6))
# A professional of the custodian organisation masks the document (and no longer sees it), its
# patient unmasks it by the guide's request, and the professional deletes it.
@example(docs=[Document(0, frozenset(), None, 1)], world_rules=[Rule(0, "professional", "permit", 2)], sequence=[
    (Requester(Reader("doctor", 2, None, "care"), 1), 0, [Change("add", MASQUE_PS)], False),
    (Requester(Reader("patient", 0, 0, "care")), 0, [Change("unmask")], True),   # offset 0: the document's
    (Requester(Reader("doctor", 2, None, "care"), 1), 0, [Change("delete")], False)])
# The patient masks a document its author, who still sees it, may not unmask, by either request;
# once the patient unmasked it, its author masks it and unmasks it.
@example(docs=[Document(0, frozenset(), 2, None)], world_rules=[], sequence=[
    (Requester(Reader("patient", 0, 0, "care")), 0, [Change("add", MASQUE_PS)], False),
    (Requester(Reader("doctor", 2, None, "care")), 0, [Change("unmask"), Change("remove", MASQUE_PS)], True),
    (Requester(Reader("patient", 0, 0, "care")), 0, [Change("unmask")], False),
    (Requester(Reader("doctor", 2, None, "care")), 0, [Change("mask", MASQUE_PS), Change("unmask")], False)])
# A block of the organisation a professional acts for hides the document from them, though the
# patient authorised them by name: they may change nothing of it (404).
@example(docs=[Document(0, frozenset(), None, None)],
         world_rules=[Rule(0, "professional", "permit", 2), Rule(0, "professional", "deny", None, 1)],
         sequence=[(Requester(Reader("doctor", 2, None, "care"), 1), 0, [Change("add", MASQUE_PS)], False)])
def test_every_change_is_made_exactly_when_the_rules_allow_it(client, database, bearer, docs, world_rules, sequence):
    engine = database[0]
    made = build_world(engine, docs, world_rules)
    CHECKED["worlds"] += 1
    states = {i: State(set(doc.labels)) for i, doc in enumerate(docs)}
    for requester, index, asked, by_identifier in sequence:
        i = index % len(docs)
        if requester.reader.patient is not None:
            requester = replace(requester, reader=replace(
                requester.reader, patient=(docs[i].patient + requester.reader.patient) % len(INS)))
        doc_id = made[i][0]
        headers = bearer(**token_claims(requester.reader),
                         org=ORGANIZATIONS[requester.organization] if requester.organization is not None else None)
        url = (f"/fhir/DocumentReference?identifier=urn:ietf:rfc:3986|urn:oid:1.2.250.1.999.{i}" if by_identifier
               else f"/fhir/DocumentReference/{doc_id}")
        for change in asked:
            status, after = expected(requester, docs[i], states[i], change, world_rules, by_identifier)
            audit_before = audit_count(engine)
            # A JSON Patch and a FHIRPath Patch in turn: the rules are the change's, whatever its form.
            fhirpath = sum(CHECKED["answers"].values()) % 2 == 1
            body = fhirpath_patch_of(change, states[i]) if fhirpath else patch_of(change, states[i])
            response = client.patch(url, data=json.dumps(body), headers={**headers,
                                                                        **(FHIRPATH_PATCH if fhirpath else PATCH)})
            context = (requester, docs[i], states[i], change, by_identifier, body, world_rules, response.json)
            assert response.status_code == status, context
            assert stored(engine, doc_id) == after, context
            assert audit_count(engine) > audit_before, context
            CHECKED["answers"][status] += 1
            CHECKED["made"] += after != states[i]
            states[i] = after

    # The documents as the changes left them, read by every reader: the search and each Binary.
    for reader in READERS:
        headers = bearer(**token_claims(reader))
        allowed = {made[i][0] for i, doc in enumerate(docs) if not states[i].deleted
                   and may_see(reader, replace(doc, labels=frozenset(states[i].labels)), world_rules)}
        found = client.get("/fhir/DocumentReference?_count=10", headers=headers).json
        assert set(match_ids(found)) == allowed, (reader, docs, states, world_rules)
        for i, (doc_id, binary_id, _) in made.items():
            if not states[i].deleted:
                answer = client.get(f"/fhir/Binary/{binary_id}", headers=headers)
                assert answer.status_code == (200 if doc_id in allowed else 404), (reader, docs[i], states[i])


@pytest.fixture(scope="module", autouse=True)
def report_checks():
    yield
    if CHECKED["worlds"]:
        answers = CHECKED["answers"]
        statuses = ", ".join(f"{status} ×{answers[status]}" for status in sorted(answers))
        REPORT.append(f"write rules: {sum(answers.values())} changes asked by random requesters, {CHECKED['made']} "
                      f"made (answered {statuses}), checked against the rules in {CHECKED['worlds']} random worlds")
