"""Values PostgreSQL cannot keep where SQLite does: each input is accepted or refused, the same on
both backends, never failed.

- A string longer than its column. The gateway bounds what it keys on: a document's, patient's,
  professional's or organisation's identifier, a List's, a Consent's actor, a message's sender.
  Every value of real inputs is made 300 characters longer, one at a time. Before, 20 of these
  inputs were a 500 or an AR "internal error" on PostgreSQL, kept as failed for an operator to
  reprocess in vain.
- The character U+0000 (NUL), which PostgreSQL's text can neither hold nor compare: refused in an
  HL7v2 message (as received or as a hex escape, \\X00\\), a FHIR JSON body, a URL and a form.
  Before, each was a 500 or an AR "internal error" on PostgreSQL (XML, CDA and FHIR, refuses it
  already)."""
import copy
import json

from lxml import etree
from sqlalchemy import delete, select

from conftest import SAMPLES, sample
from gateway.demo import build_submission
from gateway.services.consents import decision
from gateway.storage.schema import metadata, raw_inputs

LONGER = "9" * 300
MARTIN_INS = "185067511204554"


def json_leaves(node, path=()):
    """The path of each string in a JSON value."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from json_leaves(value, path + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from json_leaves(value, path + (index,))
    elif isinstance(node, str):
        yield path


def lengthened_json(base: dict):
    for path in json_leaves(base):
        if "data" in path:   # a Binary's base64: its length is the document's
            continue
        variant = copy.deepcopy(base)
        node = variant
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] += LONGER
        yield "/".join(map(str, path)), json.dumps(variant)


def lengthened_cda(data: bytes):
    """Each attribute and each text of the document, in turn."""
    for index, element in enumerate(etree.fromstring(data).iter()):
        for attribute in element.attrib:
            root = etree.fromstring(data)
            target = list(root.iter())[index]
            target.set(attribute, target.get(attribute) + LONGER)
            yield f"{etree.QName(element).localname}/@{attribute}", etree.tostring(root, xml_declaration=True,
                                                                                   encoding="UTF-8")
        if isinstance(element.tag, str) and element.text and element.text.strip():
            root = etree.fromstring(data)
            target = list(root.iter())[index]
            target.text += LONGER
            yield f"{etree.QName(element).localname}/text()", etree.tostring(root, xml_declaration=True,
                                                                             encoding="UTF-8")


def changed_er7(data: bytes, replacements):
    """Each component of each field (MSH-1, MSH-2 and the CDA in OBX-5 aside) replaced by each of
    `replacements(component)`, in turn: (where, message)."""
    segments = data.decode().replace("\r\n", "\r").replace("\n", "\r").strip("\r").split("\r")
    for s, segment in enumerate(segments):
        fields = segment.split("|")
        for f, field in enumerate(fields):
            if f == 0 or (segment.startswith("MSH") and f == 1) or len(field) > 1000:
                continue
            components = field.split("^")
            for c, component in enumerate(components):
                for value in replacements(component):
                    changed = list(segments)
                    changed[s] = "|".join(fields[:f] + ["^".join(components[:c] + [value] + components[c + 1:])]
                                          + fields[f + 1:])
                    number = f + 1 if segment.startswith("MSH") else f
                    yield f"{segment[:3]}-{number}.{c + 1}={value[:16]}", "\r".join(changed).encode()


def lengthened_er7(data: bytes):
    """Each non-empty component of each field, in turn."""
    return changed_er7(data, lambda component: [component + LONGER] if component else [])


def empty(engine) -> None:
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(delete(table))


def assert_answered(engine, what: str, response) -> None:
    assert response.status_code < 500, (what, response.data[:300])
    with engine.connect() as conn:
        failed = conn.execute(select(raw_inputs.c.outcome).where(raw_inputs.c.status == "failed")).all()
    assert failed == [], (what, failed)


def test_a_longer_value_in_a_cda_an_iti65_submission_or_an_hl7v2_message_is_refused_or_kept(client, database,
                                                                                            bearer):
    engine = database[0]
    tried = 0
    for what, body in lengthened_cda(sample("ldl-ses-martin.xml")):
        empty(engine)
        assert_answered(engine, what, client.post("/cda", data=body, content_type="application/xml"))
        tried += 1
    submission = build_submission(sample("cr-biologie-martin.xml"), 5 * 1024 * 1024)
    for what, body in lengthened_json(submission):
        empty(engine)
        assert_answered(engine, what, client.post("/fhir", data=body, content_type="application/fhir+json"))
        tried += 1
    feeder = bearer("system", sub="GAM CH-SAINT-AUBIN")
    for name in ("adt-a01-martin.hl7", "mdm-1-t02-cr-imagerie-irm-lefevre.hl7"):
        for what, body in lengthened_er7((SAMPLES / "hl7v2" / name).read_bytes()):
            empty(engine)
            assert_answered(engine, f"{name} {what}", client.post(
                "/hl7v2", data=body, content_type="x-application/hl7-v2+er7", headers=feeder))
            tried += 1
    assert tried > 300


def test_a_longer_value_in_a_patient_s_consent_is_refused_or_kept(client, database, bearer):
    martin = bearer("patient", patient=MARTIN_INS)
    assert client.post("/cda", data=sample("ldl-ses-martin.xml"), content_type="application/xml").status_code == 201
    consent = {**decision("professional", "permit", "899900000020"), "status": "active"}
    for what, body in lengthened_json(consent):
        answer = client.post("/fhir/Consent", data=body, content_type="application/fhir+json", headers=martin)
        assert answer.status_code < 500, (what, answer.data[:300])


def test_an_identifier_too_long_to_keep_is_refused_by_its_system_not_its_value(client, bearer):
    """What the sender reads: which identifier, by its system; not the value, which may be the
    patient's (operators read refusals too)."""
    ipp = "900000001" + LONGER
    cda = sample("ldl-ses-martin.xml").replace(b'extension="900000001"', f'extension="{ipp}"'.encode())
    refused = client.post("/cda", data=cda, content_type="application/xml")
    assert refused.status_code == 422
    told = refused.json["issue"][0]["diagnostics"]
    assert "Patient (system urn:oid:1.2.250.1.213.1.1.9.1001)" in told and "256" in told and ipp not in told
    message = (SAMPLES / "hl7v2" / "adt-a01-martin.hl7").read_bytes().replace(b"900000001^", f"{ipp}^".encode())
    ack = client.post("/hl7v2", data=message, content_type="x-application/hl7-v2+er7",
                      headers=bearer("system", sub="GAM CH-SAINT-AUBIN")).data.decode()
    assert "MSA|AE|" in ack and "system urn:oid:1.2.250.1.213.1.1.9.1001" in ack and ipp not in ack
    assert client.post("/cda", data=sample("ldl-ses-martin.xml"), content_type="application/xml").status_code == 201
    consent = {**decision("professional", "permit", "899900000020" + LONGER), "status": "active"}
    answer = client.post("/fhir/Consent", data=json.dumps(consent), content_type="application/fhir+json",
                         headers=bearer("patient", patient=MARTIN_INS))
    assert answer.status_code == 422 and "at most 256 characters" in answer.json["issue"][0]["diagnostics"]


