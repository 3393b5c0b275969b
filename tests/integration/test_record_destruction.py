"""A large record's destruction: everything of the record goes, nothing of another, in a number of
statements that grows with each 500 of its resources, not with each document.

Each of its blobs was asked of the whole of `resources` (no index read it by blob) and each 200 of
its resources of the whole of `raw_inputs` (a `LIKE '%…%'` each): destroying a record of 3,000
documents, among 6,000, held the write lock 69 s, every ingest waiting (2.4 s now)."""
import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import event, func, select, text

from conftest import MLLP_TEST_MAX_BYTES, ROOT, sample
from gateway.access.audit import verify_chain
from gateway.access.context import AccessContext
from gateway.demo import build_submission
from gateway.refusal import Refused
from gateway.services import personal, retention
from gateway.storage.repository import Repository
from gateway.storage.schema import blobs, raw_inputs, resources

MARTIN = "185067511204554"
DOCUMENTS = 150
XML = {"Content-Type": "application/xml"}


def test_a_large_record_is_destroyed_in_a_few_statements_and_nothing_else_goes(client, bearer, database,
                                                                           backend):
    engine = database[0]
    system = {**XML, **bearer("system", sub="hospital")}
    cda = sample("cr-biologie-martin.xml").decode()
    for n in range(DOCUMENTS):
        answer = client.post("/cda", headers=system, data=cda.replace(
            '<id root="1.2.250.1.213.1.1.9.2.7.1"/>', f'<id root="1.2.250.1.213.1.1.9.2.7.1.{n}"/>', 1).encode())
        assert answer.status_code == 201, answer.text
    assert client.post("/cda", headers=system, data=cda.encode()).status_code == 201
    assert client.post("/cda", headers=system, data=cda.encode()).status_code == 200   # a duplicate: its raw input too
    assert client.post("/cda", headers=system, data=sample("cr-imagerie-echographie-moreau.xml")).status_code == 201
    with engine.connect() as conn:
        others = conn.execute(select(func.count()).select_from(raw_inputs)).scalar_one() - DOCUMENTS - 2
    patient = Repository(engine, AccessContext(role="patient", subject=MARTIN, patient_ins=MARTIN, name="Paul MARTIN",
                                               address=None), "http://gateway.test")
    retention.close_record(patient)
    retention.request_destruction(patient)

    statements = []

    def count(conn, cursor, statement, *_):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        [destroyed] = retention.carry_out(engine, datetime.now(timezone.utc) + timedelta(days=3660))
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert destroyed.raw_inputs == DOCUMENTS + 2 and destroyed.resources > 2 * DOCUMENTS
    # A constant, plus a few a resource type for each 500 (43–44 here): 645 before, 4 a document and more.
    assert len(statements) < 100, len(statements)
    with engine.connect() as conn:
        left = conn.execute(select(func.count()).select_from(resources).where(
            resources.c.patient_id == destroyed.patient_id, resources.c.res_type != "AuditEvent")).scalar_one()
        assert left == 0
        assert conn.execute(select(func.count()).select_from(raw_inputs)).scalar_one() == others
        # Léa Moreau's document and its bytes stay; none of Paul Martin's bytes do.
        kept = set(conn.execute(select(blobs.c.sha256)).scalars())
        read = set(conn.execute(select(resources.c.blob_sha256).where(resources.c.blob_sha256.is_not(None))).scalars())
        assert kept == read | set(conn.execute(select(raw_inputs.c.sha256)).scalars()) and len(read) == 1
        if backend == "sqlite":
            plan = " ".join(str(row) for row in conn.execute(text(
                "EXPLAIN QUERY PLAN SELECT blob_sha256 FROM resources WHERE blob_sha256 IN ('a', 'b')")))
            assert "ix_resources_blob" in plan, plan
    assert verify_chain(engine).broken_at is None


