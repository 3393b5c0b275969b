"""POST /cda against the app and a real database (SQLite, and PostgreSQL where configured)."""
import base64
import hashlib
import json
import re
import threading
import time

import pytest
from sqlalchemy import func, select, text, update

import profiles
from conftest import GP, attend_all, sample
from gateway.storage.schema import blobs, raw_inputs, resources

RADIOLOGIST = "899900000038"   # Dr FAURE, who wrote the MRI report and its new version
FHIR = {"Content-Type": "application/fhir+json"}
XML = {"Content-Type": "application/xml"}
MARTIN = "urn:oid:1.2.250.1.213.1.4.10|185067511204554"
LEFEVRE = "urn:oid:1.2.250.1.213.1.4.10|292086938701277"   # the MRI report's patient


def post(client, name, headers=XML):
    return client.post("/cda", data=sample(name), headers=headers)


def lefevre_current(client) -> list[str]:
    """The ids of Mme LEFEVRE's current documents, as the client's professional finds them."""
    found = client.get("/fhir/DocumentReference", query_string={"patient.identifier": LEFEVRE, "status": "current"})
    return [e["resource"]["id"] for e in found.json.get("entry", [])]


def counts(engine):
    """Resources by type, the audit trail aside."""
    with engine.connect() as conn:
        return dict(conn.execute(select(resources.c.res_type, func.count())
                                 .where(resources.c.res_type != "AuditEvent").group_by(resources.c.res_type)).all())


def test_post_cda_creates_document_reference_and_binary(client, database):
    response = post(client, "ldl-ses-martin.xml")
    assert response.status_code == 201, response.json
    attend_all(database[0])
    doc = response.json
    assert response.headers["Location"].startswith(f"http://gateway.test/fhir/DocumentReference/{doc['id']}/_history/1")
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    assert response.headers["ETag"] == 'W/"1"'
    url = doc["content"][0]["attachment"]["url"]
    assert url.startswith("http://gateway.test/fhir/Binary/")
    raw = client.get(url.replace("http://gateway.test", ""))
    assert raw.status_code == 200 and raw.data == sample("ldl-ses-martin.xml")
    assert raw.mimetype == "text/xml"
    data = sample("ldl-ses-martin.xml")
    assert doc["content"][0]["attachment"]["size"] == len(data)
    assert doc["content"][0]["attachment"]["hash"] == base64.b64encode(hashlib.sha1(data).digest()).decode()
    patient = client.get(f"/fhir/{doc['subject']['reference']}").json
    assert patient["identifier"][0]["value"] == "185067511204554"


@pytest.mark.parametrize("content_type", ["text/xml", "application/hl7-cda+xml", "application/xml; charset=utf-8"])
def test_accepted_content_types(client, content_type):
    assert post(client, "cr-biologie-martin.xml", {"Content-Type": content_type}).status_code == 201


def test_other_content_type_is_415(client):
    response = post(client, "ldl-ses-martin.xml", {"Content-Type": "application/pdf"})
    assert response.status_code == 415 and response.json["resourceType"] == "OperationOutcome"


def test_same_document_twice_names_the_existing_resource_and_tells_nothing_else(client, database, bearer):
    """A re-sent document is recognised and stored once; the answer names it but carries none of
    what became of it (labels, status): a sender may not read the record it feeds."""
    first = post(client, "ldl-ses-martin.xml").json
    again = post(client, "ldl-ses-martin.xml", {**XML, **bearer("system", sub="another-feed")})
    assert again.status_code == 200 and again.json["resourceType"] == "OperationOutcome"
    assert again.headers["Location"].endswith(f"/DocumentReference/{first['id']}")
    assert "securityLabel" not in again.get_data(as_text=True)
    assert counts(database[0])["DocumentReference"] == 1


def test_a_cda_sent_alone_is_registered_in_a_submission_set_of_its_own(client, database, bearer):
    """As ITI-105's publication is: XDS puts each document in the SubmissionSet that brought it, and
    ITI-66 found a record's MDM and ITI-65 submissions, never its documents sent to /cda. The
    SubmissionSet names its sender, and is hidden from whoever its document is hidden from."""
    from gateway.mapping import codes
    from gateway.services.consents import decision

    feed = bearer("system", sub="lps-cabinet-42", name="LPS du cabinet")
    first = post(client, "cr-biologie-martin.xml", {**XML, **feed})
    assert first.status_code == 201, first.json
    reference = f"DocumentReference/{first.json['id']}"
    attend_all(database[0])
    found = client.get("/fhir/List", query_string={"patient.identifier": MARTIN, "code": "submissionset"}).json
    assert found["total"] == 1
    listed = found["entry"][0]["resource"]
    assert [entry["item"]["reference"] for entry in listed["entry"]] == [reference]
    assert listed["contained"] == [{"resourceType": "Device", "id": "source", "deviceName": [
        {"name": "LPS du cabinet", "type": "user-friendly-name"}]}]
    assert {"url": "https://profiles.ihe.net/ITI/MHD/StructureDefinition/ihe-sourceId", "valueIdentifier": {
        "system": "urn:dmp-gateway:submitter", "value": "lps-cabinet-42"}} in listed["extension"]
    assert client.get("/fhir/List", query_string={"item": reference}).json["total"] == 1
    if profiles.available():
        checked = profiles.Collected()
        checked.add(listed)
        assert not checked.errors(), "\n".join(checked.errors())
    # Sent again: nothing new, no second SubmissionSet.
    assert post(client, "cr-biologie-martin.xml", {**XML, **feed}).status_code == 200
    assert counts(database[0])["List"] == 1
    # Masked from professionals by the patient: an authorised one finds neither.
    martin, internist = bearer("patient", patient=MARTIN.split("|")[1]), bearer("doctor", sub="899900000012")
    assert client.post("/fhir/Consent", data=json.dumps(decision("professional", "permit", "899900000012")),
                       headers={**FHIR, **martin}).status_code == 201
    assert client.get("/fhir/List", query_string={"item": reference}, headers=internist).json["total"] == 1
    mask = [{"op": "add", "path": "/securityLabel/-",
             "value": {"coding": [{"system": codes.VISIBILITY_SYSTEM, "code": "MASQUE_PS"}]}}]
    assert client.patch(f"/fhir/{reference}", data=json.dumps(mask), headers={
        "Content-Type": "application/json-patch+json", **martin}).status_code == 200
    assert client.get("/fhir/List", query_string={"item": reference}, headers=internist).json["total"] == 0


