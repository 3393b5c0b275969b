"""FHIRPath Patch (gateway/fhir/fhirpath_patch.py): each operation of FHIR R4's table as its page
gives it, the places a path names, and a refusal, never another error, for what is not a patch."""
import copy

import pytest
from hypothesis import example, given, settings, strategies as st

from conftest import patch_operation as operation, patch_parameters
from gateway.fhir import fhirpath_patch
from gateway.refusal import Refused

CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
ARCHIVED = "https://interop.esante.gouv.fr/ig/fhir/pdsm/StructureDefinition/pdsm-ext-is-archived"
DOCUMENT = {
    "resourceType": "DocumentReference", "status": "current",
    "extension": [{"url": ARCHIVED, "valueBoolean": False}],
    "securityLabel": [{"coding": [{"system": CONFIDENTIALITY, "code": "N"}]},
                      {"coding": [{"system": "urn:visibility", "code": "MASQUE_PS"}]}],
    "content": [{"attachment": {"contentType": "text/xml", "url": "Binary/1"}}],
}
LABEL = {"coding": [{"system": "urn:visibility", "code": "INVISIBLE_PATIENT"}]}


def patched(*operations: dict, document: dict = DOCUMENT) -> dict:
    before = copy.deepcopy(document)
    after = fhirpath_patch.patch(patch_parameters(*operations))(document)
    assert document == before, "the resource patched is not changed in place"
    return after


def codes(document: dict) -> list[str]:
    return [c["code"] for label in document.get("securityLabel", []) for c in label["coding"]]


def test_add_appends_to_a_list_and_sets_an_element_the_resource_has_not():
    assert codes(patched(operation("add", "DocumentReference", name="securityLabel", valueCodeableConcept=LABEL))) == [
        "N", "MASQUE_PS", "INVISIBLE_PATIENT"]
    added = patched(operation("add", "DocumentReference", name="description", valueString="Compte rendu"))
    assert added["description"] == "Compte rendu"
    # A list the resource has not is made a list; an extension is given by its parts, its value[x]
    # named `value` as FHIRPath names a choice.
    bare = {k: v for k, v in DOCUMENT.items() if k != "extension"}
    made = patched(operation("add", "DocumentReference", name="extension", value_parts=[
        {"name": "url", "valueUri": ARCHIVED}, {"name": "value", "valueBoolean": True}]), document=bare)
    assert made["extension"] == [{"url": ARCHIVED, "valueBoolean": True}]
    # A choice added by its name and its value's type.
    no_value = {**DOCUMENT, "extension": [{"url": ARCHIVED}]}
    assert patched(operation("add", f"DocumentReference.extension('{ARCHIVED}')", name="value", valueBoolean=True),
                   document=no_value)["extension"] == [{"url": ARCHIVED, "valueBoolean": True}]


def test_a_value_given_by_parts_repeats_its_elements_as_fhir_s_json_writes_them():
    """Parameters give an anonymous element's members as parts, one each: those that repeat (a
    contact's telecom, an extension's extensions) are lists, though given once."""
    contact = patched(operation("add", "Patient", name="contact", value_parts=[
        {"name": "name", "valueHumanName": {"text": "Anne"}},
        {"name": "telecom", "valueContactPoint": {"system": "phone", "value": "0102030405"}}]),
        document={"resourceType": "Patient"})
    assert contact["contact"] == [{"name": {"text": "Anne"}, "telecom": [{"system": "phone", "value": "0102030405"}]}]
    complex_extension = patched(operation("add", "Patient", name="extension", value_parts=[
        {"name": "url", "valueUri": "http://example.org/x"},
        {"name": "extension", "part": [{"name": "url", "valueUri": "a"}, {"name": "value", "valueString": "b"}]}]),
        document={"resourceType": "Patient"})
    assert complex_extension["extension"] == [
        {"url": "http://example.org/x", "extension": [{"url": "a", "valueString": "b"}]}]
    # The element the parts are of is the path's, by its tree: a path whose string holds dots (an
    # extension's url) was read by its text, and the extension's value kept as `value`.
    for path in (f"DocumentReference.extension('{ARCHIVED}')",
                 f"DocumentReference.extension.where(url = '{ARCHIVED}')"):
        replaced = patched(operation("replace", path, value_parts=[
            {"name": "url", "valueUri": ARCHIVED}, {"name": "value", "valueBoolean": True}]))
        assert replaced["extension"] == [{"url": ARCHIVED, "valueBoolean": True}]