LEFEVRE = "292086938701277"
IPP = "^^^CH-SAINT-AUBIN&1.2.250.1.213.1.1.9.1001&ISO^PI"
INS = "^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS"
# Paul Martin known to the hospital, then his record merged into a new patient's (A40).
ADMIT_MARTIN = ["ADT^A28^ADT_A05", f"PID|1||900000001{IPP}~{MARTIN}{INS}||MARTIN^PAUL^^^^^L||19850612|M"]
MERGE_MARTIN = ["ADT^A40^ADT_A39", f"PID|1||900000090{IPP}||MARTIN^PAUL^^^^^L||19850612|M", f"MRG|900000001{IPP}"]


def _feed(client, bearer, *messages: list[str]) -> None:
    feeder = {"Content-Type": "x-application/hl7-v2+er7", **bearer("system", sub="GAM CH-SAINT-AUBIN")}
    for n, segments in enumerate(messages):
        message = "\r".join([f"MSH|^~\\&|GAM|CH-SAINT-AUBIN|GW|DMP|20260310080000||{segments[0]}|FEED{n}|P|2.5^FRA^2.11"
                             "|||||FRA|UNICODE UTF-8", "EVN||20260310080000", *segments[1:]]) + "\r"
        answer = client.post("/hl7v2", headers=feeder, data=message.encode())
        assert answer.status_code == 200 and b"MSA|AA" in answer.data, answer.data


def _patient(engine, ins: str) -> Repository:
    return Repository(engine, AccessContext(role="patient", subject=ins, patient_ins=ins, name="P", address=None),
                      "http://gateway.test")


def test_a_record_another_was_merged_into_is_destroyed_whole(client, bearer, database):
    """The merged Patient of an A40 kept itself as its own record: the destruction of the record it
    was merged into left it behind, with the person's names and identifiers, and its index rows
    still found it by name. Now nothing of the person is left but the trail."""
    engine = database[0]
    _feed(client, bearer, ADMIT_MARTIN, MERGE_MARTIN)
    answer = client.post("/cda", headers={**XML, **bearer("system", sub="hospital")}, data=sample("cr-biologie-martin.xml"))
    assert answer.status_code == 201, answer.text
    patient = _patient(engine, MARTIN)
    retention.close_record(patient)
    retention.request_destruction(patient)
    [destroyed] = retention.carry_out(engine, datetime.now(timezone.utc) + timedelta(days=3660))
    with engine.connect() as conn:
        left = conn.execute(select(resources.c.res_type).where(
            resources.c.res_type != "AuditEvent", resources.c.patient_id.is_not(None))).scalars().all()
        assert left == []
        assert conn.execute(select(func.count()).select_from(resources).where(
            resources.c.res_type == "Patient")).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM search_string WHERE res_type = 'Patient'")).scalar_one() == 0
    assert destroyed.resources >= 4 and verify_chain(engine).broken_at is None


def test_a_destruction_the_merged_patient_requested_follows_the_record_it_was_merged_into(client, bearer, database):
    """Paul Martin closed his record and asked for its destruction; then his hospital merged his
    record into another (A40). The closure, a Consent, moved to the survivor; the request stayed
    with the merged patient, whose record was no longer closed when it came due: it lapsed, and
    nothing was destroyed. Now it follows the record, and is carried out."""
    engine = database[0]
    _feed(client, bearer, ADMIT_MARTIN)
    due = retention.request_destruction(_patient(engine, MARTIN))
    _feed(client, bearer, MERGE_MARTIN)
    closure, due_after_merge = retention.record_state(_patient(engine, MARTIN))
    assert closure is not None and due_after_merge == due
    [destroyed] = retention.carry_out(engine, datetime.now(timezone.utc) + timedelta(days=3660))
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(resources).where(
            resources.c.res_type == "Patient")).scalar_one() == 0
    assert destroyed.resources >= 3


