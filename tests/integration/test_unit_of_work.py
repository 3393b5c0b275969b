"""A unit of work runs no statement a new resource does not need: a resource saved under an id the
unit minted reads no previous version, a Consent's first version deletes no rules, and an
identifier is looked up once. What it skips would have been found empty: the next version of each
reads its previous one and replaces its rules, as before."""
import json
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from conftest import recorded_validations
from gateway.access import AccessContext
from gateway.access.rules import MASQUE_PS
from gateway.access.writes import Write
from gateway.mapping import codes
from gateway.mapping import document as mapping
from gateway.mapping.hl7v2 import ZFA_SYSTEM
from gateway.storage import statements as sql
from gateway.storage.database import read_connection
from gateway.storage.repository import LOOK_UP_TOGETHER, DuplicateIdentifier, Repository
from gateway.storage.schema import access_rules, resource_versions, resources

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
KEY = ("Consent", "urn:test:consent-key", "p1")


def consultation(consent_id: str, effect: str) -> dict:
    return {"resourceType": "Consent", "id": consent_id, "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                  "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": ZFA_SYSTEM, "code": "consultation"}]}],
            "patient": {"reference": "Patient/p1"}, "provision": {"type": effect}}


@pytest.fixture
def run(monkeypatch) -> list:
    """The driver statements (storage/statements.py) run, in order."""
    statements = []
    execute = sql.Prebuilt.execute

    def recorded(self, conn, params):
        statements.append(self)
        return execute(self, conn, params)

    monkeypatch.setattr(sql.Prebuilt, "execute", recorded)
    return statements


def identifier_look_ups(run: list) -> list[str]:
    """The identifier look-ups among the statements run, in order: "one", or "N together"."""
    together = {sql.find_identifiers(count): f"{count} together" for count in range(2, LOOK_UP_TOGETHER + 1)}
    return [together.get(statement) or "one" for statement in run
            if statement is sql.FIND_IDENTIFIER or statement in together]


def rules(engine) -> list[tuple]:
    with read_connection(engine) as conn:
        return [tuple(row) for row in conn.execute(select(access_rules.c.consent_id, access_rules.c.effect))]


def test_a_resource_under_a_minted_id_reads_no_previous_version_and_a_first_consent_deletes_no_rules(database, run):
    engine = database[0]
    repo = Repository(engine, AccessContext.system("test"), "http://test")
    with repo.unit_of_work(Write.FEED) as uow:
        consent_id = uow.new_id()
        assert uow.find_by_identifier(*KEY) is None
        uow.claim_identifier(*KEY, consent_id)
        assert uow.find_by_identifier(*KEY) == consent_id
        first = uow.save(consultation(consent_id, "permit"), patient_id="p1")
        # Saved again in the same unit: the id is no longer new, and its first version is read.
        second = uow.save(consultation(consent_id, "deny"), patient_id="p1")

    assert (first.version, second.version) == (1, 2)
    assert run.count(sql.FIND_IDENTIFIER) == 1
    assert run.count(sql.INSERT_IDENTIFIER) == 1
    assert run.count(sql.PREVIOUS) == 1          # the second save's
    assert run.count(sql.DELETE_RULES) == 1      # the second version's: the first had none to delete
    assert rules(engine) == [(consent_id, "deny")]


def test_what_a_unit_skips_another_unit_still_finds(database, run):
    engine = database[0]
    repo = Repository(engine, AccessContext.system("test"), "http://test")
    with repo.unit_of_work(Write.FEED) as uow:
        consent_id = uow.new_id()
        uow.claim_identifier(*KEY, consent_id)
        uow.save(consultation(consent_id, "permit"), patient_id="p1")
    run.clear()
    with repo.unit_of_work(Write.FEED) as uow:
        assert uow.find_by_identifier(*KEY) == consent_id
        with pytest.raises(DuplicateIdentifier):
            uow.claim_identifier(*KEY, "another-consent")
        assert uow.save(consultation(consent_id, "deny"), patient_id="p1").version == 2
        uow.release_identifier(*KEY)
        assert uow.find_by_identifier(*KEY) is None

    assert run.count(sql.FIND_IDENTIFIER) == 1
    assert run.count(sql.PREVIOUS) == 1 and run.count(sql.DELETE_RULES) == 1
    assert rules(engine) == [(consent_id, "deny")]
    with repo.unit_of_work(Write.FEED) as uow:
        assert uow.find_by_identifier(*KEY) is None


