"""Migrations that move data keep every byte of it."""
import base64
import hashlib
import json
import os
from dataclasses import replace
import subprocess
import sys
import time

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from conftest import GP, SAMPLES, attend_all, new_postgres_database

from gateway.access import AccessContext
from gateway.access.writes import Write
from gateway.access.audit import verify_chain
from gateway.app import create_app
from gateway.mapping import codes
from gateway.mapping.hl7v2 import assigning_authority_system
from gateway.storage.database import make_engine
from gateway.storage.migrate import alembic_config, upgrade
from gateway.storage.repository import Base64InRaw, Repository
from gateway.storage.schema import metadata


def test_raw_bodies_move_to_blobs_once_each(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    config = alembic_config(engine)
    command.upgrade(config, "0008")
    bodies = {1: b"MSH|one", 2: b"MSH|one", 3: b"<ClinicalDocument/>", 4: b"MSH|two"}
    digests = {1: "a" * 64, 2: "a" * 64, 3: "c" * 64, 4: "d" * 64}
    with engine.begin() as conn:
        # The document posted raw is also its Binary's blob already.
        conn.execute(text("INSERT INTO blobs (sha256, size, data) VALUES (:s, :n, :d)"),
                     {"s": digests[3], "n": len(bodies[3]), "d": bodies[3]})
        for raw_id, body in bodies.items():
            conn.execute(text("INSERT INTO raw_inputs (id, received_at, channel, sha256, size, body, status) "
                              "VALUES (:i, '2026-01-01T00:00:00', 'mllp', :s, :n, :b, 'processed')"),
                         {"i": raw_id, "s": digests[raw_id], "n": len(body), "b": body})
    command.upgrade(config, "head")
    with engine.connect() as conn:
        kept = dict(conn.execute(text("SELECT r.id, b.data FROM raw_inputs r JOIN blobs b ON b.sha256 = r.sha256")).all())
        assert {k: bytes(v) for k, v in kept.items()} == bodies
        assert conn.execute(text("SELECT COUNT(*) FROM blobs")).scalar_one() == 3
        assert "body" not in {row[1] for row in conn.execute(text("PRAGMA table_info(raw_inputs)"))}
    engine.dispose()


def test_the_migrations_build_the_schema_the_code_declares(empty_database):
    engine = make_engine(empty_database)
    command.upgrade(alembic_config(engine), "head")
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert differences == []


def test_a_blob_written_in_parts_is_whole_again_after_a_downgrade(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'parts.db'}")
    config = alembic_config(engine)
    command.upgrade(config, "head")
    data = os.urandom(3 * 1024 * 1024 + 5)
    digest = Repository(engine, AccessContext.system("test"), "http://gateway.test").write(
        lambda uow: uow.store_blob(data), Write.FEED)
    command.downgrade(config, "0010")
    with engine.connect() as conn:
        assert bytes(conn.execute(text("SELECT data FROM blobs WHERE sha256 = :s"), {"s": digest}).scalar_one()) == data
    engine.dispose()


def test_a_document_read_from_its_message_has_its_own_bytes_after_a_downgrade(tmp_path):
    """Migration 0037: a document read from the raw copy of the message that carried it (its
    base64 short of its final padding, as some senders send it) gets its bytes back in its row."""
    engine = make_engine(f"sqlite:///{tmp_path / 'read.db'}")
    config = alembic_config(engine)
    command.upgrade(config, "head")
    document = os.urandom(70_000)
    encoded = base64.b64encode(document).rstrip(b"=")
    carrier = b"OBX|1|ED|^TEXT^XML^Base64^" + encoded + b"|"
    where = Base64InRaw(hashlib.sha256(carrier).hexdigest(), len(carrier), carrier.index(encoded), len(encoded))
    digest = Repository(engine, AccessContext.system("test"), "http://gateway.test").write(
        lambda uow: [uow.store_blob(carrier), uow.store_blob(document, None, where)][1], Write.FEED)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT length(data) FROM blobs WHERE sha256 = :s"), {"s": digest}).scalar_one() == 0
    command.downgrade(config, "0036")
    with engine.connect() as conn:
        assert bytes(conn.execute(text("SELECT data FROM blobs WHERE sha256 = :s"), {"s": digest}).scalar_one()) \
            == document
    engine.dispose()


def test_date_index_strings_before_the_year_1000_are_padded(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'dates.db'}")
    config = alembic_config(engine)
    command.upgrade(config, "0011")
    rows = [("999-03-01T00:00:00.000000", "999-03-01T23:59:59.999999"),
            ("0001-01-01T00:00:00.000000", "999-12-31T23:59:59.999999"),
            ("2019-12-03T00:00:00.000000", "9999-12-31T23:59:59.999999")]
    with engine.begin() as conn:
        for n, (low, high) in enumerate(rows):
            conn.execute(text("INSERT INTO search_date (res_type, res_id, param, low, high) "
                              "VALUES ('Patient', :id, 'birthdate', :low, :high)"), {"id": f"p{n}", "low": low, "high": high})
    command.upgrade(config, "head")
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT low, high FROM search_date ORDER BY res_id")).all()
    assert [tuple(row) for row in stored] == [
        ("0999-03-01T00:00:00.000000", "0999-03-01T23:59:59.999999"),
        ("0001-01-01T00:00:00.000000", "0999-12-31T23:59:59.999999"),
        ("2019-12-03T00:00:00.000000", "9999-12-31T23:59:59.999999")]
    engine.dispose()


def test_the_current_versions_leave_the_history_table_with_their_method(tmp_path):
    """Migration 0014: a resource's current version is in `resources` only, with the method that
    wrote it; the versions it replaced stay in the history. A downgrade puts the copies back."""
    engine = make_engine(f"sqlite:///{tmp_path / 'history.db'}")
    config = alembic_config(engine)
    command.upgrade(config, "0013")
    versions = [("o1", 1, "POST", "one"), ("o1", 2, "PATCH", "two"), ("o2", 1, "POST", "alone")]
    with engine.begin() as conn:
        for res_id, version, name in (("o1", 2, "two"), ("o2", 1, "alone")):
            conn.execute(text("INSERT INTO resources (res_type, res_id, version, last_updated, deleted, body) "
                              "VALUES ('Organization', :i, :v, '2026-01-01T00:00:00', false, :b)"),
                         {"i": res_id, "v": version, "b": f'{{"name": "{name}"}}'})
        for res_id, version, method, name in versions:
            conn.execute(text("INSERT INTO resource_versions (res_type, res_id, version, last_updated, method, "
                              "deleted, body) VALUES ('Organization', :i, :v, '2026-01-01T00:00:00', :m, false, :b)"),
                         {"i": res_id, "v": version, "m": method, "b": f'{{"name": "{name}"}}'})
    command.upgrade(config, "head")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT res_id, method FROM resources ORDER BY res_id")).all() == [
            ("o1", "PATCH"), ("o2", "POST")]
        assert conn.execute(text("SELECT res_id, version, method FROM resource_versions")).all() == [("o1", 1, "POST")]
    command.downgrade(config, "0013")
    with engine.connect() as conn:
        assert sorted(conn.execute(text("SELECT res_id, version, method, body FROM resource_versions")).all()) == [
            (res_id, version, method, f'{{"name": "{name}"}}') for res_id, version, method, name in versions]
    engine.dispose()