def test_when_both_records_are_to_be_destroyed_the_later_date_holds(client, bearer, database):
    """Both patients asked for their record's destruction before the merge: one request is kept,
    for the later date, so that neither record is destroyed before its retention has run out."""
    engine = database[0]
    _feed(client, bearer, ADMIT_MARTIN,
          ["ADT^A28^ADT_A05", f"PID|1||900000002{IPP}~{LEFEVRE}{INS}||LEFEVRE^CLAIRE^^^^^L||19920823|F"])
    for ins, due in ((MARTIN, "2099-01-01T00:00:00"), (LEFEVRE, "2090-01-01T00:00:00")):
        retention.request_destruction(_patient(engine, ins))
        with engine.begin() as conn:
            conn.execute(text("UPDATE destruction_requests SET due_at = :due WHERE patient_id = :patient"),
                         {"due": due, "patient": _patient(engine, ins).own_patient_id()})
    _feed(client, bearer, ["ADT^A40^ADT_A39", f"PID|1||900000002{IPP}~{LEFEVRE}{INS}||LEFEVRE^CLAIRE^^^^^L||19920823|F",
                           f"MRG|900000001{IPP}"])
    with engine.connect() as conn:
        requests = conn.execute(text("SELECT patient_id, due_at FROM destruction_requests")).all()
    assert requests == [(_patient(engine, LEFEVRE).own_patient_id(), "2099-01-01T00:00:00")]


def test_a_record_two_closed_records_were_merged_into_reopens(client, bearer, database):
    """Both patients had closed their record; the merge brought the merged record's closure to the
    survivor's. Reopening revoked one closure only, and the record stayed closed."""
    engine = database[0]
    _feed(client, bearer, ADMIT_MARTIN,
          ["ADT^A28^ADT_A05", f"PID|1||900000002{IPP}~{LEFEVRE}{INS}||LEFEVRE^CLAIRE^^^^^L||19920823|F"])
    for ins in (MARTIN, LEFEVRE):
        retention.request_destruction(_patient(engine, ins))
    _feed(client, bearer, ["ADT^A40^ADT_A39", f"PID|1||900000002{IPP}~{LEFEVRE}{INS}||LEFEVRE^CLAIRE^^^^^L||19920823|F",
                           f"MRG|900000001{IPP}"])
    retention.reopen_record(_patient(engine, LEFEVRE))
    assert retention.record_state(_patient(engine, LEFEVRE)) == (None, None)
    answer = client.post("/cda", headers={**XML, **bearer("system", sub="hospital")},
                         data=sample("cr-hospitalisation-lefevre.xml"))
    assert answer.status_code == 201, answer.text


def test_documents_refused_for_the_closed_record_are_destroyed_with_it(client, bearer, database):
    """A closed record refuses new documents; their raw copies, which hold the patient's names,
    identifiers and reports, outlived the record's destruction: from `/cda`, HL7v2, ITI-65 and the
    patient space alike. A document of a patient the gateway does not know stays."""
    engine = database[0]
    system = {**XML, **bearer("system", sub="hospital")}
    assert client.post("/cda", headers=system, data=sample("ldl-ses-martin.xml")).status_code == 201
    patient = _patient(engine, MARTIN)
    retention.close_record(patient)
    retention.request_destruction(patient)
    closed = client.post("/cda", headers=system, data=sample("cr-biologie-martin.xml"))
    assert closed.status_code == 422 and "record is closed" in closed.text
    oru = (ROOT / "samples" / "hl7v2" / "oru-r01-cr-biologie-martin.hl7").read_bytes()
    feeder = {"Content-Type": "x-application/hl7-v2+er7", **bearer("system", sub="LABO CH-SAINT-AUBIN")}
    answer = client.post("/hl7v2", headers=feeder, data=oru)
    assert b"MSA|AE" in answer.data and b"record is closed" in answer.data, answer.data
    provided = client.post("/fhir", data=json.dumps(build_submission(sample("cr-biologie-martin.xml"), 1 << 22)),
                           headers={"Content-Type": "application/fhir+json", **bearer("system", sub="hospital")})
    assert provided.status_code == 422 and "record is closed" in provided.text
    with pytest.raises(Refused, match="closed"):
        personal.add_document(patient, title="Mes directives", type_code=personal.ADVANCE_DIRECTIVES,
                              media_type="text/plain", data=b"Pas d'acharnement.", max_bytes=1 << 20)
    unrelated = client.post("/cda", headers=system, data=_of_a_stranger(ROOT / "samples" / "invalid" / "missing-author.xml"))
    assert unrelated.status_code == 422
    with engine.connect() as conn:
        refused = conn.execute(select(raw_inputs.c.id, raw_inputs.c.sha256).where(
            raw_inputs.c.status == "refused").order_by(raw_inputs.c.id)).all()
    assert len(refused) == 5
    [destroyed] = retention.carry_out(engine, datetime.now(timezone.utc) + timedelta(days=3660))
    assert destroyed.raw_inputs == 5   # the document stored, and the four refused for the record
    with engine.connect() as conn:
        assert conn.execute(select(raw_inputs.c.id)).scalars().all() == [refused[-1].id]
        assert set(conn.execute(select(blobs.c.sha256)).scalars()) == {refused[-1].sha256}


