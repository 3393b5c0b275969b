"""An imaging manifest, a DICOM Key Object Selection (KOS), published beside its report as IHE
XDS-I.b and the DMP's imaging project (DRIM-M) have it: what its own header says (its SOP class,
its SOP Instance UID, its patient, its studies) agrees with its metadata and its record."""
import base64
import json
from html import unescape

import pytest
from sqlalchemy import func, select

import profiles
from conftest import attend_all, imaging_manifest, sample
from gateway.dicom import KOS_SOP_CLASS, UID_REGISTRY
from gateway.mapping import codes
from gateway.mapping.codes import STUDY_INSTANCE_UID
from gateway.storage.schema import resources
from test_patient_space import MARTIN, MOREAU, fed_with_accounts, sign_in

FHIR = {"Content-Type": "application/fhir+json"}
SOP_INSTANCE, STUDY = "1.2.250.1.999.1.7.1", "1.2.250.1.999.1.7.2"
RADIOLOGIST = "899900000038"   # Dr FAURE, who wrote Léa MOREAU's imaging report


def manifest_reference(data: bytes) -> dict:
    """The KOS's DocumentReference as the DRIM-M example publication describes its KOS: type IMG-KOS
    (TRE_A05), class 31, format its SOP class in the DICOM UID registry, uniqueId its SOP Instance
    UID; ITI-105's, with the data."""
    return {
        "resourceType": "DocumentReference", "status": "current",
        "contained": [{"resourceType": "Practitioner", "id": "author",
                       "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.1", "value": RADIOLOGIST}]}],
        "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:oid:{SOP_INSTANCE}"},
        "type": {"coding": [{"system": codes.nos_system("TRE_A05-TypeDocComplementaire"), "code": "IMG-KOS"}]},
        "category": [{"coding": [{"system": codes.CLASS_SYSTEM, "code": "31"}]}],
        "subject": {"reference": f"Patient?identifier=urn:oid:1.2.250.1.213.1.4.10|{MOREAU}"},
        "author": [{"reference": "#author"}],
        "content": [{"attachment": {"contentType": "application/dicom", "data": base64.b64encode(data).decode()},
                     "format": {"system": UID_REGISTRY, "code": KOS_SOP_CLASS}}]}


def as_submission(reference: dict) -> dict:
    """The DocumentReference as an ITI-65 submission of its one document, its data in a Binary."""
    attachment = dict(reference["content"][0]["attachment"])
    data = attachment.pop("data")
    content = {**reference["content"][0], "attachment": {**attachment, "url": "urn:uuid:kos"}}
    document = dict(reference, content=[content])
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:submission", "request": {"method": "POST", "url": "List"}, "resource": {
            "resourceType": "List", "meta": {"profile": [codes.PDSM_SUBMISSION_SET]},
            "identifier": [{"use": "usual", "system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.250.1.999.1.7.3"}],
            "status": "current", "mode": "working", "title": "Examen d'imagerie",
            "code": {"coding": [{"system": "https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes",
                                 "code": "submissionset"}]},
            "subject": reference["subject"], "date": "2026-03-10T17:30:00+01:00",
            "entry": [{"item": {"reference": "urn:uuid:document"}}]}},
        {"fullUrl": "urn:uuid:document", "request": {"method": "POST", "url": "DocumentReference"},
         "resource": document},
        {"fullUrl": "urn:uuid:kos", "request": {"method": "POST", "url": "Binary"},
         "resource": {"resourceType": "Binary", "contentType": "application/dicom", "data": data}}]}


def report_of_the_study() -> bytes:
    """Léa MOREAU's ultrasound report naming its study and its accession number, as the CI-SIS's
    CR-IMG does (serviceEvent/id, inFulfillmentOf/order/ps3-20:accessionNumber), under an id of its own."""
    return sample("cr-imagerie-echographie-moreau.xml").replace(
        b'<id root="1.2.250.1.213.1.1.9.2.6.1"/>', b'<id root="1.2.250.1.213.1.1.9.2.6.7"/>').replace(
        b'<serviceEvent classCode="ACT" moodCode="EVN">',
        f'<serviceEvent classCode="ACT" moodCode="EVN"><id root="{STUDY}"/>'.encode()).replace(
        b"<documentationOf>", b'<inFulfillmentOf><order><id root="1.2.250.1.999.1.7.4" extension="984375862"/>'
        b'<accessionNumber xmlns="urn:dicom-org:ps3-20" root="1.2.250.1.999.1.7.5" extension="105234751"/>'
        b"</order></inFulfillmentOf><documentationOf>", 1)