def test_a_fhir_document_s_binary_takes_its_document_s_labels(tmp_path):
    """Migration 0015: a Binary a DocumentReference names by its Bundle/[id] URL (a FHIR document)
    was stored without the document's labels; it takes them, and its authors. A document's Binary
    named by Binary/[id] had them already and is left as it is."""
    engine = make_engine(f"sqlite:///{tmp_path / 'labels.db'}")
    config = alembic_config(engine)
    command.upgrade(config, "0014")
    documents = {"d1": "http://gateway.test/fhir/Bundle/b1", "d2": "http://gateway.test/fhir/Binary/b2"}
    with engine.begin() as conn:
        for res_id, url in documents.items():
            conn.execute(text("INSERT INTO resources (res_type, res_id, version, last_updated, deleted, body, masked, "
                              "hidden_from_patient, hidden_from_representatives, authors) VALUES ('DocumentReference', "
                              ":i, 1, '2026-01-01T00:00:00', false, :b, true, true, false, ' 810000000001 ')"),
                         {"i": res_id, "b": json.dumps({"resourceType": "DocumentReference", "content": [
                             {"attachment": {"url": url}}]})})
        for res_id in ("b1", "b2"):
            conn.execute(text("INSERT INTO resources (res_type, res_id, version, last_updated, deleted, body) "
                              "VALUES ('Binary', :i, 1, '2026-01-01T00:00:00', false, '{}')"), {"i": res_id})
    command.upgrade(config, "head")
    with engine.connect() as conn:
        labels = conn.execute(text("SELECT res_id, masked, hidden_from_patient, hidden_from_representatives, authors "
                                   "FROM resources WHERE res_type = 'Binary' ORDER BY res_id")).all()
    assert [tuple(row) for row in labels] == [("b1", 1, 1, 0, " 810000000001 "), ("b2", 0, 0, 0, None)]
    engine.dispose()


def test_the_replacements_stored_await_the_parents_they_name_by_identifier(tmp_path):
    """Migration 0017: a replacement stored before it whose parent was never registered here awaits
    it; one that names its parent by reference, a deleted one and a signature (`signs`) do not."""
    engine = make_engine(f"sqlite:///{tmp_path / 'awaited.db'}")
    config = alembic_config(engine)
    command.upgrade(config, "0016")
    parent = {"identifier": {"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.3.4"}}
    relations = {"r1": (False, [{"code": "replaces", "target": parent}]),
                 "r2": (False, [{"code": "replaces", "target": {"reference": "DocumentReference/x"}}]),
                 "r3": (True, [{"code": "replaces", "target": parent}]),
                 "s1": (False, [{"code": "signs", "target": parent}])}
    with engine.begin() as conn:
        for res_id, (deleted, relates_to) in relations.items():
            conn.execute(text("INSERT INTO resources (res_type, res_id, version, last_updated, deleted, body) "
                              "VALUES ('DocumentReference', :i, 1, '2026-01-01T00:00:00', :d, :b)"),
                         {"i": res_id, "d": deleted, "b": json.dumps({"resourceType": "DocumentReference",
                                                                      "relatesTo": relates_to})})
        # More replacements than the migration reads at once (500).
        for n in range(1203):
            conn.execute(text("INSERT INTO resources (res_type, res_id, version, last_updated, deleted, body) "
                              "VALUES ('DocumentReference', :i, 1, '2026-01-01T00:00:00', false, :b)"),
                         {"i": f"p{n:04}", "b": json.dumps({"resourceType": "DocumentReference", "relatesTo": [
                             {"code": "replaces", "target": {"identifier": {"value": f"urn:oid:1.2.3.5.{n}"}}}]})})
    command.upgrade(config, "head")
    with engine.connect() as conn:
        awaited = conn.execute(text("SELECT system, value, res_type, res_id FROM awaited_parents "
                                    "WHERE res_id NOT LIKE 'p%'")).all()
        many = conn.execute(text("SELECT count(DISTINCT res_id) FROM awaited_parents WHERE res_id LIKE 'p%'")).scalar_one()
    assert [tuple(row) for row in awaited] == [("urn:ietf:rfc:3986", "urn:oid:1.2.3.4", "DocumentReference", "r1")]
    assert many == 1203
    engine.dispose()


