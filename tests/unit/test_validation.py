"""What validate() adds to the R4 models: the elements the served profiles prohibit, checked
against the official StructureDefinitions; a period's start after its end; a character XML cannot
carry. And the contained resources found valid, not validated again."""
import datetime
import json
from pathlib import Path

import pytest
from fhir.resources.R4B.practitioner import Practitioner

from gateway.fhir import validation
from gateway.fhir.validation import PROHIBITED, VALID_CONTAINED, InvalidResource, validate

DEFINITIONS = Path(__file__).resolve().parents[2].parent / "shared" / "fhir-definitions" / "pdsm" / "package"
PROFILES = {"DocumentReference": "StructureDefinition-pdsm-comprehensive-document-reference.json",
            "List": "StructureDefinition-pdsm-submissionset-comprehensive.json"}


@pytest.mark.parametrize("res_type", sorted(PROFILES))
def test_the_prohibited_elements_are_the_profiles_own(res_type):
    """Those of a resource's own elements: the profile's sub-extension rules are about its
    extensions' content, which the gateway writes itself."""
    path = DEFINITIONS / PROFILES[res_type]
    if not path.exists():
        pytest.skip(f"the PDSm package is not present at {DEFINITIONS}")
    elements = json.loads(path.read_text())["snapshot"]["element"]
    prohibited = {e["path"].split(".", 1)[1] for e in elements if e.get("max") == "0"
                  and "extension.extension" not in e["path"]}
    if res_type == "DocumentReference":
        prohibited.discard("content.attachment.data")   # moved into its Binary by every write
    assert prohibited == set(PROHIBITED[res_type])


def test_a_prohibited_element_is_named_where_it_is():
    submission_set = {"resourceType": "List", "status": "current", "mode": "working",
                      "entry": [{"item": {"reference": "DocumentReference/a"}},
                                {"item": {"reference": "DocumentReference/b"}, "date": "2026-01-01"}]}
    with pytest.raises(InvalidResource) as refused:
        validate(submission_set)
    assert refused.value.problems == [("entry[1].date", "is not allowed: PDSm prohibits it (max 0)")]


@pytest.mark.parametrize("character", [chr(c) for c in range(32) if c not in (9, 10, 13)] + ["\ufffe", "\uffff"])
def test_a_character_xml_cannot_carry_is_named_where_it_is(character):
    patient = {"resourceType": "Patient", "name": [{"family": "MARTIN", "given": ["Paul", f"Jean{character}"]}]}
    with pytest.raises(InvalidResource) as refused:
        validate(patient)
    [(path, problem)] = refused.value.problems
    assert path == "name[0].given[1]" and f"U+{ord(character):04X}" in problem


def test_tab_line_feed_and_carriage_return_are_kept_and_what_was_kept_is_not_checked_again():
    validate({"resourceType": "Patient", "name": [{"text": "MARTIN\tPaul\r\nJean"}]})
    validate({"resourceType": "Patient", "name": [{"text": "C:\\bin\\f \\u0001"}]})   # backslashes, not controls
    validate({"resourceType": "Patient", "name": [{"text": "MARTIN\x01Paul"}]}, kept=True)


def test_a_reversed_period_and_a_control_character_are_both_named():
    consent = {"resourceType": "Consent", "status": "active", "scope": {"text": "x"}, "category": [{"text": "y"}],
               "provision": {"period": {"start": "2026-02-01", "end": "2026-01-01"},
                             "actor": [{"role": {"text": "a\x1fb"}, "reference": {"display": "z"}}]}}
    with pytest.raises(InvalidResource) as refused:
        validate(consent)
    assert [path for path, _ in refused.value.problems] == ["provision.period", "provision.actor[0].role.text"]


def test_a_contained_resource_nothing_refers_to_is_named():
    """FHIR dom-3: a sender's unreferenced contained resource was kept, and failed the official
    check. Referred to from the resource, from another contained one, or referring to its
    container, it is kept."""
    submission_set = {"resourceType": "List", "status": "current", "mode": "working",
                      "contained": [{"resourceType": "Device", "id": "source"},
                                    {"resourceType": "Organization", "id": "org"},
                                    {"resourceType": "Practitioner", "id": "alone"},
                                    {"resourceType": "Patient", "id": "back", "link": [
                                        {"other": {"reference": "#"}, "type": "seealso"}]},
                                    {"resourceType": "PractitionerRole", "id": "role",
                                     "organization": {"reference": "#org"}}],
                      "source": {"reference": "#source"}, "entry": [{"item": {"reference": "#role"}}]}
    with pytest.raises(InvalidResource) as refused:
        validate(submission_set)
    assert refused.value.problems == [("contained[2]", "is referenced from nowhere in the resource (FHIR dom-3)")]
    validate(submission_set, kept=True)


