"""Mapping of a header to FHIR: pure functions, checked field by field and validated."""
import json

import pytest

from conftest import sample
from gateway.fhir.validation import validate
from gateway.mapping import codes
from gateway.mapping import document as mapping
from gateway.services.documents import read_cda


def build(name: str, visibility=()):
    parsed = read_cda(sample(name), 5 * 1024 * 1024)
    links = mapping.Links(patient="p1", custodian="Organization/o1", replaces=[])
    attachment = mapping.Attachment("http://gw/fhir/Binary/b1", "text/xml", 1234, "c2hhMQ==")
    return parsed, mapping.document_reference(parsed.header, "d1", links, attachment, visibility=visibility)


def test_document_reference_fields_follow_pdsm():
    parsed, doc = build("ldl-ses-martin.xml")
    validate(doc)
    assert doc["meta"]["profile"] == [codes.PDSM_DOCUMENT_REFERENCE]
    assert doc["masterIdentifier"] == {"use": "usual", "system": "urn:ietf:rfc:3986",
                                       "value": "urn:oid:1.2.250.1.213.1.1.9.2.1.1"}
    assert "docStatus" not in doc
    assert doc["type"]["coding"][0] == {"system": "http://loinc.org", "code": "11490-0",
                                        "display": "Lettre de liaison à la sortie d'un établissement de soins"}
    assert doc["category"][0]["coding"][0]["code"] == "10"
    assert doc["date"] == "2026-03-10T16:30:00+01:00"
    assert doc["securityLabel"][0]["coding"][0] == {"system": codes.CONFIDENTIALITY_SYSTEM, "code": "N", "display": "Normal"}
    attachment = doc["content"][0]["attachment"]
    assert attachment["language"] == "fr-FR" and attachment["creation"] == "2026-03-10T16:30:00+01:00"
    assert doc["content"][0]["format"]["code"] == "urn:asip:ci-sis:ldl-ses:2017"
    assert doc["context"]["period"] == {"start": "2026-03-02T09:15:00+01:00", "end": "2026-03-10T16:00:00+01:00"}
    assert doc["context"]["facilityType"]["coding"][0]["code"] == "SA01"
    assert doc["context"]["practiceSetting"]["coding"][0]["code"] == "ETABLISSEMENT"
    assert doc["context"]["sourcePatientInfo"] == {"reference": "#source-patient"}
    assert {"use": "secondary", "system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.250.1.213.1.1.9.2.1",
            "type": {"text": "setId"}} in doc["identifier"]


def test_authors_are_the_documents_own_contained_copies():
    """Each author is a contained PractitionerRole (specialty) -> Practitioner (the name this document
    gives) and Organization: never a shared resource another document may have named differently."""
    parsed, doc = build("ldl-ses-martin.xml")
    contained = {c["id"]: c for c in doc["contained"]}
    assert doc["author"] == [{"reference": "#author1"}] and doc["authenticator"] == {"reference": "#authenticator"}
    role = contained["author1"]
    assert role["resourceType"] == "PractitionerRole"
    assert role["specialty"][0]["coding"][0]["code"] == "G15_10/SM27"
    person = contained[role["practitioner"]["reference"][1:]]
    assert person["name"][0]["family"] == "BERNARD"
    assert contained[role["organization"]["reference"][1:]]["name"] == "Centre hospitalier de Saint-Aubin"
    assert mapping.author_idnatps(doc) == ["899900000012"]


def test_imaging_report_carries_exam_and_modality_as_events():
    _, doc = build("cr-imagerie-irm-lefevre.xml")
    events = [c["coding"][0]["code"] for c in doc["context"]["event"]]
    assert events == ["24724-7", "MR"]
    assert doc["category"][0]["coding"][0]["code"] == "31"
    assert doc["content"][0]["format"]["code"] == "urn:ihe:rad:CDA:ImagingReportStructuredHeadings:2013"


def test_n1_pdf_format_and_visibility_labels():
    _, doc = build("cr-operatoire-garnier.xml", visibility=["MASQUE_PS"])
    assert doc["content"][0]["format"]["code"] == "urn:ihe:iti:xds-sd:pdf:2008"
    assert doc["securityLabel"][0]["coding"][0] == {"system": codes.VISIBILITY_SYSTEM, "code": "MASQUE_PS",
                                                    "display": "Masqué aux professionnels de santé"}
    validate(doc)