def test_a_nul_in_an_hl7v2_message_is_refused_naming_its_segment(client, database, bearer):
    feeder = bearer("system", sub="GAM CH-SAINT-AUBIN")
    adt = (SAMPLES / "hl7v2" / "adt-a01-martin.hl7").read_bytes()
    in_pid = client.post("/hl7v2", data=adt.replace(b"MARTIN^PAUL", b"MAR\x00TIN^PAUL", 1),
                         content_type="x-application/hl7-v2+er7", headers=feeder).data.decode()
    # ERR-2 names the first PID (its occurrence, ERL-2, not its place among the segments) and PID-5.
    assert "MSA|AR|ADT0001" in in_pid and "ERR||PID^1^5|102^" in in_pid and "PID-5 " in in_pid
    in_msh = client.post("/hl7v2", data=adt.replace(b"|GAM|", b"|G\x00AM|", 1),
                         content_type="x-application/hl7-v2+er7", headers=feeder).data.decode()
    assert "MSA|AR|" in in_msh and "MSH holds a NUL character" in in_msh
    # Escaped, as HL7's hex escape writes a byte: unescaped, the name held a NUL (AR "internal error"
    # on PostgreSQL, kept on SQLite); in MSH-9, a 500 on PostgreSQL and a NUL in SQLite's ACK.
    for escaped in (b"MAR\\X00\\TIN^PAUL", b"MAR\\X4100\\TIN^PAUL"):
        ack = client.post("/hl7v2", data=adt.replace(b"MARTIN^PAUL", escaped, 1),
                          content_type="x-application/hl7-v2+er7", headers=feeder).data.decode()
        assert "MSA|AR|ADT0001" in ack and "ERR||PID^1^5|102^" in ack and "escaped" in ack, ack
    in_msh9 = client.post("/hl7v2", data=adt.replace(b"ADT^A01", b"ADT^\\X00\\A01", 1),
                          content_type="x-application/hl7-v2+er7", headers=feeder)
    assert in_msh9.status_code == 200 and "MSH holds a NUL character" in in_msh9.data.decode()
    # In a segment's name, which the ACK cannot echo: it was written into ERR (a 500 on PostgreSQL).
    in_name = client.post("/hl7v2", data=adt.replace(b"\rPID|", b"\rPI\x00D|", 1).replace(b"\nPID|", b"\nPI\x00D|", 1),
                          content_type="x-application/hl7-v2+er7", headers=feeder)
    assert in_name.status_code == 200 and b"\x00" not in in_name.data
    assert "MSA|AR|ADT0001" in in_name.data.decode() and "the name of segment" in in_name.data.decode()
    with database[0].connect() as conn:   # each kept, as received, and refused
        assert conn.execute(select(raw_inputs.c.status)).scalars().all() == ["refused"] * 6


def test_a_nul_in_a_fhir_body_or_a_url_is_refused_before_any_query(client, bearer):
    assert client.post("/cda", data=sample("ldl-ses-martin.xml"), content_type="application/xml").status_code == 201
    martin = bearer("patient", patient=MARTIN_INS)
    consent = {**decision("professional", "permit", "8999\u000000020"), "status": "active"}
    refused = client.post("/fhir/Consent", data=json.dumps(consent), content_type="application/fhir+json",
                          headers=martin)
    assert refused.status_code == 400
    assert refused.json["issue"][0]["expression"] == ["/provision/actor/0/reference/identifier/value"]
    submission = build_submission(sample("cr-biologie-martin.xml"), 5 * 1024 * 1024)
    submission["entry"][0]["resource"]["title"] = "lot\u0000"
    assert client.post("/fhir", data=json.dumps(submission), content_type="application/fhir+json").status_code == 400
    patch = json.dumps([{"op": "replace", "path": "/description", "value": "a\u0000b"}])
    assert client.patch("/fhir/DocumentReference/any", data=patch,
                        content_type="application/json-patch+json").status_code == 400
    for url in ("/fhir/DocumentReference?patient.identifier=urn:oid:1.2.250.1.213.1.4.10|1850%0067511204554",
                "/fhir/DocumentReference/ab%00c", "/fhir/AuditEvent?patient%00=x"):
        answer = client.get(url)
        assert answer.status_code == 400 and answer.json["issue"][0]["code"] == "value", (url, answer.data)