def test_creating_a_patient_checks_the_ins_and_names_no_existing_record(client):
    patient = {"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10",
                                                          "value": "185067511204555"}]}
    bad = client.post("/fhir/Patient", data=json.dumps(patient), headers=FHIR)
    assert bad.status_code == 422 and "INS" in bad.json["issue"][0]["diagnostics"]
    patient["identifier"][0]["value"] = "185067511204554"
    created = client.post("/fhir/Patient", data=json.dumps(patient), headers=FHIR)
    assert created.status_code == 201
    again = client.post("/fhir/Patient", data=json.dumps(patient), headers=FHIR)
    assert again.status_code == 409 and created.json["id"] not in again.get_data(as_text=True)


def test_a_registered_resource_keeps_the_profile_claims_the_gateway_checks(client):
    """FHIR's own profile of the type, which the gateway checks, is kept as claimed; FR Core's,
    which it does not check, are not kept: FR Core's example Patient without the identity
    reliability its INS profile requires was kept claiming that profile, and failed the official
    check (found by the fuzz). A profile no definition served here gives is refused, as before."""
    import profiles
    from conftest import ROOT

    example = ROOT.parent / "shared" / "fhir-definitions" / "frcore" / "package" / "example" / \
        "Patient-ExampleFRCorePatient001.json"
    if not example.exists():
        pytest.skip(f"FR Core's examples are not present at {example.parent}")
    patient = json.loads(example.read_text())
    patient["identifier"][0]["value"] = "185067511204554"   # its own INS has a wrong key
    patient["extension"] = [e for e in patient["extension"] if not e["url"].endswith("-identity-reliability")]
    assert patient["meta"]["profile"] == ["https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-patient-ins"]
    kept = client.post("/fhir/Patient", data=json.dumps(patient), headers=FHIR)
    assert kept.status_code == 201, kept.data[:300]
    assert "profile" not in kept.json["meta"]
    base = "http://hl7.org/fhir/StructureDefinition/Practitioner"
    based = {"resourceType": "Practitioner", "meta": {"profile": [base]},
             "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.1", "value": "899900000999"}]}
    based = client.post("/fhir/Practitioner", data=json.dumps(based), headers=FHIR)
    assert based.json["meta"]["profile"] == [base]
    unknown = {"resourceType": "Practitioner", "meta": {"profile": [base.replace("Practitioner", "x")]}}
    assert client.post("/fhir/Practitioner", data=json.dumps(unknown), headers=FHIR).status_code == 422
    checked = profiles.Collected()
    checked.add(kept.json)
    checked.add(based.json)
    if profiles.available():
        assert not checked.errors()


def test_different_bytes_under_the_same_id_are_refused(client, database):
    post(client, "ldl-ses-martin.xml")
    changed = sample("ldl-ses-martin.xml").replace(b"Pneumopathie", b"Pneumonie")
    response = client.post("/cda", data=changed, headers=XML)
    assert response.status_code == 409
    assert response.json["issue"][0]["expression"] == ["/ClinicalDocument/id"]
    assert counts(database[0])["DocumentReference"] == 1


def test_patient_practitioner_organization_are_not_duplicated(client, database):
    post(client, "ldl-ses-martin.xml")
    post(client, "cr-biologie-martin.xml")
    post(client, "cr-hospitalisation-lefevre.xml")
    found = counts(database[0])
    assert found["Patient"] == 2
    # internist (twice), biologist, GP is not an author: 2 practitioners
    assert found["Practitioner"] == 2
    assert found["Organization"] == 2


def test_replacement_supersedes_previous_version(client, database, bearer):
    v1 = post(client, "cr-imagerie-irm-lefevre.xml").json
    v2 = post(client, "cr-imagerie-irm-lefevre-v2.xml", {**XML, **bearer("doctor", sub=RADIOLOGIST)}).json
    attend_all(database[0])
    assert v2["relatesTo"] == [{"code": "replaces", "target": {"reference": f"DocumentReference/{v1['id']}"}}]
    old = client.get(f"/fhir/DocumentReference/{v1['id']}").json
    assert old["status"] == "superseded" and old["meta"]["versionId"] == "2"
    history = client.get(f"/fhir/DocumentReference/{v1['id']}/_history").json
    assert [e["resource"]["status"] for e in history["entry"]] == ["superseded", "current"]
    assert client.get(f"/fhir/DocumentReference/{v1['id']}/_history/1").json["status"] == "current"
    assert lefevre_current(client) == [v2["id"]]
    # replacing the superseded version again is refused
    again = sample("cr-imagerie-irm-lefevre-v2.xml").replace(b"1.2.250.1.213.1.1.9.2.4.2", b"1.2.250.1.213.1.1.9.2.4.3")
    assert client.post("/cda", data=again, headers={**XML, **bearer("doctor", sub=RADIOLOGIST)}).status_code == 409


@pytest.mark.parametrize("name, status, expression", [
    ("bad-ins-key.xml", 422, "/ClinicalDocument/recordTarget/patientRole/id[@root='1.2.250.1.213.1.4.10']"),
    ("missing-author.xml", 422, "/ClinicalDocument/author"),
    ("type-outside-dmp.xml", 422, "/ClinicalDocument/code/@code"),
    ("not-a-clinical-document.xml", 422, "/section"),
    ("unparseable.xml", 400, "/"),
    ("external-entity.xml", 400, "/"),
])
def test_refusals_are_operation_outcomes_and_store_nothing_but_the_raw_input(client, database, name, status, expression):
    response = post(client, name)
    assert response.status_code == status
    issue = response.json["issue"][0]
    assert issue["severity"] == "error" and issue["expression"] == [expression] and issue["diagnostics"]
    assert counts(database[0]) == {}
    with database[0].connect() as conn:
        row = conn.execute(select(raw_inputs.c.status, blobs.c.data.label("body"), raw_inputs.c.outcome).join(
            blobs, blobs.c.sha256 == raw_inputs.c.sha256)).one()
    assert row.status == "refused" and bytes(row.body) == sample(name) and expression in row.outcome