def test_refusals_recorded_with_an_ins_or_a_birth_date_keep_neither(tmp_path):
    """Migration 0020: the texts of refusals kept before it (the reason with the raw input, the ACK)
    lose the INS and birth dates they quoted; other texts, and inputs that were not refused, stay."""
    engine = make_engine(f"sqlite:///{tmp_path / 'refusals.db'}")
    config = alembic_config(engine)
    command.upgrade(config, "0019")
    birth = "PID-7 (birth date): '19851345' is not a valid date: month must be in 1..12"
    texts = {  # as the code before 0020 wrote them
        "cda": ("INS '185067511204500' is not valid (The number's checksum or check digit is invalid.); the key "
                "is 97 - (first 13 digits mod 97)"),
        "pid": "INS '185067511204500' is not valid: 15 characters whose last two are 97 - (first 13 mod 97)",
        "mdm": "PID-3 carries INS 279035121518989 but the CDA recordTarget is INS 185067511204554",
        "iti65": "subject does not designate the patient of the CDA (INS 185067511204554)",
        "birth": birth,
        "other": "a submission concerns one patient; its documents name 2 INS",
    }
    ack = ("MSH|^~\\&|GW|DMP|GAM|CH-SAINT-AUBIN|20260310080000||ACK^A28^ACK|A1|P|2.5\rMSA|AE|K2\r"
           f"ERR||PID^1^7|102^Data type error^HL70357|E||||{birth}\r")
    rows = [("refused", json.dumps({"ack": "AE", "issues": [{"text": t, "severity": "E"}]}), ack if k == "birth" else None)
            for k, t in texts.items() if k in ("pid", "mdm", "birth")]
    rows += [("refused", json.dumps({"reason": texts[k], "location": "/", "code": "207"}), None)
             for k in ("cda", "iti65", "other")]
    rows += [("processed", json.dumps({"reason": texts["cda"]}), None)]
    rows += [("refused", json.dumps({"reason": texts["cda"]}), None)] * 1003   # more than a page (500)
    with engine.begin() as conn:
        for status, outcome, acked in rows:
            conn.execute(text("INSERT INTO raw_inputs (received_at, channel, sha256, size, status, outcome, ack) "
                              "VALUES ('2026-01-01T00:00:00', 'cda', :sha, 0, :status, :outcome, :ack)"),
                         {"sha": "0" * 64, "status": status, "outcome": outcome, "ack": acked})
    command.upgrade(config, "head")
    with engine.connect() as conn:
        kept = conn.execute(text("SELECT status, outcome, ack FROM raw_inputs ORDER BY id")).all()
    everything = json.dumps([list(row) for row in kept if row.status == "refused"])
    for secret in ("185067511204500", "279035121518989", "185067511204554", "19851345"):
        assert secret not in everything
    assert [json.loads(row.outcome)["issues"][0]["text"] for row in kept[:3]] == [
        "the INS is not valid: 15 characters whose last two are 97 - (first 13 mod 97)",
        "the INS in PID-3 is not the INS of the CDA recordTarget",
        "PID-7 (birth date) is not a valid date (YYYY[MM[DD]])"]
    assert kept[2].ack.endswith("|E||||PID-7 (birth date) is not a valid date (YYYY[MM[DD]])\r")
    assert [json.loads(row.outcome)["reason"] for row in kept[3:6]] == [
        "the INS is not valid (The number's checksum or check digit is invalid.); the key is 97 - (first 13 digits "
        "mod 97)", "subject does not designate the patient of the CDA (its INS)", texts["other"]]
    assert kept[6].outcome == rows[6][1]   # only refusals are rewritten
    engine.dispose()


def test_uuid_roots_stored_as_urn_oid_are_written_urn_uuid_and_the_trail_is_kept(tmp_path):
    """Migration 0018: what names a UUID root urn:oid: (a document's unique id, an awaited parent,
    their index rows) is written urn:uuid: in lower case; an AuditEvent keeps its words. Downgraded,
    the names are what the code before wrote."""
    engine = make_engine(f"sqlite:///{tmp_path / 'uuid.db'}")
    config = alembic_config(engine)
    command.upgrade(config, "0017")
    old, new = "urn:oid:90E1C8EC-F951-4B26-A305-A34848818DD6", "urn:uuid:90e1c8ec-f951-4b26-a305-a34848818dd6"
    oid = "urn:oid:1.2.250.1.213.1.1.9.2.4.2"
    document = {"resourceType": "DocumentReference", "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": old},
                "relatesTo": [{"code": "replaces", "target": {"identifier": {"system": "urn:ietf:rfc:3986", "value": oid}}}]}
    audit_event = {"resourceType": "AuditEvent", "entity": [{"what": {"identifier": {"value": old}}}]}
    # More documents than the migration reads at once (500), each named by a UUID.
    others = [("DocumentReference", f"e{n:04}", {"resourceType": "DocumentReference", "masterIdentifier": {
        "system": "urn:ietf:rfc:3986", "value": f"urn:oid:90E1C8EC-F951-4B26-A305-A3484881{n:04}"}}) for n in range(1203)]
    with engine.begin() as conn:
        for res_type, res_id, body in [("DocumentReference", "d1", document), ("AuditEvent", "a1", audit_event), *others]:
            conn.execute(text("INSERT INTO resources (res_type, res_id, version, last_updated, deleted, body) "
                              "VALUES (:t, :i, 1, '2026-01-01T00:00:00', false, :b)"),
                         {"t": res_type, "i": res_id, "b": json.dumps(body)})
        conn.execute(text("INSERT INTO unique_identifiers VALUES ('DocumentReference', 'urn:ietf:rfc:3986', :v, 'd1')"),
                     {"v": old})
        for res_type, res_id in (("DocumentReference", "d1"), ("AuditEvent", "a1")):
            conn.execute(text("INSERT INTO search_token VALUES (:t, :i, 'identifier', 'urn:ietf:rfc:3986', :v)"),
                         {"t": res_type, "i": res_id, "v": old})
        conn.execute(text("INSERT INTO awaited_parents VALUES ('urn:ietf:rfc:3986', :v, 'DocumentReference', 'd2')"),
                     {"v": old})

    def stored() -> dict:
        with engine.connect() as conn:
            return {"document": json.loads(conn.execute(text("SELECT body FROM resources WHERE res_id = 'd1'")).scalar_one()),
                    "audit": conn.execute(text("SELECT body FROM resources WHERE res_id = 'a1'")).scalar_one(),
                    "identifier": conn.execute(text("SELECT value FROM unique_identifiers")).scalar_one(),
                    "tokens": dict(conn.execute(text("SELECT res_id, code FROM search_token")).all()),
                    "awaited": conn.execute(text("SELECT value FROM awaited_parents")).scalar_one(),
                    "others": conn.execute(text("SELECT count(*) FROM resources WHERE res_id LIKE 'e%' "
                                                "AND body LIKE '%urn:uuid:90e1c8ec-f951-4b26-a305-a3484881%'")).scalar_one()}

    command.upgrade(config, "0018")
    after = stored()
    assert after["document"]["masterIdentifier"]["value"] == new
    assert after["document"]["relatesTo"][0]["target"]["identifier"]["value"] == oid   # an OID stays
    assert after["audit"] == json.dumps(audit_event)
    assert (after["identifier"], after["tokens"], after["awaited"]) == (new, {"d1": new, "a1": old}, new)
    assert after["others"] == 1203
    command.downgrade(config, "0017")
    before = stored()
    assert before["document"]["masterIdentifier"]["value"] == old
    assert (before["identifier"], before["tokens"], before["awaited"]) == (old, {"d1": old, "a1": old}, old)
    assert before["others"] == 0
    engine.dispose()