def test_the_known_profiles_are_those_the_definitions_give():
    from gateway.fhir import known_profiles

    if not (DEFINITIONS.parents[1] / "r4core").exists():
        pytest.skip(f"the FHIR definitions are not present at {DEFINITIONS.parents[1]}")
    assert json.loads(known_profiles.TABLE.read_text()) == known_profiles.build(DEFINITIONS.parents[1])


@pytest.mark.parametrize("profiles, contained, problem", [
    (["POST"], [], "meta.profile[0]"),
    (["https://interop.esante.gouv.fr/ig/fhir/pdsm/StructureDefinition/pdsm-folder-comprehensiv"], [], "meta.profile[0]"),
    (["https://interop.esante.gouv.fr/ig/fhir/pdsm/StructureDefinition/pdsm-comprehensive-document-reference"], [],
     "meta.profile[0]"),   # a DocumentReference's
    (["https://interop.esante.gouv.fr/ig/fhir/pdsm/StructureDefinition/pdsm-folder-comprehensive|3.1.1",
      "http://hl7.org/fhir/StructureDefinition/List"], [], None),
    ([], [{"resourceType": "Device", "id": "d", "meta": {"profile": ["urn:x"]}}], "contained[0].meta.profile[0]"),
])
def test_a_profile_no_definition_gives_for_the_type_is_named(profiles, contained, problem):
    """A claimed profile is kept as claimed: one that none of the definitions the gateway serves
    under defines for the resource's type was kept, and every read failed the official check
    (found by test_mutated_fhir_xml_submissions: a Folder claiming `POST`)."""
    resource = {"resourceType": "List", "status": "current", "mode": "working", "meta": {"profile": profiles},
                "contained": contained, "source": {"reference": "#d"}}
    if not contained:
        resource.pop("contained")
        resource.pop("source")
    if problem is None:
        validate(resource)
        return
    with pytest.raises(InvalidResource) as refused:
        validate(resource)
    assert [path for path, _ in refused.value.problems] == [problem]


AUTHOR = {"resourceType": "Practitioner", "id": "author", "name": [{"family": "BERNARD"}]}
NOT_AN_ORGANIZATION = {"resourceType": "Organization", "id": "org", "active": "perhaps"}


def _document(*contained: dict) -> dict:
    return {"resourceType": "DocumentReference", "status": "current",
            "content": [{"attachment": {"contentType": "text/xml"}}],
            "contained": list(contained), "author": [{"reference": f"#{item['id']}"} for item in contained]}


@pytest.fixture
def nothing_found_valid():
    VALID_CONTAINED.clear()
    yield
    VALID_CONTAINED.clear()


def test_a_contained_resource_found_valid_is_not_validated_again(nothing_found_valid, monkeypatch):
    validated = []
    model_validate = Practitioner.model_validate.__func__

    def counted(cls, *args, **kwargs):
        validated.append(cls)
        return model_validate(cls, *args, **kwargs)
    monkeypatch.setattr(Practitioner, "model_validate", classmethod(counted))
    validate(_document(AUTHOR))
    validate(_document(dict(AUTHOR)))
    assert validated == [Practitioner]
    validate(_document({**AUTHOR, "name": [{"family": "DURAND"}]}))
    assert validated == [Practitioner] * 2


def test_a_resource_refused_beside_one_found_valid_is_named_at_its_own_index(nothing_found_valid):
    with pytest.raises(InvalidResource) as first:
        validate(_document(AUTHOR, NOT_AN_ORGANIZATION))
    assert not VALID_CONTAINED   # what was refused, and what was beside it, is not taken as valid
    validate(_document(AUTHOR))
    with pytest.raises(InvalidResource) as again:
        validate(_document(AUTHOR, NOT_AN_ORGANIZATION))
    assert again.value.problems == first.value.problems == [
        ("contained.1.active", "Input should be a valid boolean, unable to interpret input")]


def test_the_resources_found_valid_are_bounded(nothing_found_valid, monkeypatch):
    monkeypatch.setattr(validation, "VALID_CONTAINED_SIZE", 2)
    for family in ("A", "B", "C"):
        validate(_document({**AUTHOR, "name": [{"family": family}]}))
        assert 1 <= len(VALID_CONTAINED) <= 2


def test_a_contained_resource_holding_what_json_does_not_is_validated_each_time(nothing_found_valid):
    """A date object would be written as the string of another resource, which could be refused."""
    validate(_document({"resourceType": "Patient", "id": "author", "birthDate": datetime.date(1980, 1, 2)}))
    assert not VALID_CONTAINED