def test_too_large_is_413_and_its_first_bytes_are_kept_refused(client, settings, database):
    """As /hl7v2 and `gateway ingest` keep an oversized input's first bytes: operators see what was
    sent and by whom. Past twice the limit, nothing is read."""
    big = b"<x>" + b"a" * (settings.max_document_bytes + 10) + b"</x>"
    refused = client.post("/cda", data=big, headers=XML)
    assert refused.status_code == 413 and refused.json["issue"][0]["code"] == "too-costly"
    assert f"document is {len(big)} bytes, above the limit of {settings.max_document_bytes} bytes; only its " \
        "first 65536 bytes were kept" == refused.json["issue"][0]["diagnostics"]
    huge = b"<x>" + b"a" * (2 * settings.max_document_bytes) + b"</x>"
    assert client.post("/cda", data=huge, headers=XML).status_code == 413
    with database[0].connect() as conn:
        row = conn.execute(select(raw_inputs.c.status, raw_inputs.c.channel, blobs.c.data.label("body")).join(
            blobs, blobs.c.sha256 == raw_inputs.c.sha256)).one()
    assert row.status == "refused" and row.channel == "cda" and bytes(row.body) == big[:65536]


def test_internal_failure_leaves_nothing_half_stored(client, database, monkeypatch):
    from gateway.storage import repository

    def broken(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(repository.UnitOfWork, "claim_identifier", broken)
    response = post(client, "ldl-ses-martin.xml")
    assert response.status_code == 500 and response.json["resourceType"] == "OperationOutcome"
    assert counts(database[0]) == {}
    with database[0].connect() as conn:
        assert conn.execute(select(raw_inputs.c.status)).scalar_one() == "failed"


def unreachable_once_kept(monkeypatch) -> None:
    """The database goes away once the raw copy is kept: the unit of work's first look-up fails."""
    from sqlalchemy.exc import OperationalError

    from gateway.storage import repository

    def unreachable(self, *args, **kwargs):
        raise OperationalError("INSERT", {}, Exception("connection refused"))

    monkeypatch.setattr(repository.UnitOfWork, "claim_identifier", unreachable)


def test_an_unavailable_database_answers_503_with_retry_after(client, database, monkeypatch):
    """A database that could not be reached is passing: the client is told to try again, not that
    the server failed; the raw copy, kept before the failure, is marked failed."""
    unreachable_once_kept(monkeypatch)
    response = post(client, "ldl-ses-martin.xml")
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert response.json["issue"][0]["code"] == "transient"
    assert counts(database[0]) == {}
    with database[0].connect() as conn:
        assert conn.execute(select(raw_inputs.c.status)).scalar_one() == "failed"


def raw_statuses(engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(raw_inputs.c.status).order_by(raw_inputs.c.id)).scalars())


@pytest.mark.parametrize("left", ["failed", "received"])
def test_a_document_sent_again_after_a_failure_takes_up_its_unanswered_copy(client, database, monkeypatch, left):
    """The copy of an attempt that failed records how the document ended once it is sent again;
    "received": the database went away before the failure could be recorded."""
    unreachable_once_kept(monkeypatch)
    assert post(client, "ldl-ses-martin.xml").status_code == 503
    monkeypatch.undo()
    with database[0].begin() as conn:
        conn.execute(update(raw_inputs).values(status=left))
    assert post(client, "ldl-ses-martin.xml").status_code == 201
    assert raw_statuses(database[0]) == ["processed"]
    # Answered, it is not taken up again: the next copy is kept, and found a duplicate.
    assert post(client, "ldl-ses-martin.xml").status_code == 200
    assert raw_statuses(database[0]) == ["processed", "duplicate"]


@pytest.mark.parametrize("lost", [1, 2])
def test_an_unanswered_copy_taken_by_another_attempt_first_is_kept_again(client, database, monkeypatch, lost):
    """Two attempts at one document take up its unanswered copy (a client sent it again while its
    first retry was at work): the one that claims it second is kept as a copy of its own, and
    processed. lost=2: a third attempt took up that copy of its own and claimed it first in turn
    (eight uploads of one document at once): the second loss was a 500."""
    from gateway.storage import repository

    unreachable_once_kept(monkeypatch)
    assert post(client, "ldl-ses-martin.xml").status_code == 503
    monkeypatch.undo()
    claim, claimed = repository.UnitOfWork.claim_raw, []

    def claimed_first_by_another(self, raw_id):
        claimed.append(raw_id)
        return claim(self, raw_id) if len(claimed) > lost else False

    monkeypatch.setattr(repository.UnitOfWork, "claim_raw", claimed_first_by_another)
    response = post(client, "ldl-ses-martin.xml")
    assert response.status_code == 201, response.json
    assert len(claimed) == lost + 1 and len(set(claimed)) == lost + 1
    # The copies lost to the other attempts are theirs to answer (here, no one's).
    assert raw_statuses(database[0]) == ["failed", *["received"] * (lost - 1), "processed"]
    assert counts(database[0])["DocumentReference"] == 1


def test_concurrent_uploads_of_one_document_store_it_once(live_server, database, bearer):
    from concurrent.futures import ThreadPoolExecutor

    import requests

    data = sample("cr-operatoire-garnier.xml")

    def upload(_):
        return requests.post(f"{live_server.public_base_url}/cda", data=data, headers={**XML, **bearer("doctor", sub=GP)},
                             timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(upload, range(8)))
    assert sorted(statuses) == [200] * 7 + [201]
    assert counts(database[0]) == {"DocumentReference": 1, "Binary": 1, "Patient": 1, "Practitioner": 1,
                                   "Organization": 1, "List": 1}