def test_authority_names_stored_with_whitespace_are_written_percent_encoded(tmp_path):
    """Migration 0023: a PID-3 authority named by its name (HL7's v2-to-FHIR examples have
    `Homerton Case Note Number`) was a system holding spaces, which no URI holds; the Patient, its
    identifier and index rows are rewritten, and the next message finds that patient again.
    Downgraded, the names are what the code before wrote."""
    engine = make_engine(f"sqlite:///{tmp_path / 'authority.db'}")
    config = alembic_config(engine)
    command.upgrade(config, "0022")
    old = "urn:hl7v2-assigning-authority:Homerton Case Note Number"
    new = "urn:hl7v2-assigning-authority:Homerton%20Case%20Note%20Number"
    kept = "urn:hl7v2-assigning-authority:CH-SAINT-AUBIN"
    patient = {"resourceType": "Patient", "identifier": [{"system": old, "value": "999999"},
                                                         {"system": kept, "value": "1"}]}
    audit_event = {"resourceType": "AuditEvent", "entity": [{"what": {"identifier": {"system": old, "value": "999999"}}}]}
    with engine.begin() as conn:
        for res_type, res_id, body in [("Patient", "p1", patient), ("AuditEvent", "a1", audit_event)]:
            conn.execute(text("INSERT INTO resources (res_type, res_id, version, last_updated, deleted, body) "
                              "VALUES (:t, :i, 1, '2026-01-01T00:00:00', false, :b)"),
                         {"t": res_type, "i": res_id, "b": json.dumps(body)})
        for system in (old, kept):
            conn.execute(text("INSERT INTO unique_identifiers VALUES ('Patient', :s, '999999', 'p1')"), {"s": system})
        for res_type, res_id in (("Patient", "p1"), ("AuditEvent", "a1")):
            conn.execute(text("INSERT INTO search_token VALUES (:t, :i, 'identifier', :s, '999999')"),
                         {"t": res_type, "i": res_id, "s": old})

    def stored() -> dict:
        with engine.connect() as conn:
            return {"patient": json.loads(conn.execute(text("SELECT body FROM resources WHERE res_id = 'p1'")).scalar_one()),
                    "audit": conn.execute(text("SELECT body FROM resources WHERE res_id = 'a1'")).scalar_one(),
                    "identifiers": sorted(conn.execute(text("SELECT system FROM unique_identifiers")).scalars()),
                    "tokens": dict(conn.execute(text("SELECT res_id, system FROM search_token")).all())}

    command.upgrade(config, "0023")
    after = stored()
    assert [i["system"] for i in after["patient"]["identifier"]] == [new, kept]
    assert after["audit"] == json.dumps(audit_event)
    assert (after["identifiers"], after["tokens"]) == (sorted([new, kept]), {"p1": new, "a1": old})
    assert assigning_authority_system("Homerton Case Note Number", "") == new   # what the next message names
    command.downgrade(config, "0022")
    before = stored()
    assert before["patient"] == patient
    assert (before["identifiers"], before["tokens"]) == (sorted([old, kept]), {"p1": old, "a1": old})
    engine.dispose()


def test_merged_patients_join_the_record_their_merges_end_in(tmp_path):
    """Migration 0027: a Patient merged into another (`replaced-by`) kept itself as owner, with the
    AuditEvents of its reads since, and the destruction of the survivor's record left them behind.
    Merged twice, they join the last survivor; a downgrade gives each Patient itself again."""
    engine = make_engine(f"sqlite:///{tmp_path / 'merged.db'}")
    config = alembic_config(engine)
    command.upgrade(config, "0026")

    def patient(res_id: str, replaced_by: str | None) -> dict:
        links = [{"other": {"reference": f"Patient/{replaced_by}"}, "type": "replaced-by"}] if replaced_by else []
        return {"resourceType": "Patient", "id": res_id, "active": not replaced_by, "link": links}

    with engine.begin() as conn:
        for res_id, replaced_by in [("p1", "p2"), ("p2", "p3"), ("p3", None), ("p4", None)]:
            conn.execute(text("INSERT INTO resources (res_type, res_id, version, last_updated, deleted, patient_id, body) "
                              "VALUES ('Patient', :i, 1, '2026-01-01T00:00:00', false, :i, :b)"),
                         {"i": res_id, "b": json.dumps(patient(res_id, replaced_by))})
        conn.execute(text("INSERT INTO resources (res_type, res_id, version, last_updated, deleted, patient_id, body) "
                          "VALUES ('AuditEvent', 'a1', 1, '2026-01-02T00:00:00', false, 'p1', '{}')"))

    def owners() -> dict:
        with engine.connect() as conn:
            return dict(conn.execute(text("SELECT res_id, patient_id FROM resources")).all())

    command.upgrade(config, "0027")
    assert owners() == {"p1": "p3", "p2": "p3", "p3": "p3", "p4": "p4", "a1": "p3"}
    command.downgrade(config, "0026")
    assert owners() == {"p1": "p1", "p2": "p2", "p3": "p3", "p4": "p4", "a1": "p3"}
    engine.dispose()