def test_identifiers_looked_up_together_are_found_as_each_alone_finds_them(database, run):
    """One statement finds up to LOOK_UP_TOGETHER identifiers: the resource holding each, or none
    (exactly: another case is another identifier). The others, and those found before, are looked up
    as they are asked for, as before."""
    repo = Repository(database[0], AccessContext.system("test"), "http://test")
    held = [("Practitioner", "urn:oid:1.2.3", f"p{n}") for n in range(6)]
    with repo.unit_of_work(Write.FEED) as uow:
        for n, key in enumerate(held):
            uow.claim_identifier(*key, f"id{n}")
    others = [("Practitioner", "urn:oid:1.2.3", "P0"), ("Organization", "urn:oid:1.2.3", "p1"),
              ("Practitioner", "urn:oid:1.2.3.", "p2"), ("Practitioner", "urn:oid:1.2.3", "p3 "),
              ("Practitioner", "urn:oid:1.2.3", "p_"), ("Practitioner", "urn:oid:1.2.4", "p5")]
    keys = [key for pair in zip(held, others) for key in pair]
    assert len(keys) == 12 > LOOK_UP_TOGETHER
    run.clear()
    with repo.unit_of_work(Write.FEED) as uow:
        uow.look_up_identifiers(keys[:1] + keys)     # repeated: asked once
        found = [uow.find_by_identifier(*key) for key in keys]
        uow.look_up_identifiers(keys)                # all known now: no statement
    assert found == [value for n in range(6) for value in (f"id{n}", None)]
    assert run.count(sql.find_identifiers(LOOK_UP_TOGETHER)) == 1
    assert run.count(sql.FIND_IDENTIFIER) == len(keys) - LOOK_UP_TOGETHER
    assert len(run) == 1 + len(keys) - LOOK_UP_TOGETHER


def test_registering_a_document_looks_up_what_it_names_in_one_statement(database, run):
    """A document's own identifier, its patient's INS and IPP, its authors' and their organisations'
    and its custodian's were each a round trip on PostgreSQL: 0.6–1.5 ms of the gateway's CPU an
    MDM^T02 together (in-process, rounds alternated). The feeding consent is keyed by the record
    found, so it is looked up after. A second document of the same patient finds them in that
    statement: the patient is not made again."""
    from gateway.services import documents

    repo = Repository(database[0], AccessContext.system("test"), "http://test")
    looked_up = []
    for name in ("cr-imagerie-irm-lefevre.xml", "cr-hospitalisation-lefevre.xml"):
        run.clear()
        assert documents.ingest_cda(repo, (SAMPLES / "cda" / name).read_bytes(), max_bytes=1 << 22).created
        looked_up.append(identifier_look_ups(run))
    assert looked_up == [["5 together", "one"]] * 2, looked_up
    with read_connection(database[0]) as conn:
        made = conn.execute(select(resources.c.res_type, resources.c.res_id)).all()
    assert sorted(res_type for res_type, _ in made if res_type in ("Patient", "DocumentReference")) == [
        "DocumentReference", "DocumentReference", "Patient"]


def test_an_identity_feed_looks_up_its_patient_s_identifiers_in_one_statement_and_their_consents_in_another(
        database, run):
    """PID-3's identifiers (here an IPP and the INS), then the Consent of each kind the ZFA states,
    keyed by the record found: looked up one by one, each was a round trip on PostgreSQL. Sent
    again, the message finds them all there, and writes none of the Consents again."""
    from gateway.services import feeds

    repo = Repository(database[0], AccessContext.system("test"), "http://test")
    message = (SAMPLES / "hl7v2" / "adt-a01-martin.hl7").read_bytes()
    looked_up = []
    for control_id in (b"1", b"2"):
        run.clear()
        again = message.replace(b"|P|", b"-" + control_id + b"|P|", 1)
        assert feeds.receive(repo, again, channel="test", max_bytes=1 << 20).code == "AA"
        looked_up.append(identifier_look_ups(run))
    assert looked_up == [["2 together", "2 together"]] * 2, looked_up
    with read_connection(database[0]) as conn:
        versions = conn.execute(select(resources.c.version).where(resources.c.res_type == "Consent")).scalars().all()
    assert versions == [1, 1]