def test_a_pdf_submitted_after_the_cda_that_replaces_it_is_registered_superseded(client, database, bearer):
    """The new version of the MRI report (a CDA whose parent is unknown here) arrives first; then its
    first version, a PDF published through ITI-105 under the unique id the CDA names. The record
    shows one current version."""
    v2 = post(client, "cr-imagerie-irm-lefevre-v2.xml", {**XML, **bearer("doctor", sub=RADIOLOGIST)}).json
    assert v2["relatesTo"][0]["target"] == {
        "identifier": {"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.250.1.213.1.1.9.2.4.1"}}
    v1 = client.post("/fhir/DocumentReference", headers={**FHIR, **bearer("doctor", sub=RADIOLOGIST)}, data=json.dumps({
        "resourceType": "DocumentReference",
        "contained": [{"resourceType": "Practitioner", "id": "author",
                       "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.1", "value": RADIOLOGIST}]}],
        "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.250.1.213.1.1.9.2.4.1"},
        "status": "current",
        "type": {"coding": [{"system": "http://loinc.org", "code": "18748-4"}]},
        "subject": {"reference": f"Patient?identifier={LEFEVRE}"},
        "author": [{"reference": "#author"}],
        "content": [{"attachment": {"contentType": "application/pdf",
                                    "data": base64.b64encode(b"%PDF-1.4\n%%EOF\n").decode()}}]}))
    assert v1.status_code == 201, v1.json
    attend_all(database[0])
    assert lefevre_current(client) == [v2["id"]]
    assert client.get(f"/fhir/DocumentReference/{v1.json['id']}").json["status"] == "superseded"


def test_two_replacements_of_a_version_never_received_are_both_kept(client, database, bearer):
    """Two new versions name one first version that never arrived (as the ANS CR-IMG examples, N1
    and N3, do): neither names the other, so both are registered and stay current (README,
    "Versions"); the first version, when it arrives, is superseded."""
    radiologist = {**XML, **bearer("doctor", sub=RADIOLOGIST)}
    v2 = post(client, "cr-imagerie-irm-lefevre-v2.xml", radiologist)
    other_v2 = sample("cr-imagerie-irm-lefevre-v2.xml").replace(b"1.2.250.1.213.1.1.9.2.4.2", b"1.2.250.1.213.1.1.9.2.4.3")
    again = client.post("/cda", data=other_v2, headers=radiologist)
    assert v2.status_code == 201 and again.status_code == 201, again.json
    v1 = post(client, "cr-imagerie-irm-lefevre.xml", radiologist)
    assert v1.status_code == 201
    attend_all(database[0])
    assert sorted(lefevre_current(client)) == sorted([v2.json["id"], again.json["id"]])
    assert client.get(f"/fhir/DocumentReference/{v1.json['id']}").json["status"] == "superseded"


def test_a_first_version_sent_while_another_gateway_stores_its_replacement_is_registered_superseded(
        client, database, backend, settings, bearer, monkeypatch):
    """PostgreSQL, two gateways: the new version is being stored by one (its transaction open, its
    parent awaited), when the first version reaches the other. That one waits for the first to
    commit, then finds the replacement, as it would have a moment later."""
    if backend == "sqlite":
        pytest.skip("SQLite has one writer: the two transactions cannot overlap")
    from gateway.app import create_app
    from gateway.storage.database import make_engine
    from gateway.storage.repository import UnitOfWork

    awaiting, release = threading.Event(), threading.Event()
    await_parent = UnitOfWork.await_parent

    def await_parent_then_hold(self, *args):
        await_parent(self, *args)
        awaiting.set()
        assert release.wait(60)

    radiologist = {**XML, **bearer("doctor", sub=RADIOLOGIST)}
    # The patient and the authors are known already (another report): neither transaction creates them.
    earlier = sample("cr-imagerie-irm-lefevre.xml").replace(b"1.2.250.1.213.1.1.9.2.4.1", b"1.2.250.1.213.1.1.9.2.4.9")
    assert client.post("/cda", data=earlier, headers=radiologist).status_code == 201
    monkeypatch.setattr(UnitOfWork, "await_parent", await_parent_then_hold)
    other_engine = make_engine(database[1])
    other_gateway = create_app(settings, other_engine).test_client()
    answers = {}

    def send(gateway, name: str, version: str):
        return threading.Thread(target=lambda: answers.update({version: post(gateway, name, radiologist)}))

    new_version = send(client, "cr-imagerie-irm-lefevre-v2.xml", "v2")
    first_version = send(other_gateway, "cr-imagerie-irm-lefevre.xml", "v1")
    new_version.start()
    try:
        assert awaiting.wait(60)
        first_version.start()
        deadline, waiting = time.monotonic() + 60, 0
        while not waiting and first_version.is_alive() and time.monotonic() < deadline:
            with database[0].connect() as conn:
                waiting = conn.execute(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                            "AND NOT granted")).scalar_one()
            first_version.join(0.01)
        assert waiting and first_version.is_alive()
    finally:
        release.set()
        new_version.join(60)
        if first_version.ident:
            first_version.join(60)
        other_engine.dispose()
    assert answers["v2"].status_code == 201 and answers["v1"].status_code == 201, answers
    attend_all(database[0])
    assert client.get(f"/fhir/DocumentReference/{answers['v1'].json['id']}").json["status"] == "superseded"
    assert client.get(f"/fhir/DocumentReference/{answers['v2'].json['id']}").json["status"] == "current"


