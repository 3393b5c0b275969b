"""What a patient decides or adds while the hospital merges their record into another (A40).

The request looked the patient's record up before its unit of work began; the merge, committed
meanwhile, moved the record to the survivor. Each of these was then stored under the merged
patient, whose rules no longer apply to anything: a professional the patient blocked still read
the record, an upload was seen by no one, a reopened record stayed closed. Now each unit reads the
record again in its own transaction (on PostgreSQL after the merge, which it waits for)."""
import json
import threading

import pytest
from sqlalchemy import select

from conftest import sample
from gateway.access.context import AccessContext
from gateway.services import personal, retention
from gateway.services.consents import decision
from gateway.storage import repository
from gateway.storage.repository import Repository
from gateway.storage.schema import destruction_requests, resources

from test_hl7v2_feed import adt

MARTIN = "185067511204554"
INTERNIST = "899900000012"
FHIR = {"Content-Type": "application/fhir+json"}
# Paul Martin's record merged into a new patient's, which takes his INS.
MERGE_MARTIN = adt("A40", "MERGE", "PID|1||900000090^^^CH-SAINT-AUBIN&1.2.250.1.213.1.1.9.1001&ISO^PI||MARTIN^PAUL"
                   "^^^^^L||19850612|M", f"MRG|{MARTIN}^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS")


def patient_repository(engine) -> Repository:
    """Paul Martin, acting in his space."""
    return Repository(engine, AccessContext(role="patient", subject=MARTIN, patient_ins=MARTIN, name="Paul MARTIN",
                                            address=None), "http://gateway.test")


def engine_of(gateway):
    return gateway.application.config["ENGINE"]


def document_ids(client, headers) -> set[str]:
    response = client.get("/fhir/DocumentReference", headers=headers)
    assert response.status_code == 200, response.json
    return {e["resource"]["id"] for e in response.json.get("entry", [])}


def during_a_merge(client, other, bearer, act, monkeypatch):
    """Merge Paul Martin's record (A40, posted to `client`) and, once the merge has moved it but
    before it commits, start `act(other)`; hold the merge until `act` has looked the record up, as
    it does before its unit of work begins (`Repository.own_patient_id`). `other`: another gateway
    on PostgreSQL, where the two transactions overlap. What `act` returned, once the merge is AA."""
    moved, release, looked = threading.Event(), threading.Event(), threading.Event()
    move, look = repository.UnitOfWork.move_rest_of_record, repository.Repository.own_patient_id

    def move_then_wait(self, from_id, to_id):
        move(self, from_id, to_id)
        moved.set()
        assert release.wait(60)

    def look_then_say(self):
        found = look(self)
        looked.set()
        return found

    monkeypatch.setattr(repository.UnitOfWork, "move_rest_of_record", move_then_wait)
    monkeypatch.setattr(repository.Repository, "own_patient_id", look_then_say)
    feeder = {"Content-Type": "x-application/hl7-v2+er7", **bearer("system", sub="GAM CH-SAINT-AUBIN")}
    answers, failures = {}, []

    def run(name, call):
        try:
            answers[name] = call()
        except BaseException as failure:   # said by the test, not lost in the thread
            failures.append(failure)

    merging = threading.Thread(target=run, args=("merge", lambda: client.post(
        "/hl7v2", headers=feeder, data=MERGE_MARTIN).data))
    acting = threading.Thread(target=run, args=("act", lambda: act(other)))
    try:
        merging.start()
        assert moved.wait(60)
        acting.start()
        assert looked.wait(60)
    finally:
        release.set()
        merging.join(60)
        acting.join(60)
    assert not failures, failures
    assert b"MSA|AA" in answers["merge"], answers["merge"]
    return answers["act"]


@pytest.fixture
def other(backend, request, client):
    """What the patient's request reaches: another gateway on PostgreSQL, this one on SQLite."""
    return request.getfixturevalue("second_gateway") if backend == "postgresql" else client


