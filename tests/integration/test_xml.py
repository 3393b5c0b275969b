"""FHIR XML in and out (IHE MHD: a Document Responder and Recipient speak both): every interaction
answers XML to `_format=xml` or `Accept: application/fhir+xml`, and takes XML bodies; the XML is
parsed without DTD or entities."""

import json

from lxml import etree

from conftest import SAMPLES, attend_all
from gateway.demo import build_submission
from gateway.fhir.formats import to_xml
from gateway.services.consents import decision

FHIR_NS = "{http://hl7.org/fhir}"
XML = {"Content-Type": "application/fhir+xml", "Accept": "application/fhir+xml"}
LIMIT = 5 * 1024 * 1024


def root(response):
    assert response.headers["Content-Type"].startswith("application/fhir+xml"), response.data[:300]
    return etree.fromstring(response.data)


def test_every_interaction_speaks_xml(client, database):
    bundle = build_submission((SAMPLES / "cda" / "ldl-ses-martin.xml").read_bytes(), LIMIT)
    provided = client.post("/fhir", data=to_xml(bundle), headers=XML)
    assert provided.status_code == 200, provided.data[:500]
    response = root(provided)
    assert response.tag == FHIR_NS + "Bundle"
    assert response.find(f"{FHIR_NS}type").get("value") == "transaction-response"
    attend_all(database[0])

    found = client.get("/fhir/DocumentReference", query_string={"_format": "xml", "status": "current"})
    searchset = root(found)
    documents = searchset.findall(f"{FHIR_NS}entry/{FHIR_NS}resource/{FHIR_NS}DocumentReference")
    assert len(documents) == 1
    docref_id = documents[0].find(f"{FHIR_NS}id").get("value")
    read = root(client.get(f"/fhir/DocumentReference/{docref_id}", headers={"Accept": "application/fhir+xml"}))
    assert read.find(f"{FHIR_NS}masterIdentifier/{FHIR_NS}use").get("value") == "usual"
    assert root(client.get("/fhir/metadata", headers={"Accept": "application/fhir+xml"})).tag == \
        FHIR_NS + "CapabilityStatement"
    # The same resource as JSON and as XML says the same.
    as_json = client.get(f"/fhir/DocumentReference/{docref_id}").json
    assert read.find(f"{FHIR_NS}type/{FHIR_NS}coding/{FHIR_NS}code").get("value") == as_json["type"]["coding"][0]["code"]

    patient = client.post("/fhir/Patient", data=to_xml({
        "resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "279035121518989"}],
        "name": [{"id": "birth-name", "family": "TROIS", "given": ["DOMINIQUE"]}], "gender": "female",
        "birthDate": "1979-03-28"}), headers=XML)
    assert patient.status_code == 201, patient.data[:300]
    assert root(patient).find(f"{FHIR_NS}name/{FHIR_NS}family").get("value") == "TROIS"
    # Nothing the XML said is lost on the way to JSON: a datatype's id is an attribute in XML.
    attend_all(database[0])
    stored = client.get(f"/fhir/Patient/{root(patient).find(f'{FHIR_NS}id').get('value')}").json
    assert stored["name"][0]["id"] == "birth-name", stored
    refused = client.get("/fhir/DocumentReference/unknown", headers={"Accept": "application/fhir+xml"})
    assert refused.status_code == 404 and root(refused).tag == FHIR_NS + "OperationOutcome"


def test_xml_with_a_document_type_declaration_is_refused(client):
    body = (b'<?xml version="1.0"?>\n' + b" " * 5000 + b'<!DOCTYPE Patient [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            b'<Patient xmlns="http://hl7.org/fhir"><name><family value="&x;"/></name></Patient>')
    response = client.post("/fhir/Patient", data=body, headers={**XML, "Accept": "application/fhir+json"})
    assert response.status_code == 400
    assert "passwd" not in response.get_data(as_text=True)
    utf16 = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE a><Patient xmlns="http://hl7.org/fhir"/>'.encode("utf-16")
    assert client.post("/fhir/Patient", data=utf16, headers=XML).status_code == 400


def test_the_links_of_a_page_keep_the_format_asked(client, database, bearer):
    """A page's links repeat `_format` and `_pretty`, as HAPI's do: a client that asked for XML by
    `_format` (a browser, a client that sets no Accept) followed `next` and got JSON, in a search
    and in a history."""
    for name in ("ldl-ses-martin.xml", "cr-biologie-martin.xml"):
        bundle = build_submission((SAMPLES / "cda" / name).read_bytes(), LIMIT)
        assert client.post("/fhir", data=to_xml(bundle), headers=XML).status_code == 200
    attend_all(database[0])

    def links(response) -> dict[str, str]:
        return {link.find(f"{FHIR_NS}relation").get("value"): link.find(f"{FHIR_NS}url").get("value")
                .replace("http://gateway.test", "") for link in root(response).findall(f"{FHIR_NS}link")}
    first = client.get("/fhir/DocumentReference", query_string={"_format": "xml", "_pretty": "true", "_count": "1"})
    assert all("_format=xml" in url and "_pretty=true" in url for url in links(first).values()), links(first)
    second = client.get(links(first)["next"])
    assert len(root(second).findall(f"{FHIR_NS}entry/{FHIR_NS}resource/{FHIR_NS}DocumentReference")) == 1
    assert second.data.count(b"\n  ") > 10   # indented
    assert "_format=xml" in links(second)["previous"]
    assert "_format" not in client.get("/fhir/DocumentReference", query_string={"_count": "1"}).json["link"][1]["url"]

    martin = bearer("patient", patient="185067511204554")
    made = client.post("/fhir/Consent", data=json.dumps(decision("professional", "permit", "899900000046")),
                       headers={"Content-Type": "application/fhir+json", **martin}).json
    revoked = {key: value for key, value in made.items() if key not in ("meta", "dateTime")} | {"status": "inactive"}
    assert client.put(f"/fhir/Consent/{made['id']}", data=json.dumps(revoked),
                      headers={"Content-Type": "application/fhir+json", **martin}).status_code == 200
    history = client.get(f"/fhir/Consent/{made['id']}/_history", query_string={"_format": "xml", "_count": "1"},
                         headers=martin)
    older = client.get(links(history)["next"], headers=martin)
    assert root(older).find(f"{FHIR_NS}entry/{FHIR_NS}resource/{FHIR_NS}Consent/{FHIR_NS}status").get("value") == \
        "active"
