"""FHIR R4's invariants, and the reference and attachment rules the models leave out, checked in
what a client writes: the table is the one the R4 definitions give, and each rule refuses at the
element that breaks it, in JSON and in FHIR's XML, what the official check refuses."""
import base64
import hashlib
import json
from pathlib import Path

import pytest

from gateway.fhir import formats, invariants, xml_writer
from gateway.fhir.r4_definitions import model_class
from gateway.refusal import Refused

DEFINITIONS = Path(__file__).resolve().parents[2].parent / "shared" / "fhir-definitions"
DATA = base64.b64encode(b"abc").decode()


def test_the_table_is_the_one_the_r4_definitions_give():
    if not (DEFINITIONS / "r4core").exists():
        pytest.skip(f"the FHIR definitions are not present at {DEFINITIONS}")
    assert json.loads(invariants.TABLE.read_text()) == invariants.build(DEFINITIONS)


def patient(**elements) -> dict:
    return {"resourceType": "Patient", **elements}


@pytest.mark.parametrize("resource, where, says", [
    (patient(generalPractitioner=[{"reference": "#nope"}]), "/generalPractitioner/0", "(FHIR ref-1)"),
    (patient(contained=[{"resourceType": "Organization", "id": "o", "name": "x", "meta": {"versionId": "1"}}],
             managingOrganization={"reference": "#o"}), "/", "(FHIR dom-4)"),
    (patient(contained=[{"resourceType": "Organization", "id": "o", "name": "x",
                         "contained": [{"resourceType": "Organization", "id": "p", "name": "y"}]}],
             managingOrganization={"reference": "#o"}), "/", "(FHIR dom-2)"),
    (patient(contained=[{"resourceType": "Organization", "id": "o"}], managingOrganization={"reference": "#o"}),
     "/contained/0", "(FHIR org-1)"),
    (patient(telecom=[{"value": "0102030405"}]), "/telecom/0", "(FHIR cpt-2)"),
    (patient(contact=[{"gender": "female"}]), "/contact/0", "(FHIR pat-1)"),
    (patient(extension=[{"url": "https://example.org/x"}]), "/extension/0", "(FHIR ext-1)"),
    (patient(name=[{"family": "X", "_family": {"extension": [{"url": "https://example.org/x"}]}}]),
     "/name/0/_family/extension/0", "(FHIR ext-1)"),
    (patient(contained=[{"resourceType": "Patient", "id": "x"}], generalPractitioner=[{"reference": "#x"}]),
     "/generalPractitioner/0/reference", "names a Patient, where FHIR allows"),
    (patient(managingOrganization={"reference": "Organization/x", "type": "Patient"}),
     "/managingOrganization/reference", "where its type says Patient"),
    (patient(photo=[{"contentType": "image/png", "data": DATA, "size": 5}]), "/photo/0", "not the 3 bytes"),
    (patient(photo=[{"contentType": "image/png", "data": DATA, "hash": base64.b64encode(b"\0" * 20).decode()}]),
     "/photo/0", "not the SHA-1"),
    (patient(photo=[{"data": DATA}]), "/photo/0", "(FHIR att-1)"),
])
def test_what_fhir_refuses_and_the_models_take_is_refused_where_it_stands(resource, where, says):
    for body, content_type in [(json.dumps(resource).encode(), "application/fhir+json"),
                               (xml_writer.to_xml(resource), "application/fhir+xml")]:
        with pytest.raises(Refused) as refused:
            formats.load(body, content_type)
        assert (refused.value.location, refused.value.status) == (where, 422), refused.value.reason
        assert says in refused.value.reason


@pytest.mark.parametrize("resource", [
    patient(name=[{"family": "X", "_family": {"extension": [{"url": "https://example.org/x", "valueString": "y"}]}}]),
    patient(contained=[{"resourceType": "Practitioner", "id": "x"}], generalPractitioner=[{"reference": "#x"}]),
    patient(telecom=[{"system": "phone", "value": "0102030405"}], contact=[{"name": {"family": "Y"}}]),
    patient(photo=[{"contentType": "image/png", "data": DATA, "size": 3,
                    "hash": base64.b64encode(hashlib.sha1(b"abc").digest()).decode()}]),
    patient(managingOrganization={"reference": "http://example.org/fhir/Organization/x/_history/2",
                                  "type": "Organization"}),
    patient(extension=[{"url": "https://example.org/x", "extension": [{"url": "a", "valueBoolean": True}]}]),
])
def test_what_fhir_allows_is_read_as_sent(resource):
    assert formats.load(json.dumps(resource).encode(), "application/fhir+json") == resource
    assert formats.load(xml_writer.to_xml(resource), "application/fhir+xml") == resource


def test_a_body_of_more_elements_than_the_bound_is_refused_before_any_is_checked():
    """Each element costs its check about 55 us: a Patient of 50,000 telephone numbers took 2.3 s,
    and a 28 MB body could hold 700,000."""
    many = patient(telecom=[{"system": "phone", "value": str(n)} for n in range(formats.MAX_ELEMENTS)])
    with pytest.raises(Refused) as refused:
        formats.load(json.dumps(many).encode(), "application/fhir+json")
    assert (refused.value.status, refused.value.code) == (413, "too-costly")
    many["telecom"].pop()
    assert formats.load(json.dumps(many).encode(), "application/fhir+json") == many


def test_the_reference_targets_read_off_the_models_are_r4_s():
    """The targets a reference may name are read off the R4B models (formats._reference_problem):
    for the types the gateway takes or contains, they are R4's, element by element."""
    if not (DEFINITIONS / "r4core").exists():
        pytest.skip(f"the FHIR definitions are not present at {DEFINITIONS}")
    from fhir.resources.R4B import get_fhir_model_class

    differ, compared = [], 0
    for res_type in ("DocumentReference", "List", "Patient", "Consent", "Organization", "Practitioner",
                     "PractitionerRole", "Device", "RelatedPerson", "Binary", "Bundle", "AuditEvent"):
        definition = json.loads((DEFINITIONS / "r4core" / "package" / f"StructureDefinition-{res_type}.json").read_text())
        for element in definition["snapshot"]["element"]:
            references = [t for t in element.get("type", []) if t.get("code") == "Reference"]
            *parents, name = element["path"].split(".")
            if not references or name.endswith("[x]"):
                continue
            model = get_fhir_model_class(model_class(".".join(parents)))
            field = next(f for key, f in model.model_fields.items() if (f.alias or key) == name)
            r4 = sorted({profile.rsplit("/", 1)[1] for t in references for profile in t.get("targetProfile", [])})
            compared += 1
            if sorted((field.json_schema_extra or {}).get("enum_reference_types") or []) != r4:
                differ.append(element["path"])
    assert differ == [] and compared == 41, (differ, compared)   # every Reference element of these types