def test_insert_delete_replace_and_move_act_at_the_place_named():
    assert codes(patched(operation("insert", "DocumentReference.securityLabel", index=0, valueCodeableConcept=LABEL))) \
        == ["INVISIBLE_PATIENT", "N", "MASQUE_PS"]
    assert codes(patched(operation("insert", "DocumentReference.securityLabel", index=2, valueCodeableConcept=LABEL))) \
        == ["N", "MASQUE_PS", "INVISIBLE_PATIENT"]
    assert codes(patched(operation("delete", "DocumentReference.securityLabel.where(coding.code = 'MASQUE_PS')"))) \
        == ["N"]
    assert codes(patched(operation("replace", "DocumentReference.securityLabel[1]", valueCodeableConcept=LABEL))) \
        == ["N", "INVISIBLE_PATIENT"]
    assert codes(patched(operation("move", "DocumentReference.securityLabel", source=1, destination=0))) \
        == ["MASQUE_PS", "N"]
    assert codes(patched(operation("move", "DocumentReference.securityLabel", source=0, destination=2))) \
        == ["MASQUE_PS", "N"]
    assert patched(operation("replace", "DocumentReference.status", valueCode="entered-in-error"))["status"] \
        == "entered-in-error"
    assert patched(operation("replace", f"DocumentReference.extension.where(url = '{ARCHIVED}').value",
                             valueBoolean=True))["extension"] == [{"url": ARCHIVED, "valueBoolean": True}]
    # The last item of a list deleted takes the list with it; an element not found deletes nothing.
    one = {**DOCUMENT, "securityLabel": DOCUMENT["securityLabel"][:1]}
    assert "securityLabel" not in patched(operation("delete", "DocumentReference.securityLabel.first()"), document=one)
    assert patched(operation("delete", "DocumentReference.description")) == DOCUMENT
    # Operations apply in their order, each to what the one before made.
    assert codes(patched(operation("delete", "DocumentReference.securityLabel.last()"),
                         operation("delete", "DocumentReference.securityLabel.last()"))) == []


@pytest.mark.parametrize("given, status, reason", [
    (operation("replace", "DocumentReference.securityLabel", valueCodeableConcept=LABEL), 422,
     "its path names 2 elements, not one"),
    (operation("replace", "DocumentReference.description", valueString="x"), 422, "its path names 0 elements"),
    (operation("replace", "DocumentReference", valueString="x"), 422, "not the resource itself"),
    (operation("add", "DocumentReference", name="status", valueCode="x"), 422, "already has its status"),
    (operation("add", "DocumentReference", name="nonsense", valueCode="x"), 422, "not an element of DocumentReference"),
    (operation("insert", "DocumentReference.securityLabel", index=3, valueCodeableConcept=LABEL), 422,
     "index 3 is outside 0 to 2"),
    (operation("move", "DocumentReference.securityLabel", source=2, destination=0), 422,
     "the list has 2 elements: the source is one of 0 to 1, the destination one of 0 to 2"),
    (operation("delete", "DocumentReference.securityLabel.single()"), 422, "single() is given 2 elements"),
    (operation("delete", "DocumentReference.subject.resolve().identifier"), 422, "the function resolve()"),
    (operation("delete", "DocumentReference.securityLabel.where(coding.code.matches('(a+)+$'))"), 422,
     "the function matches() in where()"),
    (operation("delete", "DocumentReference.securityLabel.where(%resource.status = 'current')"), 422, "a %variable"),
    (operation("delete", "DocumentReference.securityLabel.where(coding)"), 422, "give no boolean"),
    (operation("delete", "DocumentReference.securityLabel[-1]"), 422, "an index other than a whole number"),
    (operation("delete", "DocumentReference.status foo"), 400, "it goes on after an expression"),
    (operation("delete", "DocumentReference.'status"), 400, "is not FHIRPath"),
    (operation("delete", ""), 400, "a path is a FHIRPath of 1 to 300 characters"),
    (operation("remove", "DocumentReference.status"), 400, "an operation's type is one of"),
    (operation("delete", "DocumentReference.status", valueCode="x"), 400, "delete takes the parts path, type"),
    (operation("add", "DocumentReference", valueCode="x"), 400, "the operation has no name part"),
    (operation("add", "DocumentReference", name="1x", valueCode="x"), 400, "not an element's name"),
    ({"name": "op", "part": []}, 400, "each an operation"),
])
def test_what_cannot_be_applied_or_is_no_patch_is_refused_at_its_operation(given, status, reason):
    with pytest.raises(Refused) as refused:
        patched(given)
    assert refused.value.status == status and reason in refused.value.reason, refused.value.reason
    assert refused.value.location.startswith("Parameters.parameter[0]")


