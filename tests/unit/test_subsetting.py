"""_summary and _elements: what each keeps of a resource, read from the definitions."""
import json
from pathlib import Path

import pytest

from gateway.fhir import subsetting
from gateway.fhir.read import STORED_TYPES
from gateway.fhir.subsetting import SUBSETTED, SubsetError, requested

DEFINITIONS = Path(__file__).resolve().parents[2].parent / "shared" / "fhir-definitions"
PDSM = "https://interop.esante.gouv.fr/ig/fhir/pdsm/StructureDefinition/pdsm-comprehensive-document-reference"

PATIENT = {
    "resourceType": "Patient", "id": "p1", "meta": {"versionId": "2"},
    "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">MARTIN</div>"},
    "contained": [{"resourceType": "Organization", "id": "o1", "name": "CH"},
                  {"resourceType": "Practitioner", "id": "unused"}],
    "extension": [{"url": "http://example.org/x", "valueString": "x"}],
    "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "185067511204554"}],
    "name": [{"family": "MARTIN"}], "birthDate": "1985-06-12", "_birthDate": {"extension": []},
    "deceasedBoolean": False, "maritalStatus": {"text": "M"}, "managingOrganization": {"reference": "#o1"},
}


def test_the_table_is_the_one_the_definitions_give():
    if not (DEFINITIONS / "r4core").exists():
        pytest.skip(f"the FHIR definitions are not present at {DEFINITIONS}")
    assert json.loads(subsetting.TABLE.read_text()) == subsetting.build(DEFINITIONS, STORED_TYPES)


def subset(res_type="Patient", summary=(), elements=(), resource=PATIENT) -> dict:
    return requested(res_type, list(summary), list(elements), search=False).apply(resource)


def test_summary_true_keeps_the_elements_r4_marks_summary_and_what_they_refer_to():
    kept = subset(summary=["true"])
    assert set(kept) == {"resourceType", "id", "meta", "identifier", "name", "birthDate", "_birthDate",
                         "deceasedBoolean", "managingOrganization", "contained"}
    # The Organization its managingOrganization names, not the Practitioner nothing kept names.
    assert [c["id"] for c in kept["contained"]] == ["o1"]
    assert kept["meta"] == {"versionId": "2", "tag": [SUBSETTED]}


def test_summary_text_and_data():
    assert sorted(subset(summary=["text"])) == ["id", "meta", "resourceType", "text"]
    data = subset(summary=["data"])
    assert "text" not in data and data["maritalStatus"] == {"text": "M"} and len(data["contained"]) == 2


def test_elements_keep_those_named_with_id_meta_and_what_is_mandatory():
    assert sorted(subset(elements=["name,deceased"])) == ["deceasedBoolean", "id", "meta", "name", "resourceType"]
    # As fhirpy asks for them (`resourceType` among them), and with R5's type prefix.
    assert sorted(subset(elements=["resourceType,id,birthDate"])) == ["_birthDate", "birthDate", "id", "meta",
                                                                      "resourceType"]
    assert sorted(subset(elements=["Patient.name"])) == ["id", "meta", "name", "resourceType"]
    # Asked for, the contained resources come whole.
    assert len(subset(elements=["contained"])["contained"]) == 2
    document = {"resourceType": "DocumentReference", "id": "d", "meta": {"profile": [PDSM]}, "status": "current",
                "description": "CR", "custodian": {"reference": "Organization/1"}, "docStatus": "final"}
    # R4's minimum (status) and the PDSm profile's (custodian) are kept unasked.
    assert sorted(subset("DocumentReference", elements=["description"], resource=document)) == [
        "custodian", "description", "id", "meta", "resourceType", "status"]


def test_the_subsetted_tag_is_written_once():
    tagged = dict(PATIENT, meta={"tag": [SUBSETTED]})
    assert subset(summary=["data"], resource=tagged)["meta"]["tag"] == [SUBSETTED]


@pytest.mark.parametrize("summary, elements, search, said", [
    (["yes"], [], False, "_summary takes true, text, data, false, not 'yes'"),
    (["count"], [], False, "_summary takes true, text, data, false, not 'count'"),
    (["true", "false"], [], True, "_summary is given once"),
    (["true"], ["name"], True, "_summary and _elements each choose the elements returned: give one of them"),
    ([], ["name,stauts"], True, "_elements: stauts is not an element of Patient (its elements: id, meta,"),
], ids=["unknown-mode", "count-on-a-read", "twice", "both", "misspelt-element"])
def test_a_subset_that_cannot_be_honoured_is_refused_saying_why(summary, elements, search, said):
    with pytest.raises(SubsetError) as refused:
        requested("Patient", summary, elements, search=search)
    assert str(refused.value).startswith(said)


@pytest.mark.parametrize("summary, elements", [([], []), ([""], [""]), (["false"], []), (["count"], [""])])
def test_empty_values_false_and_count_keep_the_whole_resource(summary, elements):
    """PDSm's OpenAPI allows an empty _summary and _elements (`allowEmptyValue`): `_summary=` was a 400."""
    assert requested("Patient", summary, elements, search=True) is None