def test_lists_stored_before_get_the_index_rows_of_their_source_s_names_and_title(tmp_path):
    """Migration 0024: the Lists already stored are found by ITI-66's source names and title as a
    List written now is: the rows it writes are those the code's index extraction gives."""
    from gateway.storage.searchparams import SEARCH_PARAMS, index_rows

    engine = make_engine(f"sqlite:///{tmp_path / 'lists.db'}")
    config = alembic_config(engine)
    command.upgrade(config, "0023")
    people = {"role": [{"resourceType": "PractitionerRole", "id": "r", "practitioner": {"reference": "#p"}},
                       {"resourceType": "Practitioner", "id": "p", "name": [{"family": "Bernard", "given": ["Sophie", "Anne"]}]}],
              "patient": [{"resourceType": "Patient", "id": "a", "name": [{"family": "Martin", "given": ["Jeanne"]},
                                                                          {"family": "Martin"}]}],
              "practitioner": [{"resourceType": "Practitioner", "id": "a", "name": [{"family": "Faure"}]}],
              "device": [{"resourceType": "Device", "id": "a"}]}
    lists = {name: {"resourceType": "List", "id": f"list-{name}", "status": "current", "mode": "working",
                    "title": f"Lot {name.capitalize()}", "contained": contained,
                    "source": {"reference": f"#{contained[0]['id']}"}} for name, contained in people.items()}
    lists["untitled"] = {"resourceType": "List", "id": "list-untitled", "status": "current", "mode": "working"}
    with engine.begin() as conn:
        for deleted, body in [(False, b) for b in lists.values()] + [(True, {**lists["role"], "id": "list-gone"})]:
            conn.execute(text("INSERT INTO resources (res_type, res_id, version, last_updated, deleted, body) "
                              "VALUES ('List', :i, 1, '2026-01-01T00:00:00', :d, :b)"),
                         {"i": body["id"], "d": deleted, "b": json.dumps(body)})
    new_params = {"title"} | {name for name in SEARCH_PARAMS["List"] if name.startswith(("source.", "source:"))}

    def rows() -> set:
        with engine.connect() as conn:
            return set(conn.execute(text("SELECT res_type, res_id, param, value, exact FROM search_string")).all())

    command.upgrade(config, "0024")
    expected = {(r["res_type"], r["res_id"], r["param"], r["value"], r["exact"])
                for body in lists.values() for r in index_rows(body)["string"] if r["param"] in new_params}
    assert rows() == expected
    assert {r[2] for r in expected} == new_params   # each parameter has rows to compare
    command.downgrade(config, "0023")
    assert rows() == set()
    engine.dispose()


def test_patients_stored_before_get_the_index_rows_of_their_death(tmp_path):
    """Migration 0032: the access rules read whether a patient died from the index; the Patients
    already stored get the rows a Patient written now gets."""
    from gateway.storage.searchparams import index_rows

    engine = make_engine(f"sqlite:///{tmp_path / 'patients.db'}")
    config = alembic_config(engine)
    command.upgrade(config, "0031")
    patients = [{"resourceType": "Patient", "id": "alive"},
                {"resourceType": "Patient", "id": "said-alive", "deceasedBoolean": False},
                {"resourceType": "Patient", "id": "dead", "deceasedBoolean": True},
                {"resourceType": "Patient", "id": "dead-on", "deceasedDateTime": "2025-03-01"}]
    with engine.begin() as conn:
        for deleted, body in [(False, p) for p in patients] + [(True, {**patients[2], "id": "gone"})]:
            conn.execute(text("INSERT INTO resources (res_type, res_id, version, last_updated, deleted, body) "
                              "VALUES ('Patient', :i, 1, '2026-01-01T00:00:00', :d, :b)"),
                         {"i": body["id"], "d": deleted, "b": json.dumps(body)})

    def rows() -> set:
        with engine.connect() as conn:
            return set(conn.execute(text("SELECT res_type, res_id, param, system, code FROM search_token")).all())

    command.upgrade(config, "0032")
    assert rows() == {(r["res_type"], r["res_id"], r["param"], r["system"], r["code"])
                      for body in patients for r in index_rows(body)["token"] if r["param"] == "deceased"}
    assert {row[1] for row in rows() if row[4] == "true"} == {"dead", "dead-on"}
    command.downgrade(config, "0031")
    assert rows() == set()
    engine.dispose()


def test_rules_about_a_structure_by_its_idnatst_of_a_finess_name_the_finess(tmp_path):
    """Migration 0034: a decision about a structure named by its IdNatSt of a FINESS (1 + FINESS)
    is a rule about the FINESS a professional's token names; the rules written before named the
    IdNatSt, and applied to no one. Other rules are left as they are."""
    from gateway.access.rules import rules_of

    engine = make_engine(f"sqlite:///{tmp_path / 'rules.db'}")
    config = alembic_config(engine)
    command.upgrade(config, "0033")
    idnatst, finess = "urn:oid:1.2.250.1.71.4.2.2", "https://finess.esante.gouv.fr"
    written = [("c1", idnatst, "1330780000"), ("c2", idnatst, "2123456789"), ("c3", finess, "750712184"),
               ("c4", "urn:oid:1.2.250.1.71.4.2.1", "899900000012")]
    with engine.begin() as conn:
        for consent_id, system, value in written:
            conn.execute(text("INSERT INTO access_rules (consent_id, patient_id, kind, effect, actor_system, "
                              "actor_value) VALUES (:c, 'p1', 'professional', 'deny', :s, :v)"),
                         {"c": consent_id, "s": system, "v": value})
    command.upgrade(config, "0034")
    with engine.connect() as conn:
        rules = set(conn.execute(text("SELECT consent_id, actor_system, actor_value FROM access_rules")).all())
    assert rules == {("c1", finess, "330780000"), ("c2", idnatst, "2123456789"), ("c3", finess, "750712184"),
                     ("c4", "urn:oid:1.2.250.1.71.4.2.1", "899900000012")}
    # As the rules of a decision written now name it.
    consent = {"resourceType": "Consent", "id": "c1", "status": "active", "provision": {"type": "deny", "actor": [
        {"reference": {"identifier": {"system": idnatst, "value": "1330780000"}}}]},
        "category": [{"coding": [{"system": "urn:dmp-gateway:consent-kind", "code": "professional"}]}]}
    assert [(r["actor_system"], r["actor_value"]) for r in rules_of(consent, "p1")] == [(finess, "330780000")]
    command.downgrade(config, "0033")
    engine.dispose()