def test_only_a_producer_of_a_document_replaces_it(client, database, bearer):
    """A replacement is the author's (or their organisation's): anyone else who may feed is refused,
    and a replacement naming another patient's document answers as one naming nothing registered."""
    v1 = post(client, "cr-imagerie-irm-lefevre.xml").json
    refused = post(client, "cr-imagerie-irm-lefevre-v2.xml", {**XML, **bearer("doctor", sub="899900000020")})
    assert refused.status_code == 403 and "author" in refused.json["issue"][0]["diagnostics"]
    other_org = bearer("doctor", sub="899900000099", org="990000018")
    assert post(client, "cr-imagerie-irm-lefevre-v2.xml", {**XML, **other_org}).status_code == 403
    own_org = bearer("doctor", sub="899900000099", org="990000034")   # the imaging practice's FINESS
    assert post(client, "cr-imagerie-irm-lefevre-v2.xml", {**XML, **own_org}).status_code == 201
    attend_all(database[0])
    assert client.get(f"/fhir/DocumentReference/{v1['id']}").json["status"] == "superseded"
    # Another patient's document: the same answer as a document never registered.
    other = sample("cr-imagerie-irm-lefevre-v2.xml").replace(b"292086938701277", b"185067511204554") \
        .replace(b'extension="900000002"', b'extension="900000001"') \
        .replace(b"1.2.250.1.213.1.1.9.2.4.2", b"1.2.250.1.213.1.1.9.2.4.3")
    attacked = client.post("/cda", data=other, headers={**XML, **bearer("doctor", sub=RADIOLOGIST)})
    assert attacked.status_code == 422
    assert "not a registered document of this patient" in attacked.json["issue"][0]["diagnostics"]
    assert "1.2.250.1.213.1.1.9.2.4.1" not in attacked.get_data(as_text=True)


def test_a_header_listing_more_than_100_of_one_element_is_refused_before_any_work(client, database):
    """Within the document's limit, a header could list 40,000 authors, each a contained resource
    to map, validate and index: 9,000 took 13.6 s and 360 MB."""
    base = sample("ldl-ses-martin.xml").decode()
    start, end = base.index("  <author>"), base.index("</author>\n") + len("</author>\n")
    author = base[start:end]

    def with_authors(count: int, unique_id: str) -> bytes:
        authors = "".join(author.replace("899900000012", f"8999{n:08d}") for n in range(count))
        return (base[:start] + authors + base[end:]).replace(
            '<id root="1.2.250.1.213.1.1.9.2.1.1"/>', f'<id root="{unique_id}"/>', 1).encode()

    assert client.post("/cda", data=with_authors(100, "1.2.250.1.213.1.1.9.2.1.100"), headers=XML).status_code == 201
    refused = client.post("/cda", data=with_authors(101, "1.2.250.1.213.1.1.9.2.1.101"), headers=XML)
    assert refused.status_code == 422 and refused.json["issue"][0]["code"] == "too-costly"
    assert refused.json["issue"][0]["diagnostics"].startswith("ClinicalDocument/author is repeated 101 times, over")
    assert refused.json["issue"][0]["expression"] == ["/ClinicalDocument/author"]
    ipp = '<id root="1.2.250.1.213.1.1.9.1001" extension="900000001"/>'
    many_ids = base.replace(ipp, ipp * 100, 1).encode()   # and the INS: 101
    assert "patientRole/id is repeated 101 times" in client.post("/cda", data=many_ids, headers=XML).data.decode()
    with database[0].connect() as conn:
        assert conn.execute(select(raw_inputs.c.status).order_by(raw_inputs.c.id)).scalars().all() == [
            "processed", "refused", "refused"]


def _doubled(after: str, added: str):
    def change(cda: str) -> str:
        assert after in cda
        return cda.replace(after, after + added, 1)
    return change


def _second_patient(cda: str) -> str:
    start, end = cda.index("  <recordTarget>"), cda.index("</recordTarget>\n") + len("</recordTarget>\n")
    return cda[:end] + cda[start:end].replace("185067511204554", "292086938701277") + cda[end:]


@pytest.mark.parametrize("change, expression", [
    (_second_patient, "/ClinicalDocument/recordTarget/patientRole"),
    (_doubled('<confidentialityCode code="N" codeSystem="2.16.840.1.113883.5.25"/>',
              '<confidentialityCode code="R" codeSystem="2.16.840.1.113883.5.25"/>'), "/ClinicalDocument/confidentialityCode"),
    (_doubled('<id root="1.2.250.1.213.1.1.9.2.7.1"/>', '<id root="1.2.250.1.213.1.1.9.2.7.2"/>'), "/ClinicalDocument/id"),
    (_doubled('<birthTime value="19850612"/>', '<birthTime value="19850613"/>'),
     "/ClinicalDocument//patient/birthTime"),
], ids=["recordTarget", "confidentialityCode", "id", "birthTime"])
def test_a_header_element_given_twice_where_cda_holds_one_is_refused(client, database, change, expression):
    """Only the first was read: a second patient, or a restricted confidentiality after a normal
    one, ignored, and the document registered with a 201."""
    refused = client.post("/cda", data=change(sample("cr-biologie-martin.xml").decode()).encode(), headers=XML)
    assert refused.status_code == 422, refused.data[:300]
    assert refused.json["issue"][0]["expression"] == [expression]
    assert "given 2 times, where a CDA header holds one" in refused.json["issue"][0]["diagnostics"]
    assert counts(database[0]) == {}


@pytest.mark.parametrize("pattern, replacement, expression", [
    (r'<languageCode code="fr-FR"/>', "", "/ClinicalDocument/languageCode"),
    (r'<code code="SA25"[^>]*/>', "", "/ClinicalDocument/componentOf/encompassingEncounter/location/healthCareFacility/code"),
    (r"<standardIndustryClassCode[^>]*/>", "", "/ClinicalDocument/documentationOf/serviceEvent/performer/assignedEntity/"
                                              "representedOrganization/standardIndustryClassCode"),
    (r'<effectiveTime><low (value="20260303071500\+0100"/>)</effectiveTime>', r"<effectiveTime><high \1</effectiveTime>",
     "/ClinicalDocument/documentationOf[1]/serviceEvent/effectiveTime/low"),
], ids=["languageCode", "facility type", "practice setting", "event end alone"])
def test_a_header_without_what_every_document_reference_holds_is_refused(client, database, pattern, replacement,
                                                                          expression):
    """The CI-SIS header requires them, and PDSm and MHD require what they become (the attachment's
    language, the context's facility type, practice setting and period start): such a document was
    registered, and every read of it failed the official check (found by test_mutated_cda_documents)."""
    cda = sample("cr-biologie-martin.xml").decode()
    changed = re.sub(pattern, replacement, cda)
    assert changed != cda
    refused = client.post("/cda", data=changed.encode(), headers=XML)
    assert refused.status_code == 422, refused.data[:300]
    assert refused.json["issue"][0]["expression"] == [expression]
    assert counts(database[0]) == {}


