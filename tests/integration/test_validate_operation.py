"""POST [type]/$validate: a client tries a resource before it sends it, and is told what a write
would be refused for, or that nothing was found; nothing is kept, nothing of a record is read."""
import json

import pytest
from sqlalchemy import func, select

import profiles

from gateway.storage.schema import resources

FHIR = {"Content-Type": "application/fhir+json"}
PATIENT = {"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10",
                                                      "value": "279035121518989"}],
           "name": [{"family": "PAT-TROIS", "given": ["DOMINIQUE"]}], "gender": "female", "birthDate": "1979-03-28"}


def validated(client, res_type: str, body: dict, headers: dict = FHIR):
    answer = client.post(f"/fhir/{res_type}/$validate", data=json.dumps(body), headers=headers)
    assert answer.status_code == 200, answer.json
    assert answer.json["resourceType"] == "OperationOutcome", answer.json
    return answer.json["issue"]


def stored(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(resources)).scalar_one()


@pytest.mark.parametrize("res_type, resource, expression, told", [
    ("Patient", dict(PATIENT, gender="main"), "/gender", "gender"),
    ("Patient", dict(PATIENT, birthDate="1979-02-30"), "Patient", "birthDate: "),
    ("Patient", dict(PATIENT, extension=[{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace"}]),
     "/extension/0", "value"),
    ("Consent", {"resourceType": "Consent", "scope": {"text": "x"}, "category": [{"text": "x"}]},
     "Consent", "status: "),
    ("DocumentReference", {"resourceType": "DocumentReference", "status": "current", "docStatus": "final",
                           "content": [{"attachment": {"contentType": "text/plain"}}]},
     "DocumentReference.docStatus", "PDSm prohibits it"),
], ids=["a-code-outside-its-required-binding", "a-date-that-is-none", "an-extension-without-its-value",
        "a-required-element-left-out", "an-element-pdsm-prohibits"])
def test_a_resource_a_write_would_refuse_is_told_where_and_why_and_nothing_is_kept(
        client, database, res_type, resource, expression, told):
    """A Patient whose gender is `main`, born on 30 February, or with an extension without a value;
    a Consent without its status; a DocumentReference with the docStatus PDSm prohibits: each is
    answered 200, an error issue at its place, as FHIR's $validate answers a resource it validated;
    none is kept."""
    before = stored(database[0])
    issues = validated(client, res_type, resource)
    assert [issue["severity"] for issue in issues] == ["error"], issues
    assert issues[0]["expression"][0].endswith(expression) and told in issues[0]["diagnostics"], issues
    assert stored(database[0]) == before


def test_a_valid_resource_is_told_what_was_checked_in_either_form_and_format(client, database):
    """As the resource itself (JSON, then XML), or as the operation's Parameters (what HAPI's client
    sends): no problem found, and what was, and was not, checked."""
    issues = validated(client, "Patient", PATIENT)
    assert [(issue["severity"], issue["code"]) for issue in issues] == [("information", "informational")], issues
    assert "no problem found" in issues[0]["diagnostics"] and "official profiles are not checked" in \
        issues[0]["diagnostics"], issues
    parameters = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": PATIENT},
                                                              {"name": "mode", "valueCode": "create"}]}
    assert validated(client, "Patient", parameters) == issues
    as_xml = client.post("/fhir/Patient/$validate", headers={"Content-Type": "application/fhir+xml"}, data=(
        '<Patient xmlns="http://hl7.org/fhir"><gender value="female"/><birthDate value="1979-03-28"/></Patient>'))
    assert as_xml.status_code == 200 and b"no problem found" in as_xml.data, as_xml.data
    assert stored(database[0]) == 0
    if profiles.available():
        checked = profiles.Collected()
        checked.add({"resourceType": "OperationOutcome", "issue": issues})
        refused = validated(client, "Patient", dict(PATIENT, gender="x"))
        checked.add({"resourceType": "OperationOutcome", "issue": refused})
        assert not checked.errors(), "\n".join(checked.errors())


@pytest.mark.parametrize("res_type, body, status, told", [
    ("DocumentReference", PATIENT, 400, "validated at [base]/Patient/$validate"),
    ("Patient", {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": PATIENT},
                                                             {"name": "mode", "valueCode": "delete"}]},
     400, "mode delete is not validated here"),
    ("Patient", {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": PATIENT},
        {"name": "profile", "valueUri": "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-patient"}]},
     400, "profile is not validated here"),
    ("Patient", {"resourceType": "Parameters", "parameter": [{"name": "mode", "valueCode": "create"}]},
     400, "in its parameter `resource`"),
], ids=["another-type", "mode-delete", "a-profile", "no-resource"])
def test_what_the_operation_cannot_do_is_a_client_error(client, res_type, body, status, told):
    answer = client.post(f"/fhir/{res_type}/$validate", data=json.dumps(body), headers=FHIR)
    assert answer.status_code == status and told in answer.json["issue"][0]["diagnostics"], answer.json


def test_the_operation_needs_a_token_and_is_listed(app, client):
    anonymous = app.test_client().post("/fhir/Patient/$validate", data=json.dumps(PATIENT), headers=FHIR)
    assert anonymous.status_code == 401, anonymous.json
    capability = client.get("/fhir/metadata").json
    patient = next(r for r in capability["rest"][0]["resource"] if r["type"] == "Patient")
    assert [o["definition"] for o in patient["operation"]] == [
        "http://hl7.org/fhir/OperationDefinition/Resource-validate"], patient
    assert client.post("/fhir/Patient/$everything", headers=FHIR).status_code == 404
    by_get = client.get("/fhir/Patient/$validate")
    assert by_get.status_code == 405 and by_get.headers["Allow"] == "POST", by_get.json