def test_authorisations_stored_with_a_period_hold_for_it(tmp_path):
    """Migration 0035: an authorisation stored with a period (kept and ignored, before periods were
    refused) holds for that period, as one made now; other decisions, and a ZFA's closing date, bound
    nothing."""
    from gateway.access.rules import rules_of

    engine = make_engine(f"sqlite:///{tmp_path / 'periods.db'}")
    config = alembic_config(engine)
    command.upgrade(config, "0034")
    kind = lambda code: [{"coding": [{"system": "urn:dmp-gateway:consent-kind", "code": code}]}]  # noqa: E731
    actor = [{"reference": {"identifier": {"system": "urn:oid:1.2.250.1.71.4.2.1", "value": "899900000012"}}}]
    consents = [
        {"id": "dated", "category": kind("professional"), "provision": {"type": "permit", "actor": actor, "period": {
            "start": "2026-01-01", "end": "2026-06-30T18:00:00+02:00"}}},
        {"id": "open", "category": kind("professional"), "provision": {"type": "permit", "actor": actor}},
        {"id": "zfa", "category": [{"coding": [{"system": "urn:hl7-france:pam-fr:zfa", "code": "consultation"}]}],
         "provision": {"type": "deny", "period": {"end": "2026-03-01"}}},
    ]
    with engine.begin() as conn:
        for consent in consents:
            body = {"resourceType": "Consent", "status": "active", **consent}
            conn.execute(text("INSERT INTO resources (res_type, res_id, version, last_updated, deleted, body) "
                              "VALUES ('Consent', :i, 1, '2026-01-01T00:00:00', :d, :b)"),
                         {"i": consent["id"], "d": False, "b": json.dumps(body)})
            for rule in rules_of(body, "p1"):
                conn.execute(text("INSERT INTO access_rules (consent_id, patient_id, kind, effect, actor_system, "
                                  "actor_value) VALUES (:consent_id, :patient_id, :kind, :effect, :actor_system, "
                                  ":actor_value)"), rule)
    command.upgrade(config, "0035")
    with engine.connect() as conn:
        bounds = {row[0]: (row[1], row[2]) for row in conn.execute(text(
            "SELECT consent_id, valid_from, valid_until FROM access_rules"))}
    assert bounds == {"dated": ("2026-01-01T00:00:00.000000", "2026-06-30T16:00:00.999999"),
                      "open": (None, None), "zfa": (None, None)}
    dated = {"resourceType": "Consent", "status": "active", **consents[0]}
    assert [(r["valid_from"], r["valid_until"]) for r in rules_of(dated, "p1")] == [bounds["dated"]]
    command.downgrade(config, "0034")
    engine.dispose()


MIGRATE_WHEN_TOLD = """
import sys, time
from pathlib import Path
from gateway.storage.database import make_engine
from gateway.storage.migrate import upgrade
url, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
engine = make_engine(url)
ready.touch()
deadline = time.monotonic() + 60
while not go.exists():
    if time.monotonic() > deadline:
        sys.exit("never told to go")
    time.sleep(0.001)
upgrade(engine)
"""


@pytest.fixture
def empty_database(backend, tmp_path):
    """The URL of a database with no table yet: a new SQLite file, or a new PostgreSQL database."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    with new_postgres_database("gateway_empty") as url:
        yield url


def test_processes_started_together_migrate_the_database_once(empty_database, tmp_path):
    """Two nodes (or listeners) started at once over one new database: each applies the pending
    migrations at start-up, the second after the first, which it then finds at head. (Both ran them
    at once before: one failed, on a duplicate key or a locked database.)"""
    processes = []
    try:
        for n in range(3):
            processes.append(subprocess.Popen(
                [sys.executable, "-c", MIGRATE_WHEN_TOLD, empty_database, str(tmp_path / f"ready-{n}"),
                 str(tmp_path / "go")], stderr=subprocess.PIPE, text=True))
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"ready-{n}").exists() for n in range(3)):
            assert time.monotonic() < deadline, "the migrating processes did not start"
            assert all(p.poll() is None for p in processes), [p.stderr.read() for p in processes]
            time.sleep(0.01)
        (tmp_path / "go").touch()
        failures = [p.stderr.read() for p in processes if p.wait(120) != 0]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert failures == []
    engine = make_engine(empty_database)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [
                ScriptDirectory.from_config(alembic_config(engine)).get_current_head()]
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql"])
def test_ids_past_2_to_the_31_are_stored_listed_and_chained(settings, bearer):
    """A national record's trail passes 2^31 entries within weeks: the ids that grow with every input
    and access go on past it (PostgreSQL's serials were 32-bit before 0021, and stopped there with
    "nextval: reached maximum value"). SQLite's INTEGER PRIMARY KEY is its 64-bit rowid already."""
    start = 2**31 + 10
    with new_postgres_database("gateway_ids") as url:
        engine = make_engine(url)
        try:
            upgrade(engine)
            with engine.begin() as conn:
                for sequence in ("raw_inputs_id_seq", "audit_chain_seq_seq", "notifications_id_seq"):
                    conn.execute(text(f"ALTER SEQUENCE {sequence} RESTART WITH {start}"))
            client = create_app(replace(settings, database_url=url), engine).test_client()
            system, admin = bearer("system", sub="feeder"), bearer("admin", sub="operator")
            for name in ("adt-a01-martin.hl7", "oru-r01-cr-biologie-martin.hl7"):
                answer = client.post("/hl7v2", data=(SAMPLES / "hl7v2" / name).read_bytes(), content_type="x-application/hl7-v2+er7",
                                     headers=system)
                assert b"MSA|AA" in answer.data, answer.data
            searched = client.get("/fhir/DocumentReference?patient.identifier=urn:oid:1.2.250.1.213.1.4.10|"
                                  "185067511204554", headers=bearer("doctor", sub=GP))
            assert searched.status_code == 200, searched.data
            listed = client.get("/hl7v2/messages", headers=admin).get_json()["messages"]
            assert [m["id"] for m in listed] == [start + 1, start]
            assert client.get(f"/hl7v2/messages/{start + 1}", headers=admin).status_code == 200
            assert [m["id"] for m in client.get(f"/hl7v2/messages?before={start + 1}",
                                                headers=admin).get_json()["messages"]] == [start]
            with engine.connect() as conn:
                assert conn.execute(text("SELECT MIN(seq) FROM audit_chain")).scalar_one() == start
                assert conn.execute(text("SELECT id FROM notifications")).scalar_one() == start
            report = verify_chain(engine)
            assert report.broken_at is None and report.entries > 3
        finally:
            engine.dispose()


