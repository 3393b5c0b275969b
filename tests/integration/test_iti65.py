"""ITI-65 Provide Document Bundle: all or nothing, metadata checked against the CDA, DSG signatures."""
import base64
import json
from urllib.parse import quote

import pytest
from sqlalchemy import func, select

import profiles
from conftest import at_once, attend_all, recorded_validations, sample
from gateway.demo import build_submission, signed_submission
from gateway.mapping.document import UNSET_ID
from gateway.signature import make_test_pki, sign_documents
from gateway.storage.schema import raw_inputs, resources

FHIR = {"Content-Type": "application/fhir+json"}
LIMIT = 5 * 1024 * 1024


def provide(client, bundle):
    return client.post("/fhir", data=json.dumps(bundle), headers=FHIR)


def document_count(engine):
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(resources)
                            .where(resources.c.res_type == "DocumentReference")).scalar_one()


def test_unsigned_submission(client, database):
    response = provide(client, build_submission(sample("cr-biologie-martin.xml"), LIMIT))
    assert response.status_code == 200, response.json
    attend_all(database[0])
    bundle = response.json
    assert bundle["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in bundle["entry"]]
    assert statuses == ["201 Created", "201 Created", "201 Created", "200 OK"]
    doc_location = bundle["entry"][1]["response"]["location"]
    doc = client.get(f"/fhir/{doc_location.rsplit('/_history', 1)[0]}").json
    assert doc["type"]["coding"][0]["code"] == "11502-2"
    submission_set = client.get(f"/fhir/{bundle['entry'][0]['response']['location'].rsplit('/_history', 1)[0]}").json
    assert submission_set["entry"][0]["item"]["reference"] == f"DocumentReference/{doc['id']}"
    assert submission_set["subject"] == doc["subject"]
    # the same submission again: recognised, nothing new
    again = provide(client, build_submission(sample("cr-biologie-martin.xml"), LIMIT))
    assert again.json["entry"][1]["response"]["status"] == "200 OK"


def test_a_cda_whose_id_root_is_a_uuid_is_named_urn_uuid(client, database):
    """CDA allows a UUID for an id root; FHIR writes it urn:uuid:, in lower case. A submission that
    says so is not a contradiction, and the document is found, and recognised, under that name."""
    uuid = "6F2B1C3A-9D4E-4F5A-8B7C-1D2E3F4A5B6C"
    data = sample("cr-biologie-martin.xml").replace(b'<id root="1.2.250.1.213.1.1.9.2.7.1"/>',
                                                    f'<id root="{uuid}"/>'.encode())
    assert uuid.encode() in data
    bundle = build_submission(data, LIMIT)
    submitted = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DocumentReference")
    assert submitted["masterIdentifier"]["value"] == f"urn:uuid:{uuid.lower()}"
    assert provide(client, bundle).status_code == 200
    attend_all(database[0])
    found = client.get("/fhir/DocumentReference", query_string={
        "identifier": f"urn:ietf:rfc:3986|urn:uuid:{uuid.lower()}"}).json
    assert found["total"] == 1
    again = client.post("/cda", data=data, headers={"Content-Type": "application/xml"})
    assert again.status_code == 200 and again.headers["Location"].endswith(found["entry"][0]["resource"]["id"])


def test_signed_submission_keeps_the_signature_linked(client, settings, database):
    bundle = signed_submission(settings, sample("synthese-moreau.xml"))
    response = provide(client, bundle)
    assert response.status_code == 200, response.json
    attend_all(database[0])
    signature_location = response.json["entry"][4]["response"]["location"].rsplit("/_history", 1)[0]
    signature = client.get(f"/fhir/{signature_location}").json
    document_id = response.json["entry"][1]["response"]["location"].split("/")[1]
    assert signature["relatesTo"] == [{"code": "signs", "target": {"reference": f"DocumentReference/{document_id}"}}]
    assert signature["content"][0]["format"]["code"] == "urn:ihe:iti:dsg:detached:2014"
    found = client.get("/fhir/DocumentReference", query_string={"format": "urn:ihe:iti:dsg:detached:2014"}).json
    assert found["total"] == 1


def test_tampered_document_is_refused_and_nothing_stored(client, settings, database):
    bundle = signed_submission(settings, sample("synthese-moreau.xml"))
    tampered = sample("synthese-moreau.xml").replace(b"trois mois", b"six mois")
    bundle["entry"][2]["resource"]["data"] = base64.b64encode(tampered).decode()
    bundle["entry"][1]["resource"]["content"][0]["attachment"].pop("hash")
    bundle["entry"][1]["resource"]["content"][0]["attachment"].pop("size")
    response = provide(client, bundle)
    assert response.status_code == 422
    assert "digest" in response.json["issue"][0]["diagnostics"]
    assert document_count(database[0]) == 0


def test_signature_from_an_untrusted_signer_is_refused(client, settings, tmp_path):
    make_test_pki(tmp_path / "other")
    cda = sample("synthese-moreau.xml")
    signature = sign_documents([("urn:oid:1.2.250.1.213.1.1.9.2.8.1", cda)], (tmp_path / "other/signer-key.pem").read_bytes(),
                               (tmp_path / "other/signer.pem").read_bytes())
    response = provide(client, build_submission(cda, LIMIT, signature))
    assert response.status_code == 422 and "trust anchors" in response.json["issue"][0]["diagnostics"]


@pytest.mark.parametrize("change, expression", [
    (lambda b: b["entry"][1]["resource"].__setitem__("masterIdentifier", {"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.3"}),
     "Bundle.entry[1].resource.masterIdentifier"),
    (lambda b: b["entry"][1]["resource"].__setitem__("type", {"coding": [{"system": "http://loinc.org", "code": "34874-8"}]}),
     "Bundle.entry[1].resource.type"),
    (lambda b: b["entry"][3]["resource"]["identifier"][0].__setitem__("value", "292086938701277"),
     "Bundle.entry[1].resource.subject"),
    (lambda b: b.__setitem__("type", "batch"), "Bundle.type"),
    (lambda b: b["entry"][1]["resource"]["content"][0]["attachment"].__setitem__("url", "urn:uuid:nowhere"),
     "Bundle.entry[1].resource.content[0].attachment.url"),
    (lambda b: b["entry"][1]["resource"]["content"][0]["attachment"].__setitem__("size", 3),
     "Bundle.entry[1].resource.content[0].attachment.size"),
])
def test_contradictions_are_refused(client, database, change, expression):
    bundle = build_submission(sample("cr-biologie-martin.xml"), LIMIT)
    change(bundle)
    response = provide(client, bundle)
    assert response.status_code == 422, response.json
    assert response.json["issue"][0]["expression"] == [expression]
    assert document_count(database[0]) == 0


def test_a_hash_written_as_xds_writes_it_is_refused_saying_how_fhir_writes_it(client, database):
    """IHE MHD's own example submissions give attachment.hash as the base64 of the SHA-1's
    hexadecimal text, as XDS writes a hash (hexBinary; IHE/ITI.MHD issue 248); FHIR's is the base64
    of its 20 bytes. A client that followed them was told "not the SHA-1 of the Binary" of a hash that
    was, written otherwise. The integrity check stays, and the refusal gives the hash FHIR's way."""
    import hashlib

    bundle = build_submission(sample("cr-biologie-martin.xml"), LIMIT)
    digest = hashlib.sha1(sample("cr-biologie-martin.xml")).digest()
    attachment = bundle["entry"][1]["resource"]["content"][0]["attachment"]
    assert attachment["hash"] == base64.b64encode(digest).decode()
    attachment["hash"] = base64.b64encode(digest.hex().encode()).decode()
    refused = provide(client, bundle)
    assert refused.status_code == 422, refused.json
    issue = refused.json["issue"][0]
    assert issue["expression"] == ["Bundle.entry[1].resource.content[0].attachment.hash"]
    assert "as XDS writes a hash (hexBinary)" in issue["diagnostics"]
    assert issue["diagnostics"].endswith(base64.b64encode(digest).decode())
    assert document_count(database[0]) == 0
    # ITI-105: the same, of the document its DocumentReference carries.
    published = {k: v for k, v in bundle["entry"][1]["resource"].items() if k != "id"}
    published["content"] = [{**published["content"][0], "attachment": {
        **attachment, "data": base64.b64encode(sample("cr-biologie-martin.xml")).decode()}}]
    published["content"][0]["attachment"].pop("url", None)
    refused = client.post("/fhir/DocumentReference", data=json.dumps(published), headers=FHIR)
    assert refused.status_code == 422, refused.json
    assert "as XDS writes a hash (hexBinary)" in refused.json["issue"][0]["diagnostics"]
    # Written FHIR's way, the submission is registered.
    attachment["hash"] = base64.b64encode(digest).decode()
    assert provide(client, bundle).status_code == 200


def test_a_bad_document_refuses_the_whole_bundle(client, database):
    good = build_submission(sample("cr-biologie-martin.xml"), LIMIT)
    bad = build_submission(sample("ldl-ses-martin.xml"), LIMIT)
    bad["entry"][2]["resource"]["data"] = base64.b64encode(sample("bad-ins-key.xml")).decode()
    bad["entry"][1]["resource"]["content"][0]["attachment"] = {"contentType": "text/xml", "url": bad["entry"][2]["fullUrl"]}
    good["entry"] += bad["entry"][1:3]
    good["entry"][0]["resource"]["entry"].append({"item": {"reference": bad["entry"][1]["fullUrl"]}})
    response = provide(client, good)
    assert response.status_code == 422
    assert response.json["issue"][0]["expression"][0].startswith("Bundle.entry[4].resource -> /ClinicalDocument")
    assert document_count(database[0]) == 0


def test_a_submission_of_more_entries_than_one_transaction_takes_is_refused_and_kept(client, database):
    """5,000 small documents in one 5 MB Bundle took 17 s, SQLite's writer held all along."""
    bundle = build_submission(sample("cr-biologie-martin.xml"), LIMIT)
    bundle["entry"] += [{"fullUrl": f"urn:uuid:00000000-0000-4000-8000-{n:012d}",
                         "resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}
                        for n in range(497)]
    response = provide(client, bundle)
    assert response.status_code == 400 and response.json["issue"][0]["code"] == "too-costly"
    assert "501 entries, over the 500" in response.json["issue"][0]["diagnostics"]
    assert document_count(database[0]) == 0
    with database[0].connect() as conn:
        assert conn.execute(select(raw_inputs.c.status)).scalars().all() == ["refused"]


def test_an_element_the_pdsm_profiles_prohibit_is_refused_not_kept(client, database, bearer):
    """A SubmissionSet is kept as submitted, and a document that is not a CDA keeps its submitted
    metadata: a List.entry.date or a DocumentReference.docStatus was kept, and every read of it
    failed the official check."""
    bundle = build_submission(sample("cr-biologie-martin.xml"), LIMIT)
    bundle["entry"][0]["resource"]["entry"][0]["date"] = "2026-03-10"
    refused = provide(client, bundle)
    assert refused.status_code == 422
    assert refused.json["issue"][0]["diagnostics"] == "List.entry[0].date: is not allowed: PDSm prohibits it (max 0)"
    assert client.post("/cda", data=sample("ldl-ses-martin.xml"), headers={"Content-Type": "application/xml"}
                       ).status_code == 201
    pdf = {"resourceType": "DocumentReference", "docStatus": "final",
           "contained": [{"resourceType": "Practitioner", "id": "author",
                          "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.1", "value": "899900000012"}]}],
           "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.250.1.213.1.1.9.78"},
           "status": "current", "type": {"coding": [{"system": "http://loinc.org", "code": "11488-4"}]},
           "subject": {"reference": "Patient?identifier=urn:oid:1.2.250.1.213.1.4.10|185067511204554"},
           "author": [{"reference": "#author"}],
           "content": [{"attachment": {"contentType": "application/pdf",
                                       "data": base64.b64encode(b"%PDF-1.4\n%%EOF\n").decode()}}]}
    published = client.post("/fhir/DocumentReference", data=json.dumps(pdf), headers=FHIR)
    assert published.status_code == 422 and "docStatus: is not allowed" in published.json["issue"][0]["diagnostics"]
    assert document_count(database[0]) == 1