def test_an_imaging_manifest_is_found_with_its_report_by_their_study_and_read_as_the_dicom_it_is(
        app, settings, client, bearer, database):
    """The KOS of Léa MOREAU's ultrasound, published by ITI-65 after its report: both name the study
    and the exam's accession number in their referenceIdList (the report's header; the KOS's own,
    which its sender left out), and a search by either finds both, the report's reader its images.
    The KOS is read back byte for byte as application/dicom; in the patient space, told for what it
    is and downloaded as a .dcm file."""
    fed_with_accounts(client, bearer, database[0])
    attend_all(database[0])
    report = client.post("/cda", data=report_of_the_study(), headers={"Content-Type": "application/xml"})
    assert report.status_code == 201, report.json
    assert report.json["context"]["related"] == [
        {"identifier": {"type": {"coding": [{"system": "urn:ietf:rfc:3986", "code": STUDY_INSTANCE_UID}]},
                        "value": STUDY}},
        {"identifier": {"type": {"coding": [{"system": "urn:ietf:rfc:3986", "code": "urn:ihe:iti:xds:2013:accession"}]},
                        "system": "urn:oid:1.2.250.1.999.1.7.5", "value": "105234751"}}], report.json["context"]
    data = imaging_manifest()
    answer = client.post("/fhir", headers={**FHIR, **bearer("system", sub="imaging-centre")},
                         data=json.dumps(as_submission(manifest_reference(data))))
    assert answer.status_code == 200, answer.json
    location = answer.json["entry"][1]["response"]["location"]
    docref = client.get("/fhir/" + location.split("/_history")[0]).json
    assert docref["content"][0]["format"] == {"system": UID_REGISTRY, "code": KOS_SOP_CLASS}, docref
    assert docref["context"]["related"] == report.json["context"]["related"], docref["context"]
    for related in (STUDY, "urn:oid:1.2.250.1.999.1.7.5|105234751"):
        found = client.get("/fhir/DocumentReference", query_string={
            "patient.identifier": f"urn:oid:1.2.250.1.213.1.4.10|{MOREAU}", "status": "current",
            "related-id": related}).json
        ids = [e["resource"]["id"] for e in found["entry"] if e["resource"]["resourceType"] == "DocumentReference"]
        assert sorted(ids) == sorted([docref["id"], report.json["id"]]), found
    binary = client.get(docref["content"][0]["attachment"]["url"], headers={"Accept": "application/dicom"})
    assert binary.status_code == 200 and binary.mimetype == "application/dicom" and binary.data == data
    if profiles.available():
        checked = profiles.Collected()
        checked.add(docref)
        checked.add(report.json)
        checked.add(answer.json, profiles.PROVIDE_RESPONSE)
        checked.add(found, profiles.FIND_DOCUMENT_REFERENCES)
        assert not checked.errors(), "\n".join(checked.errors())
    representative = sign_in(app, settings, "sophie")
    page = unescape(representative.get(f"/documents/{docref['id']}").text)
    assert "désigne les images d'un examen d'imagerie" in page, page
    original = representative.get(f"/documents/{docref['id']}/original")
    assert original.data == data and original.headers["Content-Disposition"].endswith('.dcm"'), original.headers


def another_study(reference: dict) -> None:
    study = {"type": {"coding": [{"system": "urn:ietf:rfc:3986", "code": STUDY_INSTANCE_UID}]},
             "value": "1.2.250.1.999.9"}
    reference["context"] = {"related": [{"identifier": study}]}


@pytest.mark.parametrize("data, change, expression, told", [
    (imaging_manifest(ins=MARTIN), None, "DocumentReference.content[0]",
     "the DICOM object's patient, INS under 1.2.250.1.213.1.4.10, is not the subject's"),
    (imaging_manifest(ins="900000001", issuer="1.2.250.1.213.1.1.9.1001"), None, "DocumentReference.content[0]",
     "the DICOM object's patient, Patient ID under 1.2.250.1.213.1.1.9.1001, is not the subject's"),
    (imaging_manifest(birth="20100101"), None, "DocumentReference.content[0]", "the birth date this document states"),
    (b"Hello World", None, "DocumentReference.content[0]",
     "contentType application/dicom declares a DICOM object, and the data is not DICOM"),
    (imaging_manifest(), lambda r: r["masterIdentifier"].update(value="urn:oid:1.2.250.1.999.1.7.9"),
     "DocumentReference.masterIdentifier", f"its uniqueId is urn:oid:{SOP_INSTANCE} (IHE XDS-I.b)"),
    (imaging_manifest(), lambda r: r["content"][0]["format"].update(code="1.2.840.10008.5.1.4.1.1.4"),
     "DocumentReference.content[0].format", f"contradicts the DICOM object's SOP Class UID {KOS_SOP_CLASS}"),
    (imaging_manifest(), another_study, "DocumentReference.context.related",
     f"names the study 1.2.250.1.999.9, which the DICOM object does not reference (its studies: {STUDY})"),
], ids=["another-patient", "another-patient-s-ipp", "another-birth-date", "not-dicom", "another-unique-id",
        "another-sop-class", "another-study"])
def test_an_imaging_manifest_its_header_contradicts_is_refused_and_nothing_is_kept(
        client, bearer, database, data, change, expression, told):
    """Each was registered: a KOS of Paul MARTIN, by his INS or his IPP, filed in Léa MOREAU's record
    (its viewer, which reads the patient in the KOS, then showed his images from her record), a KOS
    whose patient was born on another day than Léa, "Hello World" as a DICOM object, a KOS under a
    uniqueId its consumers never ask for (the DRIMbox asks the DMP for the KOS by its SOP Instance
    UID), or under another SOP class or study than its own."""
    for name in ("cr-imagerie-echographie-moreau.xml", "cr-biologie-martin.xml"):   # Léa's record, and Paul's
        assert client.post("/cda", data=sample(name), headers={"Content-Type": "application/xml"}).status_code == 201
    reference = manifest_reference(data)
    if change:
        change(reference)
    answer = client.post("/fhir/DocumentReference", headers={**FHIR, **bearer("doctor", sub=RADIOLOGIST)},
                         data=json.dumps(reference))
    assert answer.status_code == 422, answer.json
    issue = answer.json["issue"][0]
    assert issue["expression"] == [expression] and told in issue["diagnostics"], issue
    with database[0].connect() as conn:
        assert conn.execute(select(func.count()).select_from(resources)
                            .where(resources.c.res_type == "DocumentReference")).scalar_one() == 2