def test_a_database_a_newer_gateway_migrated_is_told_in_a_line(tmp_path, monkeypatch, capsys):
    """A deployment rolled back to the version before: alembic's "Can't locate revision identified
    by '0099'" was a traceback from `gateway migrate` and `gateway serve`."""
    from gateway.cli import main

    url = f"sqlite:///{tmp_path / 'newer.db'}"
    engine = make_engine(url)
    command.upgrade(alembic_config(engine), "head")
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()
    monkeypatch.setenv("GATEWAY_DATABASE_URL", url)
    monkeypatch.setattr("gateway.cli.configure_logging", lambda level: None)
    assert main(["migrate"]) == 2
    told = capsys.readouterr().err
    assert told.startswith("gateway migrate: the database is at migration 0099, which this gateway does not have")
    assert "Traceback" not in told


def test_a_postgresql_database_without_statistics_is_analysed_at_start(caplog):
    """pg_restore and pg_upgrade carry no statistics, and autovacuum takes them again only once a
    tenth of a table has changed since (pg_upgrade) or in its own time: the bench's searches ran 25
    to 90 times slower meanwhile. A database whose tables hold rows and have none is analysed when
    `gateway serve` starts (its migrations), then never again for that."""
    from gateway.services import feeds

    with new_postgres_database("unanalysed") as url:
        engine = make_engine(url)
        try:
            upgrade(engine)   # the tables are empty: nothing to analyse
            reply = feeds.receive(Repository(engine, AccessContext.system("test"), "http://gateway.test"),
                                  (SAMPLES / "hl7v2" / "adt-a01-martin.hl7").read_bytes(), channel="test",
                                  max_bytes=1 << 20)
            assert b"MSA|AA|" in reply.ack

            def analysed() -> set[str]:
                with engine.connect() as conn:
                    return set(conn.execute(text("SELECT DISTINCT tablename FROM pg_stats "
                                                 "WHERE schemaname = current_schema()")).scalars())

            # A few rows, well under autovacuum's threshold (50 changes): it has not analysed them.
            assert "resources" not in analysed()
            with caplog.at_level("WARNING", logger="gateway.storage.database"):
                upgrade(engine)
            assert {"resources", "search_token", "unique_identifiers"} <= analysed()
            [warning] = [r.getMessage() for r in caplog.records if r.name == "gateway.storage.database"]
            assert warning.startswith("PostgreSQL had no statistics on tables that hold rows (resources, "), warning
            caplog.clear()
            with caplog.at_level("WARNING", logger="gateway.storage.database"):
                upgrade(engine)
            assert not [r for r in caplog.records if r.name == "gateway.storage.database"]
        finally:
            engine.dispose()


def test_an_ins_stored_as_printed_is_its_15_characters_after_the_migration(client, database):
    """Migration 0029, on what the code before it stored: a CDA naming its patient by the INS in
    groups gave a Patient and a DocumentReference holding it so (its claim without the spaces), and
    a Patient registered so held and claimed it so; no search by the INS found either."""
    engine, _ = database
    martin, dubois = "185067511204554", "292086938701277"
    printed = {martin: "1 85 06 75 112 045 54", dubois: "2.92.08.69.387.012.77"}
    FHIR = {"Content-Type": "application/fhir+json"}
    assert client.post("/cda", data=(SAMPLES / "cda" / "cr-biologie-martin.xml").read_bytes(),
                       headers={"Content-Type": "application/xml"}).status_code == 201
    registered = client.post("/fhir/Patient", headers=FHIR, data=json.dumps({"resourceType": "Patient", "identifier": [
        {"system": "urn:oid:1.2.250.1.213.1.4.10", "value": dubois}]})).json["id"]
    with engine.begin() as conn:
        for ins, as_printed in printed.items():
            conn.execute(text("UPDATE resources SET body = REPLACE(body, :ins, :printed) WHERE res_type <> 'AuditEvent'"),
                         {"ins": f'"{ins}"', "printed": f'"{as_printed}"'})
            conn.execute(text("UPDATE search_token SET code = :printed WHERE res_type = 'Patient' AND code = :ins"),
                         {"ins": ins, "printed": as_printed})
        conn.execute(text("UPDATE unique_identifiers SET value = :printed WHERE value = :ins"),
                     {"ins": dubois, "printed": printed[dubois]})
    # Mr DUBOIS registered again with his INS written plainly: the code before made a second record.
    again = client.post("/fhir/Patient", headers=FHIR, data=json.dumps({"resourceType": "Patient", "identifier": [
        {"system": "urn:oid:1.2.250.1.213.1.4.10", "value": dubois}]}))
    assert again.status_code == 201
    attend_all(engine)

    def found(ins: str) -> dict:
        return {res_type: client.get(f"/fhir/{res_type}", query_string={
            parameter: f"urn:oid:1.2.250.1.213.1.4.10|{ins}"}).json["total"]
                for res_type, parameter in (("Patient", "identifier"), ("DocumentReference", "patient.identifier"))}

    assert found(martin) == {"Patient": 0, "DocumentReference": 0}
    assert found(dubois) == {"Patient": 1, "DocumentReference": 0}
    command.downgrade(alembic_config(engine), "0028")   # 0029's downgrade changes nothing
    command.upgrade(alembic_config(engine), "head")
    assert found(martin) == {"Patient": 1, "DocumentReference": 1}
    # Two records of one patient, each claiming the INS as it was written: both found, to be merged.
    assert found(dubois) == {"Patient": 2, "DocumentReference": 0}
    with engine.connect() as conn:
        bodies = conn.execute(text("SELECT body FROM resources WHERE res_type <> 'AuditEvent'")).scalars().all()
        claims = set(conn.execute(text("SELECT value, res_id FROM unique_identifiers WHERE res_type = 'Patient'")).all())
    assert not [body for body in bodies if any(as_printed in body for as_printed in printed.values())]
    assert {(printed[dubois], registered), (dubois, again.json["id"])} <= claims
    assert len(claims) == 4   # and Mr MARTIN's INS and IPP
    # The document stored now, in groups, goes to the record found.
    spaced = (SAMPLES / "cda" / "ldl-ses-martin.xml").read_bytes().replace(
        b'extension="185067511204554"', b'extension="1 85 06 75 112 045 54"')
    assert client.post("/cda", data=spaced, headers={"Content-Type": "application/xml"}).status_code == 201
    assert found(martin) == {"Patient": 1, "DocumentReference": 2}


