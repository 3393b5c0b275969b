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
    assert json.loads(required_codes.GRAMMARS_TABLE.read_text()) == required_codes.build_grammars(DEFINITIONS)


@pytest.mark.parametrize("content_type, kept", [
    ("application/pdf", True), ("application/fhir+json; fhirVersion=4.0", True), ('text/plain;charset="utf-8"', True),
    ("application/xmlé", False), ("text", False), ("text/", False), ("application/pdf;", False), ("a/b c", False),
])
def test_an_attachment_s_content_type_is_a_mime_type(content_type, kept):
    """FHIR binds an attachment's and a Binary's contentType `required` to BCP 13's MIME types, a
    grammar: `application/xmlé` was kept, and failed the official check (found by a sweep of the
    fuzz's bodies)."""
    for resource, where in (({"resourceType": "Binary", "contentType": content_type}, "/contentType"),
                            ({"resourceType": "Patient", "photo": [{"contentType": content_type}]},
                             "/photo/0/contentType")):
        body = json.dumps(resource).encode()
        if kept:
            assert formats.load(body, "application/fhir+json") == resource
            continue
        with pytest.raises(Refused) as refused:
            formats.load(body, "application/fhir+json")
        assert (refused.value.location, refused.value.status) == (where, 422)
        assert "not a MIME type" in refused.value.reason


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