def _of_a_stranger(path) -> bytes:
    """A sample of Paul Martin's, naming instead a patient the gateway does not know (INS and IPP)."""
    return path.read_bytes().replace(MARTIN.encode(), b"279035121518989").replace(b"900000001", b"900000777")


def test_inputs_refused_for_any_reason_are_destroyed_with_the_record_they_name(app, client, bearer, database):
    """A document or message refused for what it holds (no author, not XML past its header, a birth
    date that is none, a message type not taken, a message over the size limit, an element PDSm
    prohibits, a file that is not what it says) names its patient all the same, and its raw copy holds their identity and what was
    sent of them: once that patient is known, it goes with their record's destruction. It stayed
    (only refusals for the closed record named it). The same refused of a patient the gateway does
    not know names no record, and stays."""
    engine = database[0]
    system = {**XML, **bearer("system", sub="hospital")}
    invalid = ROOT / "samples" / "invalid"
    assert client.post("/cda", headers=system, data=sample("ldl-ses-martin.xml")).status_code == 201
    patient = _patient(engine, MARTIN)
    feeder = {"Content-Type": "x-application/hl7-v2+er7", **bearer("system", sub="GAM CH-SAINT-AUBIN")}
    admission = (ROOT / "samples" / "hl7v2" / "adt-a01-martin.hl7").read_text()
    unborn = admission.replace("|19850612|", "|19851399|")
    order = admission.replace("ADT^A01^ADT_A01", "ORM^O01^ORM_O01")
    app.config["SETTINGS"] = replace(app.config["SETTINGS"], mllp_max_bytes=MLLP_TEST_MAX_BYTES)
    oversized = admission.replace("ADT0001", "ADT0003").rstrip("\n") + "\nNTE|1||" + "x" * MLLP_TEST_MAX_BYTES + "\n"
    submission = build_submission(sample("cr-biologie-martin.xml"), 1 << 22)
    submission["entry"][0]["resource"]["entry"][0]["date"] = "2026-03-10"

    assert client.post("/cda", headers=system, data=(invalid / "missing-author.xml").read_bytes()).status_code == 422
    assert client.post("/cda", headers=system, data=(invalid / "unparseable.xml").read_bytes()).status_code == 400
    assert b"MSA|AE" in client.post("/hl7v2", headers=feeder, data=unborn.encode()).data
    assert b"MSA|AR" in client.post("/hl7v2", headers=feeder, data=order.encode()).data
    assert b"MSA|AR" in client.post("/hl7v2", headers=feeder, data=oversized.encode()).data   # its first 64 KB kept
    provided = client.post("/fhir", data=json.dumps(submission),
                           headers={"Content-Type": "application/fhir+json", **bearer("system", sub="hospital")})
    assert provided.status_code == 422 and "List.entry[0].date" in provided.text
    with pytest.raises(Refused, match="not a PDF"):
        personal.add_document(patient, title="Mes directives", type_code=personal.ADVANCE_DIRECTIVES,
                              media_type="application/pdf", data=b"Pas d'acharnement.", max_bytes=1 << 20)
    strangers = [client.post("/cda", headers=system, data=_of_a_stranger(invalid / "missing-author.xml")),
                 client.post("/hl7v2", headers=feeder, data=unborn.replace(MARTIN, "279035121518989")
                             .replace("900000001", "900000777").replace("ADT0001", "ADT0777").encode())]
    assert strangers[0].status_code == 422 and b"MSA|AE" in strangers[1].data
    with engine.connect() as conn:
        refused = conn.execute(select(raw_inputs.c.id, raw_inputs.c.sha256, raw_inputs.c.outcome).where(
            raw_inputs.c.status == "refused").order_by(raw_inputs.c.id)).all()
    assert len(refused) == 9
    record = f"Patient/{patient.own_patient_id()}"
    assert [json.loads(row.outcome).get("record") for row in refused] == [record] * 7 + [None] * 2

    retention.close_record(patient)
    retention.request_destruction(patient)
    [destroyed] = retention.carry_out(engine, datetime.now(timezone.utc) + timedelta(days=3660))
    assert destroyed.raw_inputs == 8   # the document stored, and the seven refused that named its patient
    with engine.connect() as conn:
        assert conn.execute(select(raw_inputs.c.id).order_by(raw_inputs.c.id)).scalars().all() == \
            [row.id for row in refused[-2:]]
        assert set(conn.execute(select(blobs.c.sha256)).scalars()) == {row.sha256 for row in refused[-2:]}