def test_what_a_cda_s_documentreference_may_not_carry_is_refused_not_ignored(client, database):
    """A CDA's DocumentReference is made from the CDA's header, so what its submitted one carried
    beside was ignored: a docStatus, which PDSm prohibits (refused for a document that is not a
    CDA), and a modifier extension, which FHIR forbids processing a resource without. The gateway
    understands no modifier extension: one is refused at any depth, in any resource sent."""
    modifier = [{"url": "http://example.org/fhir/StructureDefinition/not-for-the-record", "valueBoolean": True}]
    for change, code, where in (
            (lambda d: d.update(docStatus="final"), "invalid", "Bundle.entry[1].resource.docStatus"),
            (lambda d: d.update(modifierExtension=modifier), "not-supported", "/entry/1/resource/modifierExtension/0"),
            (lambda d: d["content"][0].update(modifierExtension=modifier), "not-supported",
             "/entry/1/resource/content/0/modifierExtension/0")):
        bundle = build_submission(sample("cr-biologie-martin.xml"), LIMIT)
        change(next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DocumentReference"))
        refused = provide(client, bundle)
        assert refused.status_code == 422 and refused.json["issue"][0]["code"] == code, refused.json
        assert refused.json["issue"][0]["expression"] == [where]
    pdf = {"resourceType": "DocumentReference", "status": "current",
           "subject": {"reference": "Patient?identifier=urn:oid:1.2.250.1.213.1.4.10|185067511204554"},
           "content": [{"attachment": {"contentType": "application/pdf", "data": "JVBERi0xLjQKJSVFT0YK"},
                        "modifierExtension": modifier}]}
    published = client.post("/fhir/DocumentReference", data=json.dumps(pdf), headers=FHIR)
    assert published.status_code == 422 and published.json["issue"][0]["code"] == "not-supported"
    assert document_count(database[0]) == 0


def test_an_element_sent_twice_in_json_is_refused_not_half_read(client, database, bearer):
    """A JSON key given twice: the last was kept and the first dropped, silently (a document's
    subject, a Consent's decision); FHIR's validator refuses such a resource."""
    bundle = build_submission(sample("cr-biologie-martin.xml"), LIMIT)
    document = bundle["entry"][1]["resource"]
    bundle["entry"][1]["resource"] = {"subject_": {"reference": "Patient/someone-else"}, **document}
    twice = json.dumps(bundle).replace('"subject_"', '"subject"')
    refused = client.post("/fhir", data=twice, headers=FHIR)
    assert refused.status_code == 400, refused.data[:300]
    assert refused.json["issue"][0]["expression"] == ["/entry/1/resource/subject"]
    assert document_count(database[0]) == 0
    as_patient = bearer("patient", patient="185067511204554")
    consent = ('{"resourceType": "Consent", "status": "active", "status": "rejected", "scope": {}, '
               '"category": [], "patient": {}}')
    answer = client.post("/fhir/Consent", data=consent, headers={**FHIR, **as_patient})
    assert answer.status_code == 400 and answer.json["issue"][0]["expression"] == ["/status"], answer.data[:300]
    assert provide(client, json.loads(twice)).status_code == 200   # the last one kept: what it was read as


@pytest.mark.parametrize("change, expression", [
    (lambda b: b["entry"][1]["resource"].__setitem__("category", None), "/entry/1/resource/category"),   # was a 500
    (lambda b: b["entry"][0]["resource"].__setitem__("note", None), "/entry/0/resource/note"),
    (lambda b: b["entry"][0]["resource"].__setitem__("note", []), "/entry/0/resource/note"),
    (lambda b: b["entry"][1]["resource"]["content"][0].__setitem__("format", {}), "/entry/1/resource/content/0/format"),
], ids=["null category", "null note", "empty note", "empty format"])
def test_a_null_or_an_empty_element_is_refused_where_it_stands(client, database, change, expression):
    """The FHIR models read a null, `[]` or `{}` as an element left out, but what is kept as
    submitted (a SubmissionSet) kept it, and was served with it; a null category was a 500."""
    bundle = build_submission(sample("cr-biologie-martin.xml"), LIMIT)
    change(bundle)
    refused = provide(client, bundle)
    assert refused.status_code == 400, refused.data[:300]
    assert refused.json["issue"][0]["expression"] == [expression]
    assert "FHIR's JSON does not allow" in refused.json["issue"][0]["diagnostics"]
    assert document_count(database[0]) == 0


DESIGNATION = "https://profiles.ihe.net/ITI/MHD/StructureDefinition/ihe-designationType"


@pytest.mark.parametrize("change, expression", [
    (lambda s: s.pop("date"), "date"),
    (lambda s: s.__setitem__("status", "retired"), "status"),
    (lambda s: s.__setitem__("mode", "snapshot"), "mode"),
    (lambda s: s["code"]["coding"][0].pop("system"), "code"),
    (lambda s: s["identifier"][0].pop("system"), "identifier[0]"),
    (lambda s: s["identifier"][0].__setitem__("value", "urn:oid:1.2.3"), "identifier[0]"),   # entryUUID
    (lambda s: s["identifier"].append({"use": "usual", "system": "urn:ietf:rfc:3986", "value": "urn:uuid:"
                                       "4b1e5a6e-8f3c-4c9e-9d5a-2f7e1c3b6a90"}), "identifier[1]"),   # uniqueId
    (lambda s: s["identifier"].extend([{"use": "usual", "system": "urn:ietf:rfc:3986", "value": f"urn:oid:1.2.{n}"}
                                       for n in (3, 4)]), "identifier"),
    (lambda s: s.__setitem__("extension", [{"url": DESIGNATION, "valueString": "CR"}]),
     "/entry/0/resource/extension/0"),   # refused as its definition has it, where the body is read
    (lambda s: s.__setitem__("contained", [{"resourceType": "Organization", "id": "o", "name": "x"}]), "contained[0]"),
], ids=["no date", "status", "mode", "code system", "identifier system", "entryUUID not a UUID",
        "uniqueId not an OID", "two uniqueIds", "designation value", "unreferenced contained"])
def test_a_submission_set_the_pdsm_profile_refuses_is_refused_not_kept(client, database, change, expression):
    """A SubmissionSet is kept as submitted: each of these was registered, and every read of it
    failed the official check (found by test_mutated_fhir_submissions)."""
    bundle = build_submission(sample("cr-biologie-martin.xml"), LIMIT)
    change(bundle["entry"][0]["resource"])
    refused = provide(client, bundle)
    assert refused.status_code == 422, refused.data[:300]
    assert refused.json["issue"][0]["expression"] == [
        expression if expression.startswith("/") else f"Bundle.entry[0].resource.{expression}"]
    assert document_count(database[0]) == 0


def test_a_primitive_in_another_json_type_is_refused_where_it_stands(client, database, bearer):
    """The FHIR models read "true" as true, "3" as 3, and a number as a date: the resource was kept
    as sent and served so, and a SubmissionSet's date given as a number was a 500."""
    bundle = build_submission(sample("cr-biologie-martin.xml"), LIMIT)
    bundle["entry"][0]["resource"]["date"] = 1
    refused = provide(client, bundle)
    assert refused.status_code == 400 and refused.json["issue"][0]["expression"] == ["/entry/0/resource/date"]
    assert "as a string" in refused.json["issue"][0]["diagnostics"]
    for patient, where in [({"active": "true"}, "/active"), ({"multipleBirthInteger": "3"}, "/multipleBirthInteger"),
                           ({"multipleBirthInteger": 3.0}, "/multipleBirthInteger")]:
        answer = client.post("/fhir/Patient", data=json.dumps({"resourceType": "Patient", **patient}), headers=FHIR)
        assert answer.status_code == 400 and answer.json["issue"][0]["expression"] == [where], answer.data[:300]
    assert document_count(database[0]) == 0


@pytest.mark.parametrize("left_out", ["entry", "the document", "the signature"])
def test_a_submission_set_that_leaves_out_a_document_of_its_submission_is_refused(client, settings, database,
                                                                                 left_out):
    """XDS associates each document of a submission with its SubmissionSet (HasMember), and every
    submission of MHD's and PDSM4DMP's examples lists its documents. One left out was registered in
    no SubmissionSet, and the submission sent again registered a second SubmissionSet, which listed
    nothing new (a SubmissionSet without uniqueId is known by what it lists)."""
    bundle = signed_submission(settings, sample("synthese-moreau.xml"))
    submission_set = bundle["entry"][0]["resource"]
    if left_out == "entry":
        del submission_set["entry"]
    else:
        full_url = bundle["entry"][1 if left_out == "the document" else 4]["fullUrl"]
        submission_set["entry"] = [e for e in submission_set["entry"] if e["item"]["reference"] != full_url]
    for _ in range(2):
        refused = provide(client, bundle)
        assert refused.status_code == 422, refused.json
        assert refused.json["issue"][0]["expression"] == ["Bundle.entry[0].resource.entry"]
        assert "HasMember" in refused.json["issue"][0]["diagnostics"]
    assert document_count(database[0]) == 0
    with database[0].connect() as conn:
        assert conn.execute(select(func.count()).select_from(resources)).scalar_one() == 0


@pytest.mark.parametrize("change, where, status", [
    (lambda b: b["entry"][0]["resource"]["identifier"][0].__setitem__("system", " "), "/identifier/0/system", 422),
    (lambda b: b["entry"][0]["resource"]["identifier"][0].__setitem__("system", ""), "/identifier/0/system", 400),
    (lambda b: b["entry"][1]["resource"]["masterIdentifier"].__setitem__("system", "urn:ietf:rfc: 3986"),
     "/masterIdentifier/system", 422),
    (lambda b: b["entry"][0]["resource"]["meta"]["profile"].append("https://example.org/a profile"), "/meta/profile/1",
     422),
    (lambda b: b["entry"][0]["resource"].update(contained=[{"resourceType": "Device", "id": "d" * 65}],
                                                source={"reference": "#" + "d" * 65}), "/contained/0/id", 422),
    (lambda b: b["entry"][0]["resource"].update(extension=[{"url": "https://example.org/x"}]), "/extension/0", 422),
    (lambda b: b["entry"][0]["resource"].update(extension=[
        {"url": "https://example.org/x", "valueString": "x", "extension": [{"url": "y", "valueString": "y"}]}]),
     "/extension/0", 422),
    (lambda b: b["entry"][1]["resource"].update(author=[{"reference": "Practitioner/a b"}]), "/author/0/reference", 422),
    (lambda b: b["entry"][1]["resource"].update(author=[{"reference": "Consent/x"}]), "/author/0/reference", 422),
    (lambda b: b["entry"][1]["resource"].update(author=[{"reference": "Coding/x"}]), "/author/0/reference", 422),
    (lambda b: b["entry"][1]["resource"].update(author=[{"reference": "Practitioner?identifier=urn:oid:1.2|8"}]),
     "/author/0/reference", 422),
], ids=["uri of a space", "empty uri", "uri with a space", "canonical with a space", "id of 65 characters",
        "extension without a value", "extension with both", "reference with a space", "reference to a type not allowed",
        "reference to a datatype", "conditional reference elsewhere than a subject"])
@pytest.mark.parametrize("form", ["json", "xml"])
def test_a_primitive_its_fhir_type_refuses_is_refused_where_the_models_take_it(client, database, change, where,
                                                                               status, form):
    """The models' uri, url and canonical take whitespace (their pattern, \\S*, is not anchored), an
    empty value, an id of up to 255 characters, an extension with both a value and extensions or
    neither, and any string as a reference: a SubmissionSet's identifier system ' ' was kept as
    submitted and failed the official check (found by test_mutated_fhir_xml_submissions), and so
    were the others."""
    from gateway.fhir.formats import to_xml

    bundle = build_submission(sample("cr-biologie-martin.xml"), LIMIT)
    change(bundle)
    entry = 1 if where.startswith(("/masterIdentifier", "/author")) else 0
    body, content_type = json.dumps(bundle), "application/fhir+json"
    if form == "xml":
        body, content_type = to_xml(bundle), "application/fhir+xml"
    refused = client.post("/fhir", data=body, headers={"Content-Type": content_type, "Accept": "application/fhir+json"})
    assert refused.status_code == status, refused.data[:300]
    assert refused.json["issue"][0]["expression"][0].endswith(f"/entry/{entry}/resource{where}"), refused.json
    assert document_count(database[0]) == 0


def test_a_string_keeps_its_spaces_and_an_id_its_64_characters(client, database):
    """What FHIR's types allow stays allowed: a string's spaces, an id of 64 characters."""
    bundle = build_submission(sample("cr-biologie-martin.xml"), LIMIT)
    bundle["entry"][0]["resource"].update(title=" Soumission  du soir ", contained=[{"resourceType": "Device", "id": "d" * 64}],
                                          source={"reference": "#" + "d" * 64})
    provided = provide(client, bundle)
    assert provided.status_code == 200, provided.data[:300]
    attend_all(database[0])
    kept = client.get("/fhir/" + provided.json["entry"][0]["response"]["location"]).json
    assert kept["title"] == " Soumission  du soir " and kept["contained"][0]["id"] == "d" * 64
    if profiles.available():
        checked = profiles.Collected()
        checked.add(kept)
        assert not checked.errors()


def test_a_full_url_given_twice_or_a_put_is_refused(client, database):
    """A second entry under one fullUrl made a reference to it name either (bdl-7); a PUT, an
    update, was taken for a POST and created a new resource. A Patient, sent for reference and
    never written, may come with either."""
    bundle = build_submission(sample("cr-biologie-martin.xml"), LIMIT)
    twice = json.loads(json.dumps(bundle))
    twice["entry"].append(json.loads(json.dumps(twice["entry"][2])))
    refused = provide(client, twice)
    assert refused.status_code == 422 and refused.json["issue"][0]["expression"] == ["Bundle.entry[4].fullUrl"]
    assert "(bdl-7)" in refused.json["issue"][0]["diagnostics"]
    for index in (0, 1, 2):
        put = json.loads(json.dumps(bundle))
        put["entry"][index]["request"]["method"] = "PUT"
        refused = provide(client, put)
        assert refused.status_code == 422, refused.data[:300]
        assert refused.json["issue"][0]["expression"] == [f"Bundle.entry[{index}].request.method"]
    assert document_count(database[0]) == 0
    bundle["entry"][3]["request"] = {"method": "PUT", "url": "Patient/whatever"}
    assert provide(client, bundle).status_code == 200


@pytest.mark.parametrize("index, request_given, refused_at", [
    (1, {"method": "POST", "url": "DocumentReference", "ifNoneExist": "identifier=x"}, "request.ifNoneExist"),
    (2, {"method": "POST", "url": "Binary", "ifMatch": 'W/"1"'}, "request.ifMatch"),
    (0, {"method": "POST", "url": "List", "ifNoneMatch": "*"}, "request.ifNoneMatch"),
    (1, {"method": "POST", "url": "Binary"}, "request.url"),
    (2, {"method": "POST", "url": "DocumentReference"}, "request.url"),
    (1, {"method": "POST", "url": "http://gateway.test/fhir/DocumentReference"}, None),
    (3, {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=x"}, None)])   # never written
def test_an_entry_is_written_at_its_type_and_unconditionally(client, database, index, request_given, refused_at):
    """A condition on an entry was ignored (an ifNoneExist, and the entry created anyway), and so
    was a request.url naming another type than its resource's: both are refused. A document sent
    again is known by its uniqueId."""
    bundle = build_submission(sample("cr-biologie-martin.xml"), LIMIT)
    bundle["entry"][index]["request"] = request_given
    answer = provide(client, bundle)
    if refused_at is None:
        assert answer.status_code == 200, answer.json
        return
    assert answer.status_code == 422 and answer.json["issue"][0]["expression"] == [f"Bundle.entry[{index}].{refused_at}"]
    assert document_count(database[0]) == 0


def test_not_json_and_wrong_media_type(client):
    assert client.post("/fhir", data="{", headers=FHIR).status_code == 400
    assert client.post("/fhir", data="{}", headers={"Content-Type": "text/plain"}).status_code == 415


@pytest.mark.parametrize("data, refusal", [
    # Long: checked by decoding it as the body is loaded, not by the FHIR model.
    ("Q" * (70 * 1024) + "!", "the body is not a valid FHIR Bundle: a Binary's data is not base64"),
    # Short: checked by the FHIR model, then decoded.
    ("QUJD!", "Binary.data is not base64"),
])
def test_a_binary_s_data_that_is_not_base64_is_refused_whatever_its_length(client, database, data, refusal):
    bundle = build_submission(sample("cr-biologie-martin.xml"), LIMIT)
    bundle["entry"][2]["resource"]["data"] = data
    response = provide(client, bundle)
    assert response.status_code == 422, response.json
    assert response.json["issue"][0]["diagnostics"] == refusal
    assert document_count(database[0]) == 0


def test_base64_wrapped_in_lines_as_mime_encoders_write_it_is_read(client, database):
    """base64Binary allows whitespace: a client library that wraps its base64 at 76 characters."""
    bundle = build_submission(sample("cr-biologie-martin.xml"), LIMIT)
    bundle["entry"][2]["resource"]["data"] = base64.encodebytes(sample("cr-biologie-martin.xml")).decode()
    assert "\n" in bundle["entry"][2]["resource"]["data"]
    response = provide(client, bundle)
    assert response.status_code == 200, response.json
    assert document_count(database[0]) == 1


def test_a_replacement_its_submission_names_is_validated_before_its_write_transaction(client, database, bearer,
                                                                                        monkeypatch):
    """A new version whose CDA names no parent replaces the document its DocumentReference's
    relatesTo names. That parent is found in the unit of work; the DocumentReference validated
    before it still stands (its relatesTo is set from the parent found), and is not validated
    again under the write lock: it was, 2 to 3 ms of CPU a replacement."""
    from gateway.services import documents

    radiologist = {**FHIR, **bearer("doctor", sub="899900000038")}
    first = client.post("/fhir", data=json.dumps(build_submission(sample("cr-imagerie-irm-lefevre.xml"), LIMIT)),
                        headers=radiologist)
    assert first.status_code == 200, first.json
    first_id = first.json["entry"][1]["response"]["location"].split("/")[1]
    cda = sample("cr-imagerie-irm-lefevre-v2.xml")
    start, end = cda.index(b"<relatedDocument"), cda.index(b"</relatedDocument>") + len(b"</relatedDocument>")
    bundle = build_submission(cda[:start] + cda[end:], LIMIT)
    bundle["entry"][1]["resource"]["relatesTo"] = [
        {"code": "replaces", "target": {"reference": f"DocumentReference/{first_id}"}}]
    validated = recorded_validations(monkeypatch, documents)
    second = client.post("/fhir", data=json.dumps(bundle), headers=radiologist)

    assert second.status_code == 200, second.json
    assert ("DocumentReference", False) in validated and ("DocumentReference", True) not in validated
    attend_all(database[0])
    second_id = second.json["entry"][1]["response"]["location"].split("/")[1]
    replacement = client.get(f"/fhir/DocumentReference/{second_id}").json
    assert replacement["relatesTo"] == [{"code": "replaces", "target": {"reference": f"DocumentReference/{first_id}"}}]
    assert client.get(f"/fhir/DocumentReference/{first_id}").json["status"] == "superseded"


def test_a_submission_set_is_validated_before_its_write_transaction(client, database, bearer, monkeypatch):
    """A submission's SubmissionSet (ITI-65's, and the one the gateway writes for ITI-105) is
    completed and validated before the unit of work, under stand-in ids: there, only its id, its
    subject and its entries' items are set. It was validated under the write lock."""
    from gateway.services import documents, provide

    validated = recorded_validations(monkeypatch, documents, provide)
    radiologist = {**FHIR, **bearer("doctor", sub="899900000038")}
    answer = client.post("/fhir", data=json.dumps(build_submission(sample("cr-imagerie-irm-lefevre.xml"), LIMIT)),
                         headers=radiologist)

    assert answer.status_code == 200, answer.json
    assert ("List", False) in validated and ("List", True) not in validated
    list_id = answer.json["entry"][0]["response"]["location"].split("/")[1]
    document_id = answer.json["entry"][1]["response"]["location"].split("/")[1]
    attend_all(database[0])
    submission_set = client.get(f"/fhir/List/{list_id}").json
    document = client.get(f"/fhir/DocumentReference/{document_id}").json
    assert submission_set["id"] == list_id and submission_set["subject"] == document["subject"]
    assert submission_set["entry"] == [{"item": {"reference": f"DocumentReference/{document_id}"}}]
    assert UNSET_ID not in json.dumps(submission_set)


def two_documents(first: bytes, second: bytes) -> dict:
    """One submission of two documents of the same patient, in this order."""
    bundle, other = build_submission(first, LIMIT), build_submission(second, LIMIT)
    patient = bundle["entry"][3]["fullUrl"]
    document, binary = (dict(e, resource={**e["resource"]}) for e in other["entry"][1:3])
    document["resource"]["subject"] = {"reference": patient}
    bundle["entry"][0]["resource"]["entry"].append({"item": {"reference": document["fullUrl"]}})
    bundle["entry"][3:3] = [document, binary]
    return bundle


def test_two_gateways_that_deadlock_over_two_submissions_lose_nothing(client, second_gateway, database, backend,
                                                                      monkeypatch):
    """PostgreSQL, two gateways: each stores one of two documents and then waits for the other's
    lock on the second (the same two documents, submitted in opposite orders). PostgreSQL breaks
    the deadlock by failing one statement: that submission is answered 503, to be sent again,
    with nothing of it stored; the other is registered. Sent again, it finds both documents."""
    if backend == "sqlite":
        pytest.skip("SQLite has one writer: the two transactions cannot overlap")
    import threading

    from gateway.storage.repository import UnitOfWork

    lab, summary = sample("cr-biologie-martin.xml"), sample("ldl-ses-martin.xml")
    # The patient and the authors are known already (earlier reports): neither transaction creates them.
    for data, uid in ((lab, b"1.2.250.1.213.1.1.9.2.7.1"), (summary, b"1.2.250.1.213.1.1.9.2.1.1")):
        assert provide(client, build_submission(data.replace(uid, uid + b"9"), LIMIT)).status_code == 200
    both_hold_one = threading.Barrier(2, timeout=60)
    hold, held = UnitOfWork._hold_document_identifier, set()

    def hold_then_meet(self, system, value):
        hold(self, system, value)
        if id(self) not in held:   # the first document's lock: wait until the other gateway holds its own
            held.add(id(self))
            both_hold_one.wait()

    monkeypatch.setattr(UnitOfWork, "_hold_document_identifier", hold_then_meet)
    submissions = {"lab first": (client, two_documents(lab, summary)),
                   "summary first": (second_gateway, two_documents(summary, lab))}
    answers = at_once({name: lambda gateway=gateway, bundle=bundle: provide(gateway, bundle)
                       for name, (gateway, bundle) in submissions.items()}, both_hold_one)
    monkeypatch.undo()
    statuses = sorted(answer.status_code for answer in answers.values())
    assert statuses == [200, 503], {name: answer.json for name, answer in answers.items()}
    [refused] = [name for name, answer in answers.items() if answer.status_code == 503]
    assert answers[refused].headers["Retry-After"] and answers[refused].json["issue"][0]["code"] == "transient"
    assert document_count(database[0]) == 4
    with database[0].connect() as conn:
        assert sorted(conn.execute(select(raw_inputs.c.status)).scalars()) == ["failed"] + ["processed"] * 3
    again = provide(client, submissions[refused][1])
    assert [e["response"]["status"] for e in again.json["entry"]][1:3] == ["200 OK", "200 OK"]
    assert document_count(database[0]) == 4


def test_a_submission_set_identifier_already_naming_other_documents_is_refused(client, database):
    """The same submission sent again is answered 200 and registers nothing; another submission
    under a SubmissionSet identifier already registered had its documents registered while the
    answer named the earlier SubmissionSet, which did not list them. A uniqueId names one
    SubmissionSet, as in XDS: 409, nothing kept."""
    first = build_submission(sample("cr-biologie-martin.xml"), LIMIT)
    assert provide(client, first).status_code == 200
    again = provide(client, first)
    assert [e["response"]["status"] for e in again.json["entry"]][:2] == ["200 OK", "200 OK"]
    other = build_submission(sample("ldl-ses-martin.xml"), LIMIT)
    other["entry"][0]["resource"]["identifier"] = first["entry"][0]["resource"]["identifier"]
    refused = provide(client, other)
    assert refused.status_code == 409 and refused.json["issue"][0]["code"] == "duplicate", refused.json
    assert refused.json["issue"][0]["expression"] == ["Bundle.entry[0].resource.identifier"]
    assert document_count(database[0]) == 1


@pytest.mark.parametrize("name_the_patient", [
    lambda b, ins: b["entry"][3]["resource"]["identifier"][0].__setitem__("value", ins),
    lambda b, ins: b["entry"][1]["resource"].__setitem__(
        "subject", {"reference": f"Patient?identifier=urn:oid:1.2.250.1.213.1.4.10|{quote(ins)}"}),
    lambda b, ins: b["entry"][1]["resource"].__setitem__(
        "subject", {"identifier": {"system": "urn:oid:1.2.250.1.213.1.4.10", "value": ins}}),
], ids=["Patient entry", "conditional reference", "identifier"])
def test_a_subject_naming_the_ins_with_its_spaces_designates_the_cda_s_patient(client, database, name_the_patient):
    """An INS is printed in groups (a health card, a letter): the CDA's is read without its spaces,
    and so is the subject's, however it names the patient."""
    bundle = build_submission(sample("cr-biologie-martin.xml"), LIMIT)
    name_the_patient(bundle, "1 85 06 75 112 045 54")
    response = provide(client, bundle)
    assert response.status_code == 200, response.json
    assert document_count(database[0]) == 1


def test_a_patient_entry_that_describes_another_person_is_refused(client, database):
    """The Patient entry a submission's subject names, sent for reference, describes the patient too:
    a woman born in 1990 where the CDA, and the record, say a man born in 1985 is refused at the
    subject, nothing kept; the same person, her identifiers alone or her traits agreeing, is taken."""
    bundle = build_submission(sample("cr-biologie-martin.xml"), LIMIT)
    patient = bundle["entry"][3]["resource"]
    patient.update(gender="female", birthDate="1990-01-01")
    refused = provide(client, bundle)
    assert refused.status_code == 422, refused.json
    issue = refused.json["issue"][0]
    assert issue["expression"] == ["Bundle.entry[1].resource.subject"] and "sex and birth date" in issue["diagnostics"]
    assert document_count(database[0]) == 0
    patient.update(gender="male", birthDate="1985-06")
    assert provide(client, bundle).status_code == 200
    assert document_count(database[0]) == 1