@pytest.mark.parametrize("service_event_time, period", [
    ('<effectiveTime><low value="20260303071500+0100"/></effectiveTime>', {"start": "2026-03-03T07:15:00+01:00"}),
    ("", {"start": "2026-03-03T08:00:00+01:00"}),
], ids=["with the service event's time", "without it"])
def test_an_encounter_that_ends_without_a_start_is_registered_as_the_ci_sis_allows(client, service_event_time,
                                                                                    period):
    """The CI-SIS gives the encounter's low and high 0..1 each, and 20 of the 94 examples the ANS
    publishes (ANEST-CR-CPA, AVC, DLU, eP-MED-DM, OBP, OPH, VSM…) end it without a start: each was
    refused 422 "the encounter's time has an end (high) and no start (low)". The period is the
    service event's; without one, the document's date, as when the header gives no time at all
    (a period's end alone fails PDSm)."""
    cda = sample("cr-biologie-martin.xml").decode()
    event = '      <effectiveTime><low value="20260303071500+0100"/></effectiveTime>\n'
    encounter = '    <encompassingEncounter>\n      <effectiveTime><low value="20260303071500+0100"/></effectiveTime>'
    assert event in cda and encounter in cda
    cda = cda.replace(encounter, encounter.replace("<low ", "<high ")).replace(
        event, f"      {service_event_time}\n" if service_event_time else "")
    registered = client.post("/cda", data=cda.encode(), headers=XML)
    assert registered.status_code == 201, registered.data[:300]
    assert registered.json["context"]["period"] == period
    checked = profiles.Collected()
    checked.add(registered.json)
    if profiles.available():
        assert not checked.errors()


ANALYSER = ('<assignedAuthor><id root="1.2.250.1.71.4.2.1" extension="3990000042/AUTOMATE-7"/>'
            '<code code="G15_10/SM05" displayName="Médecin - Biologie médicale (SM)"'
            ' codeSystem="1.2.250.1.213.1.1.4.5"/>'
            '<assignedAuthoringDevice><manufacturerModelName>.</manufacturerModelName>'
            '<softwareName>Automate de biochimie</softwareName></assignedAuthoringDevice>')


def with_an_analyser_as_author(cda: str) -> str:
    start = cda.index("<assignedAuthor>")
    end = cda.index("</assignedPerson>", start) + len("</assignedPerson>")
    return cda[:start] + ANALYSER + cda[end:]


def test_an_author_that_is_a_device_is_a_device_not_a_professional(client, bearer):
    """An author the header gives as assignedAuthoringDevice (the health insurance's feed of
    reimbursements in the ANS's CNAM-HR examples, a lab's analyser in BIO-CR-BIO's TSH_2) was a
    contained Practitioner without a name, and the directory learnt the software as a professional
    (`Practitioner?identifier=` found it, nameless). It is a contained Device, which PDSm's author
    allows, named by its software, acting for its organisation; it still produced the document, and
    its new version replaces it."""
    cda = with_an_analyser_as_author(sample("cr-biologie-martin.xml").decode())
    laboratory = {**XML, **bearer("system", sub="SIL du laboratoire")}   # its feed, which sends both versions
    registered = client.post("/cda", data=cda.encode(), headers=laboratory)
    assert registered.status_code == 201, registered.data[:300]
    document = registered.json
    contained = {c["id"]: c for c in document["contained"]}
    device = contained[document["author"][0]["reference"][1:]]
    assert device["resourceType"] == "Device"
    assert device["deviceName"] == [{"name": "Automate de biochimie", "type": "user-friendly-name"}]
    assert device["identifier"] == [{"system": "urn:oid:1.2.250.1.71.4.2.1", "value": "3990000042/AUTOMATE-7"}]
    assert contained[device["owner"]["reference"][1:]]["resourceType"] == "Organization"
    found = client.get("/fhir/Practitioner?identifier=urn:oid:1.2.250.1.71.4.2.1|3990000042/AUTOMATE-7",
                       headers=bearer("doctor", sub=GP))
    assert found.status_code == 200 and found.json["total"] == 0
    checked = profiles.Collected()
    checked.add(document)
    if profiles.available():
        assert not checked.errors()
    # Its new version, by the same analyser, replaces it: the device is who produced it (its
    # organisation, here, another one: the analyser alone names who produced both).
    replacement = cda.replace('<id root="1.2.250.1.213.1.1.9.2.7.1"/>', '<id root="1.2.250.1.213.1.1.9.2.7.9"/>', 1)
    replacement = replacement.replace("1990000042", "1990000059")
    replacement = replacement.replace("<componentOf>", '<relatedDocument typeCode="RPLC"><parentDocument>'
                                      '<id root="1.2.250.1.213.1.1.9.2.7.1"/></parentDocument></relatedDocument>'
                                      "<componentOf>", 1)
    replaced = client.post("/cda", data=replacement.encode(), headers=laboratory)
    assert replaced.status_code == 201, replaced.data[:400]
    assert replaced.json["relatesTo"][0]["code"] == "replaces"