def test_a_new_resource_is_written_once_and_the_history_holds_the_versions_replaced(database):
    """A version's body goes to the history table only when a later version replaces it: a new
    resource (every AuditEvent, most documents) is one row. History and vread still give every
    version, with the method that wrote it."""
    engine = database[0]
    repo = Repository(engine, AccessContext.system("test"), "http://test")

    def archived() -> list[tuple]:
        with read_connection(engine) as conn:
            return [tuple(row) for row in conn.execute(
                select(resource_versions.c.res_type, resource_versions.c.version, resource_versions.c.method)
                .order_by(resource_versions.c.version))]

    def organization(res_id: str, name: str) -> dict:
        return {"resourceType": "Organization", "id": res_id, "name": name}

    with repo.unit_of_work(Write.FEED) as uow:
        res_id = uow.new_id()
        uow.save(organization(res_id, "first"))
    assert archived() == []   # neither the Organization nor its AuditEvent

    with repo.unit_of_work(Write.FEED) as uow:
        uow.save(organization(res_id, "second"), method="PATCH")
    with repo.unit_of_work(Write.FEED) as uow:
        uow.delete(uow.current("Organization", res_id))
    assert archived() == [("Organization", 1, "POST"), ("Organization", 2, "PATCH")]

    history, total = repo.history("Organization", res_id)
    assert [(stored.version, stored.deleted, method) for stored, method in history] == [
        (3, True, "DELETE"), (2, False, "PATCH"), (1, False, "POST")] and total == 3
    assert [method for _, method in repo.history("Organization", res_id, count=2)[0]] == ["DELETE", "PATCH"]
    assert [stored.version for stored, _ in repo.history("Organization", res_id, below=3)[0]] == [2, 1]
    assert [json.loads(repo.vread("Organization", res_id, v).body)["name"] for v in (1, 2)] == ["first", "second"]


def test_an_identity_feed_is_mapped_and_validated_before_its_write_transaction(database, monkeypatch):
    """The write path holds SQLite's write lock (and a PostgreSQL transaction) for the writes only:
    an ADT's Patient and Consents are built and validated before the group commit's batch opens, and
    the unit of work gives them their ids. They were validated inside it: 83 % of an ADT^A28's CPU
    ran under the lock, which serialised every writing process."""
    from gateway.services import feeds, patients

    validated = recorded_validations(monkeypatch, patients)
    repo = Repository(database[0], AccessContext.system("test"), "http://test")
    reply = feeds.receive(repo, (SAMPLES / "hl7v2" / "adt-a01-martin.hl7").read_bytes(), channel="test",
                           max_bytes=1 << 20)

    assert reply.code == "AA"
    assert sorted(validated) == [("Consent", False), ("Consent", False), ("Patient", False)]
    with read_connection(database[0]) as conn:
        stored = [(row.res_type, row.res_id, json.loads(row.body)) for row in conn.execute(
            select(resources.c.res_type, resources.c.res_id, resources.c.body)
            .where(resources.c.res_type != "AuditEvent"))]
    [patient_id] = [res_id for res_type, res_id, _ in stored if res_type == "Patient"]
    consents = [body for res_type, _, body in stored if res_type == "Consent"]
    assert len(consents) == 2 and mapping.UNSET_ID not in {res_id for _, res_id, _ in stored}
    assert all(c["patient"] == {"reference": f"Patient/{patient_id}"} for c in consents)
    assert all(body["id"] == res_id for _, res_id, body in stored)


