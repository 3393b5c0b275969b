"""The extensions the served definitions define, held to those definitions in what a client writes:
the table is the one the definitions give, a breach is refused where it stands, and their own
examples are read as sent."""
import json
from pathlib import Path

import pytest

from gateway.fhir import extensions, formats, xml_writer
from gateway.refusal import Refused

DEFINITIONS = Path(__file__).resolve().parents[2].parent / "shared" / "fhir-definitions"
RELIABILITY = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-identity-reliability"
INSEE = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-address-insee-code"
SOURCE_ID = "https://profiles.ihe.net/ITI/MHD/StructureDefinition/ihe-sourceId"
STATUS = {"url": "identityStatus", "valueCoding": {"system": "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0445",
                                                   "code": "VALI"}}


def test_the_table_is_the_one_the_definitions_give():
    if not DEFINITIONS.exists():
        pytest.skip(f"the FHIR definitions are not present at {DEFINITIONS}")
    assert json.loads(extensions.TABLE.read_text()) == extensions.build(DEFINITIONS)


def test_the_packages_own_examples_are_read_as_sent():
    """No extension of FR Core's, PDSm's, MHD's or BALP's examples is refused (each claims its
    profile, which uses them), and none carries a modifier extension, which the gateway refuses."""
    examples = [resource for path in sorted(DEFINITIONS.glob("*/package/**/*.json"))
                if isinstance(resource := json.loads(path.read_text(encoding="utf-8-sig")), dict) and resource.get("resourceType")
                not in (None, "StructureDefinition", "ValueSet", "CodeSystem", "SearchParameter", "ImplementationGuide",
                        "CapabilityStatement", "OperationDefinition", "ConceptMap", "NamingSystem")]
    if not examples:
        pytest.skip(f"the FHIR definitions are not present at {DEFINITIONS}")
    for resource in examples:
        assert formats.refused_extension(resource) is None, (resource["resourceType"], resource.get("id"))
    assert len(examples) > 100


@pytest.mark.parametrize("extension, where, problem", [
    ({"url": RELIABILITY, "extension": [STATUS, STATUS]}, "/extension/0", "2 'identityStatus' part(s)"),
    ({"url": RELIABILITY, "valueString": "VALI"}, "/extension/0", "takes no value"),
    ({"url": RELIABILITY, "extension": [{"url": "identityStatus", "valueCode": "VALI"}]}, "/extension/0",
     "its 'identityStatus' part: takes a value of type Coding, not Code"),
    ({"url": SOURCE_ID, "valueString": "urn:oid:1.2.3"}, "/extension/0", "takes a value of type Identifier"),
], ids=["a part twice", "a value on one made of parts", "a part's value of another type", "another value type"])
def test_an_extension_that_breaks_its_definition_is_refused_where_it_stands(extension, where, problem):
    """The official check holds an extension it knows to its definition, whatever the resource
    claims: FR Core's identity reliability giving its identityStatus twice (at most once) was kept,
    and failed it (found by a sweep of the fuzz's bodies)."""
    patient = {"resourceType": "Patient", "extension": [extension]}
    for body, content_type in ((json.dumps(patient).encode(), "application/fhir+json"),
                               (xml_writer.to_xml(patient), "application/fhir+xml")):
        with pytest.raises(Refused) as refused:
            formats.load(body, content_type)
        assert (refused.value.location, refused.value.status) == (where, 422)
        assert problem in refused.value.reason


def test_an_extension_deeper_in_the_resource_is_held_to_its_definition():
    address = {"resourceType": "Patient", "address": [{"city": "Orléans", "extension": [
        {"url": INSEE, "valueCoding": {"system": "https://mos.esante.gouv.fr/NOS/TRE_R13-CommuneOM/FHIR/TRE-R13-CommuneOM",
                                       "code": "45234"}}]}]}
    assert formats.load(json.dumps(address).encode(), "application/fhir+json") == address
    address["address"][0]["extension"][0]["extension"] = [{"url": "x", "valueString": "y"}]
    del address["address"][0]["extension"][0]["valueCoding"]
    with pytest.raises(Refused) as refused:
        formats.load(json.dumps(address).encode(), "application/fhir+json")
    assert refused.value.location == "/address/0/extension/0"
    assert "has no parts: it takes a value" in refused.value.reason