def test_a_mask_added_after_a_document_came_is_the_patient_s_after_the_migration(client, database, bearer):
    """Migration 0030, on what the code before it stored: who set a mask was not kept. One a later
    version added (the patient's PATCH here) is taken as the patient's, which its author may no
    longer lift; one the document came with, as its author's."""
    engine, _ = database
    author, martin = "899900000046", bearer("patient", patient="185067511204554")
    posted = {name: client.post("/cda", data=(SAMPLES / "cda" / name).read_bytes(),
                                headers={"Content-Type": "application/xml"}).json["id"]
              for name in ("cr-biologie-martin.xml", "ldl-ses-martin.xml")}
    came_masked, masked_later = posted["ldl-ses-martin.xml"], posted["cr-biologie-martin.xml"]
    attend_all(engine, author)
    mask = [{"op": "add", "path": "/securityLabel/-",
             "value": {"coding": [{"system": codes.VISIBILITY_SYSTEM, "code": "MASQUE_PS"}]}}]
    assert client.patch(f"/fhir/DocumentReference/{masked_later}", data=json.dumps(mask),
                        headers={"Content-Type": "application/json-patch+json", **martin}).status_code == 200
    with engine.begin() as conn:
        body = json.loads(conn.execute(text("SELECT body FROM resources WHERE res_id = :res_id"),
                                       {"res_id": came_masked}).scalar_one())
        body["securityLabel"].insert(0, {"coding": [{"system": codes.VISIBILITY_SYSTEM, "code": "MASQUE_PS"}]})
        conn.execute(text("UPDATE resources SET body = :body, masked = :masked WHERE res_id = :res_id"),
                     {"body": json.dumps(body), "masked": True, "res_id": came_masked})
    config = alembic_config(engine)
    command.downgrade(config, "0029")
    command.upgrade(config, "head")
    with engine.connect() as conn:
        by_patient = dict(conn.execute(text("SELECT res_id, masked_by_patient FROM resources "
                                            "WHERE res_type = 'DocumentReference'")).all())
    assert by_patient == {masked_later: True, came_masked: False}
    unmask = [{"op": "remove", "path": "/securityLabel/0"}]
    refused = client.patch(f"/fhir/DocumentReference/{masked_later}", data=json.dumps(unmask),
                           headers={"Content-Type": "application/json-patch+json", **bearer("doctor", sub=author)})
    assert refused.status_code == 403, refused.json


def test_a_consent_s_structure_is_found_by_either_spelling(tmp_path):
    """Migration 0036: a Consent naming a structure by its FINESS, or by its IdNatSt of that FINESS,
    is found by a search of either (as one indexed now: index_rows). Other actors keep their one row."""
    from gateway.storage.searchparams import index_rows

    engine = make_engine(f"sqlite:///{tmp_path / 'actors.db'}")
    config = alembic_config(engine)
    command.upgrade(config, "0035")
    idnatst, finess = "urn:oid:1.2.250.1.71.4.2.2", "https://finess.esante.gouv.fr"
    idnatps = "urn:oid:1.2.250.1.71.4.2.1"
    written = [("c1", idnatst, "1330780000"), ("c2", finess, "750712184"), ("c3", idnatst, "2123456789"),
               ("c4", idnatps, "899900000012"), ("c5", finess, "750712184"), ("c5", idnatst, "1750712184")]
    with engine.begin() as conn:
        for consent_id, system, value in written:
            conn.execute(text("INSERT INTO search_token (res_type, res_id, param, system, code) "
                              "VALUES ('Consent', :c, 'actor', :s, :v)"), {"c": consent_id, "s": system, "v": value})
    command.upgrade(config, "0036")
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT res_id, system, code FROM search_token WHERE param = 'actor'")).all()
    assert sorted(rows) == sorted(written + [("c1", finess, "330780000"), ("c2", idnatst, "1750712184")])
    consent = {"resourceType": "Consent", "id": "c1", "status": "active", "provision": {"type": "deny", "actor": [
        {"reference": {"identifier": {"system": idnatst, "value": "1330780000"}}}]}}
    assert {(r["system"], r["code"]) for r in index_rows(consent)["token"] if r["param"] == "actor"} == {
        (idnatst, "1330780000"), (finess, "330780000")}
    command.downgrade(config, "0035")
    engine.dispose()