def test_a_document_is_mapped_and_validated_before_its_write_transaction(database, monkeypatch):
    """An MDM^T02's DocumentReference and SubmissionSet are mapped and validated before the batch
    opens (under stand-in ids, which its unit of work replaces): only its Binary, a few fields the
    unit builds, and the patient, professionals and organisations it is the first to name (built
    from the ids their look-ups give) are validated inside. The SubmissionSet was validated inside,
    0.55 ms of an MDM^T02's CPU under the write lock. The message and its document are hashed before
    it too: a 20 MB document took the write lock for its hashes."""
    import hashlib

    from gateway.services import documents, feeds, patients
    from gateway.storage import commits

    validated, hashed_inside = recorded_validations(monkeypatch, documents, patients), []
    sha256 = hashlib.sha256

    def hashed(data=b"", **kwargs):
        if getattr(commits._batch_thread, "running", False):
            hashed_inside.append(len(data))
        return sha256(data, **kwargs)

    monkeypatch.setattr(hashlib, "sha256", hashed)
    repo = Repository(database[0], AccessContext.system("test"), "http://test")
    message = (SAMPLES / "hl7v2" / "mdm-1-t02-cr-imagerie-irm-lefevre.hl7").read_bytes()
    assert feeds.receive(repo, message, channel="test", max_bytes=1 << 22).code == "AA"

    outside = sorted(res_type for res_type, inside in validated if not inside)
    assert outside == ["DocumentReference", "List"]
    inside = {res_type for res_type, inside in validated if inside}
    assert inside == {"Binary", "Organization", "Patient", "Practitioner"}
    assert max(hashed_inside) < 8192   # the audit chain's links; not the 17 KB message nor its 12 KB CDA
    with read_connection(database[0]) as conn:
        [(docref_id, body)] = conn.execute(select(resources.c.res_id, resources.c.body)
                                           .where(resources.c.res_type == "DocumentReference")).all()
        [binary_id] = conn.execute(select(resources.c.res_id).where(resources.c.res_type == "Binary")).scalars()
        [patient_id] = conn.execute(select(resources.c.res_id).where(resources.c.res_type == "Patient")).scalars()
        [(list_id, list_body)] = conn.execute(select(resources.c.res_id, resources.c.body)
                                              .where(resources.c.res_type == "List")).all()
    submission_set = json.loads(list_body)
    assert submission_set["id"] == list_id and submission_set["identifier"][1]["value"] == f"urn:uuid:{list_id}"
    assert submission_set["subject"] == {"reference": f"Patient/{patient_id}"}
    assert submission_set["entry"] == [{"item": {"reference": f"DocumentReference/{docref_id}"}}]
    assert mapping.UNSET_ID not in list_body
    docref = json.loads(body)
    assert docref["id"] == docref_id and docref["identifier"][0]["value"] == f"urn:uuid:{docref_id}"
    assert docref["subject"] == {"reference": f"Patient/{patient_id}"}
    assert docref["content"][0]["attachment"]["url"] == f"http://test/fhir/Binary/{binary_id}"
    assert docref["custodian"]["reference"].startswith("Organization/") and mapping.UNSET_ID not in body


def test_a_cda_sent_alone_has_its_submission_set_validated_before_its_write_transaction(database, monkeypatch):
    """A CDA posted alone (POST /cda, `gateway ingest`) gets a SubmissionSet of its one document,
    built and validated before the batch opens under stand-in ids, as its DocumentReference is; its
    unit of work gives it the ids and the requester as its source."""
    from gateway.services import documents

    validated = recorded_validations(monkeypatch, documents)
    repo = Repository(database[0], AccessContext.system("hospital-feed"), "http://test")
    result = documents.ingest_cda(repo, (SAMPLES / "cda" / "cr-biologie-martin.xml").read_bytes(), max_bytes=1 << 22)

    assert result.created
    assert sorted(res_type for res_type, inside in validated if not inside) == ["DocumentReference", "List"]
    with read_connection(database[0]) as conn:
        [(list_id, body)] = conn.execute(select(resources.c.res_id, resources.c.body)
                                         .where(resources.c.res_type == "List")).all()
    submission_set, docref = json.loads(body), result.document_reference
    assert f"List/{list_id}" in result.produced and submission_set["id"] == list_id
    assert submission_set["identifier"][1]["value"] == f"urn:uuid:{submission_set['id']}"
    assert submission_set["subject"] == {"reference": f"Patient/{docref.patient_id}"}
    assert submission_set["entry"] == [{"item": {"reference": docref.reference}}]
    assert submission_set["contained"][0]["deviceName"][0]["name"] == "hospital-feed"
    assert mapping.UNSET_ID not in json.dumps(submission_set)


def test_a_patient_upload_is_hashed_before_its_write_transaction(database, monkeypatch):
    """A file the patient adds to the record is hashed (its blob's SHA-256, its attachment's SHA-1)
    before the batch opens, as every other document is: a large one took the write lock for it."""
    import base64
    import hashlib

    from gateway.services import feeds, personal
    from gateway.storage import commits

    repo = Repository(database[0], AccessContext.system("test"), "http://test")
    adt = (SAMPLES / "hl7v2" / "adt-a01-martin.hl7").read_bytes()
    assert feeds.receive(repo, adt, channel="test", max_bytes=1 << 20).code == "AA"
    hashed_inside = []
    sha256, sha1 = hashlib.sha256, hashlib.sha1

    def recorded(real):
        def hashed(data=b"", **kwargs):
            if getattr(commits._batch_thread, "running", False):
                hashed_inside.append(len(data))
            return real(data, **kwargs)
        return hashed

    monkeypatch.setattr(hashlib, "sha256", recorded(sha256))
    monkeypatch.setattr(hashlib, "sha1", recorded(sha1))
    data = b"%PDF-1.4\n" + b"x" * 200_000
    own = Repository(database[0], AccessContext(role="patient", subject="185067511204554",
                                                patient_ins="185067511204554"), "http://test")
    stored = personal.add_document(own, title="Mes directives", type_code=personal.ADVANCE_DIRECTIVES,
                                   media_type="application/pdf", data=data, max_bytes=1 << 20)[0]

    assert hashed_inside and max(hashed_inside) < 8192   # the audit chain's links, not the 200 KB file
    attachment = stored.json()["content"][0]["attachment"]
    assert attachment["size"] == len(data)
    assert attachment["hash"] == base64.b64encode(sha1(data).digest()).decode()


