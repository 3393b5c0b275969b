"""A real FHIR client library (fhirclient, R4 models) searches and reads over HTTP."""
import requests
from fhirclient import client as fhir_client
from fhirclient.models.documentreference import DocumentReference
from fhirclient.models.patient import Patient

from conftest import GP, attend_all, sample


def test_fhirclient_search_and_read(live_server, database, bearer):
    base = live_server.fhir_base
    doctor = bearer("doctor", sub=GP)
    for name in ("ldl-ses-martin.xml", "cr-biologie-martin.xml"):
        assert requests.post(f"{live_server.public_base_url}/cda", data=sample(name),
                             headers={"Content-Type": "application/xml", **doctor}, timeout=10).status_code == 201
    attend_all(database[0])
    smart = fhir_client.FHIRClient(settings={"app_id": "gateway-tests", "api_base": base})
    smart.server.session.headers.update(doctor)  # fhirclient sends what its requests session carries
    search = DocumentReference.where(struct={"patient.identifier": "urn:oid:1.2.250.1.213.1.4.10|185067511204554",
                                             "status": "current"})
    documents = search.perform_resources(smart.server)
    assert sorted(d.type.coding[0].code for d in documents) == ["11490-0", "11502-2"]
    document = DocumentReference.read(documents[0].id, smart.server)
    assert document.masterIdentifier.value.startswith("urn:oid:1.2.250.1.213.1.1.9.2.")
    patient = Patient.read(document.subject.reference.split("/")[1], smart.server)
    assert patient.birthDate.isostring == "1985-06-12"
    retrieved = requests.get(document.content[0].attachment.url, headers=doctor, timeout=10)
    assert retrieved.content in (sample("ldl-ses-martin.xml"), sample("cr-biologie-martin.xml"))
    # A subset (_summary, _elements) is read by its R4 models: what they require is kept.
    for subset in ({"_summary": "true"}, {"_elements": "description"}):
        subsetted = DocumentReference.where(struct={"patient.identifier": "urn:oid:1.2.250.1.213.1.4.10|185067511204554",
                                                    "status": "current", **subset}).perform_resources(smart.server)
        assert len(subsetted) == 2 and all(d.authenticator is None and d.status == "current" for d in subsetted)
        assert all("SUBSETTED" in [t.code for t in d.meta.tag] for d in subsetted)