def test_hl7_s_test_cases_that_an_earlier_reading_failed():
    """Of HL7's FHIRPath Patch test cases (fhir-test-cases, r5/patch), run by hand, five failed
    here before: Parameters without an operation change nothing ("No Difference", "List
    unchanged"); what a deletion leaves empty goes with it ("Delete Nested Primitive #2"); a move's
    destination is a position of the list as it was ("Reorder List #4"); Narrative.div is named
    so, though FHIRPath's grammar reads `div` as its operator ("Full Resource")."""
    assert patched() == DOCUMENT
    contact = {"resourceType": "Patient", "contact": [{"name": {"text": "a name"}, "gender": "male"}]}
    assert patched(operation("delete", "Patient.contact[0].name.text"), document=contact)["contact"] == [
        {"gender": "male"}]
    listed = {"resourceType": "Patient", "identifier": [{"value": f"value {n}"} for n in range(1, 5)]}
    moved = patched(operation("move", "Patient.identifier", source=0, destination=3), document=listed)
    assert [i["value"] for i in moved["identifier"]] == ["value 2", "value 3", "value 1", "value 4"]
    narrative = {"resourceType": "Patient", "text": {"status": "generated", "div": "<div>a</div>"}}
    assert patched(operation("replace", "Patient.text.div", valueString="<div>b</div>"),
                   document=narrative)["text"]["div"] == "<div>b</div>"


def test_a_body_that_is_not_a_parameters_resource_or_holds_too_many_operations_is_refused():
    with pytest.raises(Refused, match="a FHIRPath Patch is a Parameters resource, not a Basic"):
        fhirpath_patch.operations({"resourceType": "Basic"})
    many = [operation("delete", "DocumentReference.description")] * (fhirpath_patch.MAX_OPERATIONS + 1)
    with pytest.raises(Refused, match="in at most 8 operations") as refused:
        fhirpath_patch.operations(patch_parameters(*many))
    assert refused.value.status == 413


STEPS = [".securityLabel", ".status", ".extension", ".coding", ".code", ".value", ".url", ".content", ".attachment",
         ".description", "[0]", "[1]", "[5]", ".first()", ".last()", ".single()", ".where(coding.code = 'N')",
         ".where(url = 'x')", ".where($this = 'current')", f".extension('{ARCHIVED}')", ".resolve()",
         ".where(descendants().exists())", ".where(%resource.id = 'a')", ".where(coding)", ".where(code.count() > 0)"]
BROKEN = ["", ".", "(", ")", "'", "`", "\\", "é", " x", "[", "..", "[-1]"]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["DocumentReference", "securityLabel", "status", "Patient"]), st.lists(st.sampled_from(STEPS),
       max_size=6), st.one_of(st.just(""), st.sampled_from(BROKEN)), st.sampled_from(list(fhirpath_patch.PARTS)),
       st.one_of(st.booleans(), st.text(max_size=5), st.fixed_dictionaries({"coding": st.just([{"code": "N"}])})))
# Found by this test: a value inserted in a list of another type (a CodeableConcept's members in
# DocumentReference.content) was a TypeError where its members were shaped.
@example(head="DocumentReference", steps=[".content"], broken="", kind="insert", value={"coding": [{"code": "N"}]})
def test_any_path_and_value_make_a_resource_or_a_refusal(head, steps, broken, kind, value):
    """A path made of the steps paths take, sometimes broken, for any operation with any value: the
    patched resource, or a refusal (a 400 or a 422), never another exception (a 500)."""
    given = operation(kind, head + "".join(steps) + broken, name="securityLabel", index=1, source=0, destination=1)
    given["part"] = [part for part in given["part"] if part["name"] in ("type", "path", *fhirpath_patch.PARTS[kind])]
    if kind in ("add", "insert", "replace"):
        key = {bool: "valueBoolean", str: "valueString", dict: "valueCodeableConcept"}[type(value)]
        given["part"].append({"name": "value", key: value})
    try:
        result = patched(given)
    except Refused as refused:
        assert refused.status in (400, 422)
    else:
        assert result["resourceType"] == "DocumentReference"