def test_inputs_that_stored_nothing_of_the_record_or_named_it_by_version_are_destroyed_with_it(
        client, bearer, database):
    """Three inputs that hold the patient's identity were left after the record's destruction: an
    ITI-65 submission naming its patient by a conditional reference, without a Patient entry (it
    names what it wrote by version, `DocumentReference/<id>/_history/1`, which the destruction did
    not match: the documents it carried stayed, base64 in its Bundle); an admission whose identity
    and consents changed nothing; a report not meant for the shared record (DESTDMP N)."""
    engine = database[0]
    assert client.post("/cda", headers={**XML, **bearer("system", sub="hospital")},
                       data=sample("ldl-ses-martin.xml")).status_code == 201
    submission = build_submission(sample("cr-biologie-martin.xml"), 1 << 22)
    submission["entry"] = [entry for entry in submission["entry"] if entry["resource"]["resourceType"] != "Patient"]
    for entry in submission["entry"]:
        if "subject" in entry["resource"]:
            entry["resource"]["subject"] = {"reference": f"Patient?identifier=urn:oid:1.2.250.1.213.1.4.10|{MARTIN}"}
    provided = client.post("/fhir", data=json.dumps(submission),
                           headers={"Content-Type": "application/fhir+json", **bearer("system", sub="hospital")})
    assert provided.status_code == 200, provided.text
    feeder = {"Content-Type": "x-application/hl7-v2+er7", **bearer("system", sub="GAM CH-SAINT-AUBIN")}
    admission = (ROOT / "samples" / "hl7v2" / "adt-a01-martin.hl7").read_text()
    for control_id in ("ADT0001", "ADT0002"):   # the second changes nothing
        assert b"MSA|AA" in client.post("/hl7v2", headers=feeder, data=admission.replace("ADT0001", control_id)
                                        .encode()).data
    report = (ROOT / "samples" / "hl7v2" / "oru-r01-cr-biologie-martin.hl7").read_text().replace(
        "DESTDMP^Destinataire DMP^MetaDMPMSS||Y^", "DESTDMP^Destinataire DMP^MetaDMPMSS||N^")
    answer = client.post("/hl7v2", data=report.encode(), headers={
        "Content-Type": "x-application/hl7-v2+er7", **bearer("system", sub="LABO CH-SAINT-AUBIN")})
    assert b"MSA|AA" in answer.data and b"DESTDMP is N" in answer.data, answer.data
    with engine.connect() as conn:
        inputs = conn.execute(select(raw_inputs.c.status, raw_inputs.c.resources).order_by(raw_inputs.c.id)).all()
    assert [row.status for row in inputs] == ["processed"] * 4 + ["skipped"]
    assert [row.resources is None for row in inputs] == [False, False, False, True, True]

    patient = _patient(engine, MARTIN)
    retention.close_record(patient)
    retention.request_destruction(patient)
    [destroyed] = retention.carry_out(engine, datetime.now(timezone.utc) + timedelta(days=3660))
    assert destroyed.raw_inputs == 5
    with engine.connect() as conn:
        assert conn.execute(select(raw_inputs.c.id)).all() == []
        assert conn.execute(select(blobs.c.sha256)).all() == []


