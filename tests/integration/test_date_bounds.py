"""Dates at the edges of what a date can say: each input holding one is kept or refused, on both
backends, and what is kept passes the official profiles.

Every date of a CDA, an HL7v2 ADT and MDM^T02, and an ITI-65 submission is replaced, one at a time,
by a value at an edge: the years 1 and 9999, offsets of ±14 hours and past them, a leap second, a
day that does not exist, a date with an offset. Searches ask for the same edges. Before, on both
backends, the year 9999 in a period or a birth date overflowed its index range and an offset of
-2400 raised in Python's `timezone`: a 500 or an AR "internal error", the input kept as failed. A
search for `period=le9999-12-31`, which asks for everything, was a 500. A CDA whose effectiveTime
ends before it starts was kept and served as a DocumentReference that the official check fails
(per-1)."""
import base64
import copy
import io
import json
import re

from lxml import etree
from sqlalchemy import select

import profiles
from conftest import SAMPLES, sample
from gateway.demo import build_submission
from gateway.storage.schema import raw_inputs
from test_value_bounds import changed_er7, empty, json_leaves

MARTIN_INS = "185067511204554"
EDGE_TS = ["00000000", "00010101", "99991231", "99991231235959+1400", "20241231235960", "20240230",
           "20241301", "2024", "202401", "20240101000000.0000+0000", "20240101000000-1400",
           "20240101000000-2400", "20240101000000+0060", "20240101+9999", "18000101", "99999999999999"]
EDGE_FHIR = ["0001-01-01", "9999-12-31", "9999-12-31T23:59:59+14:00", "9999-12-31T23:59:59.999999999-12:00",
             "0001-01-01T00:00:00+14:00", "0000-01-01", "2024-02-30", "2024-12-31T23:59:60Z", "10000-01-01",
             "2024-01-01T00:00:00+24:00", "2024-01-01T24:00:00Z"]
TS_VALUE = re.compile(r"\d{8,}([.+-]\d+)*")


def cda_variants(data: bytes):
    for index, element in enumerate(etree.fromstring(data).iter()):
        if isinstance(element.tag, str) and TS_VALUE.fullmatch(element.get("value", "")):
            for ts in EDGE_TS:
                root = etree.fromstring(data)
                list(root.iter())[index].set("value", ts)
                yield f"{etree.QName(element).localname}={ts}", etree.tostring(root, xml_declaration=True,
                                                                               encoding="UTF-8")


def er7_variants(data: bytes):
    return changed_er7(data, lambda component: EDGE_TS if TS_VALUE.fullmatch(component) else [])


def json_variants(base: dict):
    for path in json_leaves(base):
        node = base
        for step in path:
            node = node[step]
        if re.fullmatch(r"\d{4}-\d\d(-\d\d)?(T.*)?", node):
            for value in EDGE_FHIR:
                variant = copy.deepcopy(base)
                parent = variant
                for step in path[:-1]:
                    parent = parent[step]
                parent[path[-1]] = value
                yield "/".join(map(str, path)) + "=" + value, json.dumps(variant)


def answered(engine, what: str, response) -> None:
    assert response.status_code < 500, (what, response.data[:300])
    with engine.connect() as conn:
        assert conn.execute(select(raw_inputs.c.outcome).where(raw_inputs.c.status == "failed")).all() == [], what


def test_an_edge_date_in_a_cda_an_hl7v2_message_or_a_submission_is_kept_valid_or_refused(client, database, bearer):
    engine = database[0]
    martin = bearer("patient", patient=MARTIN_INS)
    collected = profiles.Collected() if profiles.available() else None
    kept = refused = 0
    for what, body in cda_variants(sample("ldl-ses-martin.xml")):
        empty(engine)
        stored = client.post("/cda", data=body, content_type="application/xml")
        answered(engine, what, stored)
        if stored.status_code != 201:
            refused += 1
            continue
        kept += 1
        for form in ("json", "xml"):
            found = client.get("/fhir/DocumentReference", query_string={"_format": form}, headers=martin)
            assert found.status_code == 200, (what, form)
        if collected is not None:
            collected.add(client.get("/fhir/DocumentReference", headers=martin).json,
                          profiles.FIND_DOCUMENT_REFERENCES)
            collected.add(client.get("/fhir/Patient", headers=martin).json)
    feeder = bearer("system", sub="GAM CH-SAINT-AUBIN")
    for name in ("adt-a01-martin.hl7", "mdm-1-t02-cr-imagerie-irm-lefevre.hl7"):
        for what, body in er7_variants((SAMPLES / "hl7v2" / name).read_bytes()):
            empty(engine)
            ack = client.post("/hl7v2", data=body, content_type="x-application/hl7-v2+er7", headers=feeder)
            answered(engine, f"{name} {what}", ack)
            kept += b"MSA|AA" in ack.data
    submission = build_submission(sample("cr-biologie-martin.xml"), 5 * 1024 * 1024)
    for what, body in json_variants(submission):
        empty(engine)
        answered(engine, what, client.post("/fhir", data=body, content_type="application/fhir+json"))
    assert kept > 100 and refused > 20
    if collected is not None:
        assert collected.errors() == []