@pytest.mark.parametrize("before, after, expression", [
    ('<assignedAuthor><id root="1.2.250.1.71.4.2.1"', '<assignedAuthor><id root="1.2.250.1.71.4.2 .1"',
     "/ClinicalDocument/author/assignedAuthor/id/@root"),
    ('<id root="1.2.250.1.213.1.1.9.1001" extension="900000001"/>', '<id root="1.2.250 .1.213.1.1.9.1001" extension="900000001"/>',
     "/ClinicalDocument/recordTarget/patientRole/id[2]/@root"),
    ('codeSystem="1.2.250.1.213.1.1.4.5"', 'codeSystem="1.2.250.1.213.1.1.4.5 "', None),   # around it: kept
    ('code="18719-5" codeSystem="2.16.840.1.113883.6.1"', 'code="18719-5" codeSystem="LOINC 2.16"',
     "/ClinicalDocument/documentationOf/serviceEvent/code/@codeSystem"),
], ids=["author root", "patient id root", "space around", "code system"])
def test_an_id_root_or_code_system_that_is_not_a_uid_is_refused(client, database, before, after, expression):
    """The gateway names a root or a code system by a URI (urn:oid:…): one holding a space was
    registered, and failed the official check. CDA R2 has them uids (an OID, a UUID or an RUID)."""
    cda = sample("cr-biologie-martin.xml").decode()
    assert before in cda
    answer = client.post("/cda", data=cda.replace(before, after).encode(), headers=XML)
    if expression is None:
        assert answer.status_code == 201, answer.data[:300]
        return
    assert answer.status_code == 422 and answer.json["issue"][0]["expression"] == [expression], answer.data[:300]
    assert "is not a uid" in answer.json["issue"][0]["diagnostics"]
    assert counts(database[0]) == {}


SPACED_INS = b'extension="1 85 06 75 112 045 54"'


def test_a_cda_naming_its_patient_by_the_ins_in_groups_is_found_by_the_ins(client, database):
    """An INS printed in groups ("1 85 06 75 112 045 54") is the patient's INS: it was checked
    without its spaces but kept with them in the Patient and the DocumentReference, where no search
    by the INS found them (0 of 1), and the next document naming the INS plainly went to the same
    record unseen."""
    spaced = sample("cr-biologie-martin.xml").replace(b'extension="185067511204554"', SPACED_INS)
    assert SPACED_INS in spaced
    created = client.post("/cda", data=spaced, headers=XML)
    assert created.status_code == 201, created.data[:300]
    assert post(client, "ldl-ses-martin.xml").status_code == 201
    attend_all(database[0])
    patients = client.get("/fhir/Patient", query_string={"identifier": MARTIN}).json
    assert patients["total"] == 1
    assert {i["value"] for i in patients["entry"][0]["resource"]["identifier"]} >= {"185067511204554"}
    found = client.get("/fhir/DocumentReference", query_string={"patient.identifier": MARTIN}).json
    assert found["total"] == 2
    assert "1 85 06" not in json.dumps(found)
    # So is a search naming the INS in groups.
    in_groups = MARTIN.replace("185067511204554", "1 85 06 75 112 045 54")
    assert client.get("/fhir/Patient", query_string={"identifier": in_groups}).json["total"] == 1
    assert client.get("/fhir/DocumentReference", query_string={"patient.identifier": in_groups}).json["total"] == 2
    # And without its system, with spaces or dots (it named nothing).
    for written in ("1 85 06 75 112 045 54", "1.85.06.75.112.045.54"):
        assert client.get("/fhir/Patient", query_string={"identifier": written}).json["total"] == 1
        assert client.get("/fhir/DocumentReference", query_string={"patient.identifier": written}).json["total"] == 2


def test_a_patient_registered_with_the_ins_in_groups_is_the_record_its_documents_go_to(client, database):
    patient = {"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10",
                                                          "value": "1 85 06 75 112 045 54"}]}
    created = client.post("/fhir/Patient", data=json.dumps(patient), headers=FHIR)
    assert created.status_code == 201, created.json
    assert created.json["identifier"][0]["value"] == "185067511204554"
    assert post(client, "cr-biologie-martin.xml").status_code == 201
    attend_all(database[0])
    found = client.get("/fhir/DocumentReference", query_string={"patient.identifier": MARTIN}).json
    assert found["total"] == 1
    assert found["entry"][0]["resource"]["subject"]["reference"] == f"Patient/{created.json['id']}"


@pytest.mark.parametrize("written", [b"", b' extension=""', b' extension="  "', b' extension="1.85"'])
def test_an_ins_without_a_value_is_refused_and_kept_naming_no_one(client, database, written):
    """The patient a refused document names is read from it as sent, for its record's destruction:
    an INS id without extension made that reading fail, and the document a 500."""
    cda = sample("cr-biologie-martin.xml").replace(b' extension="185067511204554"', written)
    refused = client.post("/cda", data=cda, headers=XML)
    assert refused.status_code == 422, refused.data[:300]
    assert "the INS is not valid" in refused.json["issue"][0]["diagnostics"]
    with database[0].connect() as conn:
        assert conn.execute(select(raw_inputs.c.status)).scalars().all() == ["refused"]


def test_a_custodian_whose_id_has_no_extension_is_refused_naming_it(client, database):
    """Found by the bounded fuzz: the directory finds an organisation by an id with its extension,
    and a custodian named by its root alone was taken, then its registration was a 500."""
    cda = sample("cr-biologie-martin.xml").replace(
        b'<representedCustodianOrganization>\n    <id root="1.2.250.1.71.4.2.2" extension="1990000042"/>',
        b'<representedCustodianOrganization>\n    <id root="1.2.250.1.71.4.2.2"/>')
    refused = client.post("/cda", data=cda, headers=XML)
    assert refused.status_code == 422, refused.data[:300]
    assert refused.json["issue"][0]["expression"] == [
        "/ClinicalDocument/custodian/assignedCustodian/representedCustodianOrganization/id"]


def another_person(cda: bytes, document_root: bytes, birth: bytes = b"19900101", gender: bytes = b"F") -> bytes:
    """Paul MARTIN's lab report, as if written about someone else under his INS: another name,
    birth date and sex, and the document's own id (a new document)."""
    return (cda.replace(b'<birthTime value="19850612"/>', b'<birthTime value="' + birth + b'"/>')
            .replace(b'administrativeGenderCode code="M"', b'administrativeGenderCode code="' + gender + b'"')
            .replace(b">MARTIN<", b">DURAND<").replace(b">PAUL<", b">JULIE<").replace(b"PAUL ANDRE", b"JULIE")
            .replace(b"1.2.250.1.213.1.1.9.2.7.1", document_root))