def test_patient_practitioner_organization_profiles():
    parsed, _ = build("ldl-ses-martin.xml")
    patient = mapping.patient_resource(parsed.header.patient, "p1")
    validate(patient)
    ins = patient["identifier"][0]
    assert (ins["system"], ins["value"], ins["type"]["coding"][0]["code"]) == (
        "urn:oid:1.2.250.1.213.1.4.10", "185067511204554", "INS-NIR-TEST")
    assert patient["identifier"][1]["type"]["coding"][0]["code"] == "PI"
    assert patient["gender"] == "male" and patient["birthDate"] == "1985-06-12"
    practitioner = mapping.practitioner_resource(parsed.header.authors[0], "a1")
    validate(practitioner)
    assert [(i["system"], i["value"]) for i in practitioner["identifier"]] == [
        ("urn:oid:1.2.250.1.71.4.2.1", "899900000012"), (codes.RPPS_SYSTEM, "99900000012")]
    organization = mapping.organization_resource(parsed.header.custodian, "o1")
    validate(organization)
    assert [(i["system"], i["value"]) for i in organization["identifier"]] == [
        ("urn:oid:1.2.250.1.71.4.2.2", "1990000018"), (codes.FINESS_SYSTEM, "990000018")]


@pytest.mark.parametrize("name, replaces", [
    ("ldl-ses-martin.xml", []),
    ("cr-imagerie-irm-lefevre-v2.xml", [{"reference": "DocumentReference/parent"}]),
    ("cr-imagerie-irm-lefevre-v2.xml", [{"identifier": {"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.3"}}]),
])
def test_a_document_reference_validated_before_its_transaction_is_linked_to_what_the_mapping_gives(name, replaces):
    """A service validates a document's DocumentReference before its transaction, under stand-in ids
    and links (ParsedCda.checked_reference), and the unit of work links it: the result is the
    DocumentReference the mapping gives with the real ones, key for key and in the same order."""
    parsed = read_cda(sample(name), 5 * 1024 * 1024)
    assert bool(parsed.header.replaced) == bool(replaces)
    links = mapping.Links(patient="p1", custodian="Organization/o1", replaces=replaces)
    url = "http://gw/fhir/Binary/b1"
    attachment = mapping.Attachment(url, "text/xml", len(parsed.data), mapping.sha1_base64(parsed.data))
    for visibility in ([], ["INVISIBLE_PATIENT", "MASQUE_PS"]):
        expected = mapping.document_reference(parsed.header, "d1", links, attachment, visibility)
        template = parsed.checked_reference(visibility)
        assert template["id"] == mapping.UNSET_ID
        assert parsed.checked_reference(visibility) is template   # validated once
        assert json.dumps(mapping.linked(template, "d1", links, url)) == json.dumps(expected)
        assert template["id"] == mapping.UNSET_ID   # the template is not changed by linking it


@pytest.mark.parametrize("root, extension, key", [
    ("1.2.250.1.213.1.1.9.2.4.1", None, ("urn:ietf:rfc:3986", "urn:oid:1.2.250.1.213.1.1.9.2.4.1")),
    ("90E1C8EC-F951-4B26-A305-A34848818DD6", None,
     ("urn:ietf:rfc:3986", "urn:uuid:90e1c8ec-f951-4b26-a305-a34848818dd6")),
    ("90E1C8EC-F951-4B26-A305-A34848818DD6", "42", ("urn:uuid:90e1c8ec-f951-4b26-a305-a34848818dd6", "42")),
    ("1.2.250.1.71.4.2.1", "899900000038", ("urn:oid:1.2.250.1.71.4.2.1", "899900000038")),
])
def test_a_root_is_written_as_fhir_writes_an_oid_or_a_uuid(root, extension, key):
    from gateway.cda.header import II
    assert mapping.identifier_key(II(root, extension)) == key
    assert mapping.document_uri(II(root, extension)) == key[0 if extension else 1] + (f"^{extension}" if extension else "")