def test_a_search_at_the_edges_of_time_finds_what_it_covers(client, bearer):
    """`period=le9999-12-31` asks for everything: it was a 500."""
    assert client.post("/cda", data=sample("ldl-ses-martin.xml"), content_type="application/xml").status_code == 201
    martin = bearer("patient", patient=MARTIN_INS)
    everything = {"DocumentReference": ("period=le9999-12-31", "period=ge0001-01-01", "period=sa0001", "period=eb9999",
                                        "date=le9999-12-31T23:59:59-12:00", "creation=le9999"),
                  "AuditEvent": ("date=le9999-12-31T23:59:59-12:00", "date=ge0001-01-01T00:00:00+14:00"),
                  "Patient": ("birthdate=le9999-12-31", "birthdate=ge0001")}
    for resource, queries in everything.items():
        for query in queries + ("_lastUpdated=lt9999-12-31T23:59:59-12:00", "_lastUpdated=ge0001-01-01T00:00:00+14:00"):
            found = client.get(f"/fhir/{resource}?{query.replace('+', '%2B')}", headers=martin)
            assert found.status_code == 200 and found.json["total"] >= 1, (resource, query, found.data[:300])
    for query in ("date=ge0000", "date=2024-02-30", "date=gt10000-01-01",
                  "period=le2024-01-01T00:00:00+24:00"):
        refused = client.get(f"/fhir/DocumentReference?{query}", headers=martin)
        assert refused.status_code == 400, (query, refused.data[:300])


def test_a_period_ending_before_it_starts_is_refused(client, bearer):
    """FHIR's per-1, which the CI-SIS schematrons ask of a CDA too (dtr1-7-IVL_TS)."""
    backwards = sample("ldl-ses-martin.xml").replace(
        b'<low value="20260302091500+0100"/><high value="20260310160000+0100"/>',
        b'<low value="20260310160000+0100"/><high value="20260302091500+0100"/>', 1)
    refused = client.post("/cda", data=backwards, content_type="application/xml")
    assert refused.status_code == 422
    assert "context.period: the start (2026-03-10T16:00:00+01:00) is after the end" in \
        refused.json["issue"][0]["diagnostics"]
    assert client.post("/cda", data=sample("ldl-ses-martin.xml"), content_type="application/xml").status_code == 201
    doctor = "899900000012"
    pdf = {"resourceType": "DocumentReference",   # ITI-105: not a CDA, its metadata are kept as submitted
           "contained": [{"resourceType": "Practitioner", "id": "author",
                          "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.1", "value": doctor}]}],
           "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.250.1.213.1.1.9.77"},
           "status": "current", "type": {"coding": [{"system": "http://loinc.org", "code": "11488-4"}]},
           "subject": {"reference": f"Patient?identifier=urn:oid:1.2.250.1.213.1.4.10|{MARTIN_INS}"},
           "author": [{"reference": "#author"}],
           "context": {"period": {"start": "2026-03-10", "end": "2026-03-02"}},
           "content": [{"attachment": {"contentType": "application/pdf",
                                       "data": base64.b64encode(b"%PDF-1.4\n%%EOF\n").decode()}}]}
    feeder = {"Content-Type": "application/fhir+json", **bearer("doctor", sub=doctor)}
    answer = client.post("/fhir/DocumentReference", data=json.dumps(pdf), headers=feeder)
    assert answer.status_code == 422 and "per-1" in answer.json["issue"][0]["diagnostics"], answer.data[:300]
    pdf["context"]["period"] = {"start": "2026-03-02", "end": "2026-03-10"}
    assert client.post("/fhir/DocumentReference", data=json.dumps(pdf), headers=feeder).status_code == 201
    same_day = {"start": "2026-03-10", "end": "2026-03-10T10:00:00+01:00"}   # per-1 cannot tell: kept
    pdf["context"]["period"] = same_day
    pdf["masterIdentifier"]["value"] += ".1"
    answer = client.post("/fhir/DocumentReference", data=json.dumps(pdf), headers=feeder)
    assert answer.status_code == 201, answer.data[:300]


def test_a_document_kept_before_these_checks_is_still_masked_and_copied(client, bearer, database, settings,
                                                                        monkeypatch):
    """A period ending before it starts was kept until now. The patient still masks such a document
    and gets the copy of their record: only what is written anew is checked."""
    from gateway.access import AccessContext
    from gateway.fhir import validation
    from gateway.services.export import verify_export, write_export
    from gateway.storage.repository import Repository

    monkeypatch.setattr(validation, "_periods", lambda node, path: iter(()))
    backwards = sample("ldl-ses-martin.xml").replace(
        b'<low value="20260302091500+0100"/><high value="20260310160000+0100"/>',
        b'<low value="20260310160000+0100"/><high value="20260302091500+0100"/>', 1)
    assert client.post("/cda", data=backwards, content_type="application/xml").status_code == 201
    monkeypatch.undo()
    martin = bearer("patient", patient=MARTIN_INS)
    document = client.get("/fhir/DocumentReference", headers=martin).json["entry"][0]["resource"]
    label = {"coding": [{"system": "https://mos.esante.gouv.fr/NOS/TRE_A07-StatutVisibiliteDocument/FHIR/"
                                   "TRE-A07-StatutVisibiliteDocument", "code": "MASQUE_PS"}]}
    masked = client.patch(f"/fhir/DocumentReference/{document['id']}",
                          headers={**martin, "Content-Type": "application/json-patch+json"},
                          data=json.dumps([{"op": "add", "path": "/securityLabel/-", "value": label}]))
    assert masked.status_code == 200, masked.data[:300]
    own = Repository(database[0], AccessContext(role="patient", subject=MARTIN_INS, patient_ins=MARTIN_INS),
                     settings.public_base_url)
    written = io.BytesIO()
    write_export(own, settings.fhir_base, settings.export_key.read_bytes(), settings.export_cert.read_bytes(), written)
    assert verify_export(written.getvalue(), [settings.demo_dir / "ca.pem"]).valid