@pytest.fixture
def martin(client, bearer):
    """Paul Martin's report, fed by a hospital; the internist he authorised reads it."""
    answer = client.post("/cda", data=sample("cr-biologie-martin.xml"),
                         headers={"Content-Type": "application/xml", **bearer("system", sub="hospital")})
    assert answer.status_code == 201, answer.json
    allowed = client.post("/fhir/Consent", headers={**FHIR, **bearer("patient", patient=MARTIN)},
                          data=json.dumps({**decision("professional", "permit", INTERNIST), "status": "active"}))
    assert allowed.status_code == 201, allowed.json
    assert document_ids(client, bearer("doctor", sub=INTERNIST)) == {answer.json["id"]}
    return answer.json["id"]


def survivor_only(engine) -> str:
    """Every resource of the person and every destruction request belong to one record: the
    survivor's, which is returned."""
    with engine.connect() as conn:
        owners = set(conn.execute(select(resources.c.patient_id).where(
            resources.c.res_type != "AuditEvent", resources.c.patient_id.is_not(None))).scalars())
        owners |= set(conn.execute(select(destruction_requests.c.patient_id)).scalars())
    [survivor] = owners
    assert survivor == patient_repository(engine).own_patient_id()
    return survivor


def test_a_professional_blocked_during_the_merge_stays_blocked(client, other, bearer, database, martin, monkeypatch):
    """The block, answered 201, was stored under the merged patient: the internist still read the
    report in the survivor's record."""
    patient, internist = bearer("patient", patient=MARTIN), bearer("doctor", sub=INTERNIST)
    block = json.dumps({**decision("professional", "deny", INTERNIST), "status": "active"})
    answer = during_a_merge(client, other, bearer, lambda gateway: gateway.post(
        "/fhir/Consent", data=block, headers={**FHIR, **patient}), monkeypatch)
    assert answer.status_code == 201, answer.json
    survivor = survivor_only(database[0])
    assert answer.json["patient"]["reference"] == f"Patient/{survivor}"
    assert document_ids(client, internist) == set()
    assert document_ids(client, patient) == {martin}


def test_an_emergency_contact_added_during_the_merge_is_in_the_survivor_s_record(client, other, bearer, database,
                                                                                 martin, monkeypatch):
    engine = database[0]
    contact = during_a_merge(client, other, bearer, lambda gateway: personal.add_contact(
        patient_repository(engine_of(gateway)), family="MARTIN", given="Anne", relation="SPS",
        phone="0601020304")[0], monkeypatch)
    assert contact.json()["patient"]["reference"] == f"Patient/{survivor_only(engine)}"


def test_a_document_uploaded_during_the_merge_is_in_the_survivor_s_record(client, other, bearer, database, backend,
                                                                          martin, monkeypatch):
    """It was seen by no one, the patient included."""
    if backend == "sqlite":
        pytest.skip("SQLite stores the upload as received behind the merge's writes: it looks the record up after")
    engine = database[0]
    document = during_a_merge(client, other, bearer, lambda gateway: personal.add_document(
        patient_repository(engine_of(gateway)), title="Mes directives", type_code=personal.ADVANCE_DIRECTIVES,
        media_type="text/plain", data="Je souhaite être informé.".encode(), max_bytes=1 << 20)[0], monkeypatch)
    assert document.json()["subject"]["reference"] == f"Patient/{survivor_only(engine)}"
    assert document_ids(client, bearer("patient", patient=MARTIN)) == {martin, document.res_id}


def test_a_record_reopened_during_the_merge_is_open_with_no_destruction_pending(client, other, bearer, database,
                                                                               martin, monkeypatch):
    """Its closure was looked for under the merged patient, whose it no longer was: the record
    stayed closed."""
    engine = database[0]
    retention.request_destruction(patient_repository(engine))
    during_a_merge(client, other, bearer, lambda gateway: retention.reopen_record(
        patient_repository(engine_of(gateway))), monkeypatch)
    assert retention.record_state(patient_repository(engine)) == (None, None)
    with engine.connect() as conn:
        assert conn.execute(select(destruction_requests)).all() == []
