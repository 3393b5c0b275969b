"""The codes FHIR R4 binds `required` to an enumerated value set: the table the gateway checks
what a client writes against is the one the R4 definitions give."""
import json
from pathlib import Path

import pytest
from gateway.fhir import formats, required_codes, xml_writer
from gateway.refusal import Refused

DEFINITIONS = Path(__file__).resolve().parents[2].parent / "shared" / "fhir-definitions"


def test_the_table_is_the_one_the_r4_definitions_give():
    if not (DEFINITIONS / "r4-valuesets-flat.json").exists():
        pytest.skip(f"the FHIR definitions are not present at {DEFINITIONS}")
    assert json.loads(required_codes.TABLE.read_text()) == required_codes.build(DEFINITIONS)


@pytest.mark.parametrize("resource, found", [
    ({"resourceType": "Patient", "identifier": [{"use": "official"}, {"use": "main"}]},
     ("/identifier/1/use", "Identifier.use")),
    ({"resourceType": "Patient", "gender": "M"}, ("/gender", "Patient.gender")),
    ({"resourceType": "Consent", "status": "active", "scope": {"text": "x"}, "category": [{"text": "y"}],
      "provision": {"type": "deny", "provision": [{"type": "maybe"}]}},
     ("/provision/provision/0/type", "ConsentProvision.type")),
    ({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "List", "status": "current", "mode": "working", "identifier": [{"use": "x"}]}}]},
     ("/entry/0/resource/identifier/0/use", "Identifier.use")),
    ({"resourceType": "Patient", "gender": "female", "name": [{"use": "maiden"}], "telecom": [{"system": "email"}]},
     None),
])
def test_a_code_outside_its_required_value_set_is_refused_where_it_stands(resource, found):
    body = json.dumps(resource).encode()
    if found is None:
        assert formats.load(body, "application/fhir+json") == resource
        return
    with pytest.raises(Refused) as refused:
        formats.load(body, "application/fhir+json")
    assert (refused.value.location, refused.value.status) == (found[0], 422)
    assert f"binds {found[1]} to (required)" in refused.value.reason
    as_xml = xml_writer.to_xml(resource)   # the same from FHIR's XML
    with pytest.raises(Refused) as refused:
        formats.load(as_xml, "application/fhir+xml")
    assert refused.value.location == found[0]