def test_a_document_whose_patient_is_not_the_one_registered_under_its_ins_is_refused(client, database, bearer):
    """A report about JULIE DURAND, a woman born in 1990, carrying Paul MARTIN's INS (mistyped, or
    the wrong patient picked), was filed in his record: his GP, the professionals he authorised and
    Paul himself read her results, and her own record had none. Sex and birth date that contradict
    the identity registered under the INS refuse the document, on every transport, naming neither
    value; a name spelt otherwise, or a birth date given to the year, does not."""
    assert post(client, "ldl-ses-martin.xml").status_code == 201
    attend_all(database[0])
    martin = {"patient.identifier": MARTIN, "status": "current"}
    refused = client.post("/cda", data=another_person(sample("cr-biologie-martin.xml"), b"1.2.250.1.213.1.1.9.2.7.91"),
                          headers=XML)
    assert refused.status_code == 422, refused.json
    issue = refused.json["issue"][0]
    assert issue["expression"] == ["/ClinicalDocument/recordTarget/patientRole/patient"]
    assert "sex and birth date" in issue["diagnostics"] and "identitovigilance" in issue["diagnostics"]
    assert "1985" not in issue["diagnostics"] and "male" not in issue["diagnostics"]
    born_elsewhere = another_person(sample("cr-biologie-martin.xml"), b"1.2.250.1.213.1.1.9.2.7.92", gender=b"M")
    refused = client.post("/cda", data=born_elsewhere, headers=XML)
    assert refused.status_code == 422
    assert "the birth date this document states" in refused.json["issue"][0]["diagnostics"]
    assert client.get("/fhir/DocumentReference", query_string=martin).json["total"] == 1
    # An MDM^T02 carrying it is answered AE, the refusal at the OBX that carried the document.
    mdm = (b"MSH|^~\\&|DPI|CH-SAINT-AUBIN|DMP-GATEWAY|DMP|20260310170000||MDM^T02^MDM_T02|MDM-DURAND|P|2.6|||||FRA|"
           b"UNICODE UTF-8|||2.1^CISIS_CDA_HL7_V2\rEVN||20260310170000\rPID|1||185067511204554^^^ASIP-SANTE-INS-NIR&"
           b"1.2.250.1.213.1.4.10&ISO^INS||DURAND^JULIE^^^^^L||19900101|F\rPV1|1|O\rTXA|1|11502-2|TEXT|20260303080000"
           b"||||||||1.2.250.1.213.1.1.9.2.7.93|||||AU\rOBX|1|ED|11502-2^CR d'examens biologiques^LN||^text^XML^Base64^"
           + base64.b64encode(another_person(sample("cr-biologie-martin.xml"), b"1.2.250.1.213.1.1.9.2.7.93"))
           + b"||||||F\r")
    answer = client.post("/hl7v2", data=mdm, content_type="x-application/hl7-v2+er7",
                         headers=bearer("system", sub="hospital"))
    segments = [s.split("|") for s in answer.data.decode().strip("\r").split("\r")]
    assert segments[1][1] == "AE", segments
    error = next(s for s in segments if s[0] == "ERR")
    assert error[2].startswith("OBX^1^5") and error[3].startswith("205"), error
    assert "the identity registered" in error[8], error
    assert client.get("/fhir/DocumentReference", query_string=martin).json["total"] == 1
    # Traits that agree, however spelt, are his.
    same = (sample("cr-biologie-martin.xml").replace(b"PAUL ANDRE", b"PAUL")
            .replace(b'<birthTime value="19850612"/>', b'<birthTime value="1985"/>'))
    assert client.post("/cda", data=same, headers=XML).status_code == 201
    assert client.get("/fhir/DocumentReference", query_string=martin).json["total"] == 2


@pytest.mark.parametrize("content_type, data, format_code, bare", [
    ("application/pdf", b"%PDF-1.4\n%%EOF\n", "urn:ihe:iti:xds-sd:pdf:2008", "a bare PDF"),
    ("text/plain", b"Hello World", "urn:ihe:iti:xds-sd:text:2008", "not XML"),
], ids=["pdf", "text"])
def test_a_bare_document_declared_with_a_scanned_document_format_is_told_what_that_format_is(
        client, bearer, content_type, data, format_code, bare):
    """urn:ihe:iti:xds-sd:pdf:2008 is XDS-SD's: a PDF wrapped in a CDA (and :text:2008 a text). A
    client that published a bare PDF under it (the format "for a PDF", as it reads) was answered "CDA
    document: unparseable XML (line 1)", about a document it never meant as XML; IHE MHD's own example
    submissions send "Hello World" so. It is told what the format declares and how to describe the
    document; so described, it is registered."""
    assert post(client, "ldl-ses-martin.xml").status_code == 201
    pdf = {"resourceType": "DocumentReference", "status": "current",
           "contained": [{"resourceType": "Practitioner", "id": "author",
                          "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.1", "value": GP}]}],
           "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.250.1.213.1.1.9.2.7.95"},
           "type": {"coding": [{"system": "http://loinc.org", "code": "11488-4"}]},
           "subject": {"reference": f"Patient?identifier={MARTIN}"}, "author": [{"reference": "#author"}],
           "content": [{"attachment": {"contentType": content_type, "data": base64.b64encode(data).decode()},
                        "format": {"system": "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode",
                                   "code": format_code}}]}
    gp = {**FHIR, **bearer("doctor", sub=GP)}
    refused = client.post("/fhir/DocumentReference", headers=gp, data=json.dumps(pdf))
    assert refused.status_code == 422, refused.json
    issue = refused.json["issue"][0]
    assert issue["expression"] == ["DocumentReference.content[0]"], issue
    assert "wrapped in a CDA" in issue["diagnostics"] and "mimeTypeSufficient" in issue["diagnostics"], issue
    assert f"the data is {bare}" in issue["diagnostics"] and f"contentType {content_type}" in issue["diagnostics"]
    pdf["content"][0]["format"]["code"] = "urn:ihe:iti:xds:2017:mimeTypeSufficient"
    assert client.post("/fhir/DocumentReference", headers=gp, data=json.dumps(pdf)).status_code == 201