def test_inputs_refused_before_their_patient_was_known_are_destroyed_with_the_record_made_later(
        client, bearer, database):
    """A hospital's first documents for a patient are refused (a CI-SIS rule, a birth date that is
    none, an element PDSm prohibits, an ITI-105 with two contents, a message type not taken), then a
    corrected one makes the record. The refused ones, received when no record was there to name,
    kept the patient's identity with no link to them, and outlived the record's destruction: they
    keep the identifiers they name the patient by, which the record's Patient holds, apart from
    what operators read of them."""
    engine = database[0]
    system = {**XML, **bearer("system", sub="hospital")}
    fhir = {"Content-Type": "application/fhir+json", **bearer("system", sub="hospital")}
    feeder = {"Content-Type": "x-application/hl7-v2+er7", **bearer("system", sub="GAM CH-SAINT-AUBIN")}
    admission = (ROOT / "samples" / "hl7v2" / "adt-a01-martin.hl7").read_text()
    submission = build_submission(sample("cr-biologie-martin.xml"), 1 << 22)
    submission["entry"][0]["resource"]["entry"][0]["date"] = "2026-03-10"
    two_contents = {"resourceType": "DocumentReference", "status": "current",
                    "subject": {"reference": f"Patient?identifier=urn:oid:1.2.250.1.213.1.4.10|{MARTIN}"},
                    "content": [{"attachment": {"contentType": "application/pdf", "data": "JVBERi0xLjQKJSVFT0YK"}}] * 2}

    missing_author = (ROOT / "samples" / "invalid" / "missing-author.xml").read_bytes()
    assert client.post("/cda", headers=system, data=missing_author).status_code == 422
    assert b"MSA|AE" in client.post("/hl7v2", headers=feeder, data=admission.replace("|19850612|", "|19851399|")
                                    .encode()).data
    assert b"MSA|AR" in client.post("/hl7v2", headers=feeder, data=admission.replace(
        "ADT^A01^ADT_A01", "ORM^O01^ORM_O01").replace("ADT0001", "ADT0002").encode()).data
    assert client.post("/fhir", data=json.dumps(submission), headers=fhir).status_code == 422
    assert client.post("/fhir/DocumentReference", data=json.dumps(two_contents), headers=fhir).status_code == 422
    stranger = client.post("/cda", headers=system, data=_of_a_stranger(ROOT / "samples" / "invalid" /
                                                                       "missing-author.xml"))
    assert stranger.status_code == 422
    with engine.connect() as conn:
        refused = conn.execute(select(raw_inputs.c.id, raw_inputs.c.sha256, raw_inputs.c.outcome,
                                      raw_inputs.c.patient_identifiers).order_by(raw_inputs.c.id)).all()
    ins = f"urn:oid:1.2.250.1.213.1.4.10|{MARTIN}"
    assert [ins in json.loads(row.patient_identifiers) for row in refused] == [True] * 5 + [False]
    # Not in the outcome, which operators read (they read no patient data).
    assert not any("record" in json.loads(row.outcome) or MARTIN in row.outcome for row in refused)

    assert client.post("/cda", headers=system, data=sample("ldl-ses-martin.xml")).status_code == 201
    patient = _patient(engine, MARTIN)
    retention.close_record(patient)
    retention.request_destruction(patient)
    [destroyed] = retention.carry_out(engine, datetime.now(timezone.utc) + timedelta(days=3660))
    assert destroyed.raw_inputs == 6   # the document that made the record, and the five refused before it
    with engine.connect() as conn:
        assert conn.execute(select(raw_inputs.c.id)).scalars().all() == [refused[-1].id]
        assert set(conn.execute(select(blobs.c.sha256)).scalars()) == {refused[-1].sha256}