def test_a_posted_cda_is_hashed_once_for_its_raw_copy_and_its_binary(database, monkeypatch):
    """The body of POST /cda is the document: one SHA-256 serves its raw copy and its blob."""
    import hashlib

    from gateway.services import documents

    cda = (SAMPLES / "cda" / "cr-imagerie-irm-lefevre.xml").read_bytes()
    sha256, hashed = hashlib.sha256, []

    def recorded(data=b"", **kwargs):
        hashed.append(len(data))
        return sha256(data, **kwargs)

    monkeypatch.setattr(hashlib, "sha256", recorded)
    repo = Repository(database[0], AccessContext.system("test"), "http://test")
    assert documents.ingest_cda(repo, cda, max_bytes=1 << 22).created
    assert hashed.count(len(cda)) == 1
    with read_connection(database[0]) as conn:
        assert conn.execute(select(resources.c.blob_sha256).where(resources.c.res_type == "Binary")).scalar_one() \
            == sha256(cda).hexdigest()


def test_minted_ids_begin_with_their_creation_time_so_that_resources_created_together_sort_together(database):
    """Version 7 UUIDs (RFC 9562): a new resource's index rows go to the end of each index, beside
    those of the resources created just before it, instead of a random page of each."""
    repo = Repository(database[0], AccessContext.system("test"), "http://test")
    with repo.unit_of_work(Write.FEED) as uow:
        minted = [uow.new_id() for _ in range(50)]
    assert {uuid.UUID(res_id).version for res_id in minted} == {7}
    assert minted == sorted(minted)
    created_ms = int(minted[0].replace("-", "")[:12], 16)
    assert abs(created_ms / 1000 - time.time()) < 60


def masked_document(docref_id: str, binary_id: str) -> dict:
    return {"resourceType": "DocumentReference", "id": docref_id, "status": "current",
            "securityLabel": [{"coding": [{"system": codes.VISIBILITY_SYSTEM, "code": MASQUE_PS}]}],
            "contained": [{"resourceType": "Practitioner", "id": "author1",
                           "identifier": [{"system": f"urn:oid:{codes.IDNATPS_OID}", "value": "810000000001"}]}],
            "author": [{"reference": "#author1"}],
            "content": [{"attachment": {"url": f"http://test/fhir/Binary/{binary_id}"}}]}


def binary_row(engine, binary_id: str) -> tuple:
    with read_connection(engine) as conn:
        return tuple(conn.execute(select(resources.c.masked, resources.c.authors).where(
            resources.c.res_type == "Binary", resources.c.res_id == binary_id)).one())


@pytest.mark.parametrize("binary_first", [False, True])
def test_a_new_document_s_binary_takes_its_labels_in_its_insert(database, run, binary_first):
    """A Binary saved after its DocumentReference, in the same unit, is inserted with the document's
    labels and authors: it took them by an UPDATE after its INSERT, a statement per document. Saved
    before it (or already stored), it still takes them by that UPDATE."""
    engine = database[0]
    repo = Repository(engine, AccessContext.system("test"), "http://test")
    with repo.unit_of_work(Write.FEED) as uow:
        docref_id, binary_id = uow.new_id(), uow.new_id()
        binary = {"resourceType": "Binary", "id": binary_id, "contentType": "text/plain",
                  "securityContext": {"reference": f"DocumentReference/{docref_id}"}}
        if binary_first:
            uow.save(binary, patient_id="p1")
        uow.save(masked_document(docref_id, binary_id), patient_id="p1")
        if not binary_first:
            uow.save(binary, patient_id="p1")

    assert run.count(sql.UPDATE_RESOURCE) == (1 if binary_first else 0)
    assert binary_row(engine, binary_id) == (True, " 810000000001 ")
