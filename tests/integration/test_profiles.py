"""What every ingest path stores and every read path answers passes the official profile check
(FHIR R4, ANS PDSm, IHE MHD, FR Core, IHE BALP), on both backends: CDA over /cda (our samples and
the third-party corpus), HL7v2 ADT/ZFA, MDM T02/T10/T04 and ORU, ITI-65 with a signature, consent
changes, masking, the patient space's own documents; searches, reads, a history, the CapabilityStatement,
transaction-responses, OperationOutcomes and the FHIR document of a patient's copy of their record."""
import io
import json
import zipfile

from sqlalchemy import select

import profiles
from conftest import CORPUS, GP, REPORT, SAMPLES, attend_all
from gateway.access import AccessContext
from gateway.demo import build_submission, signed_submission
from gateway.services import personal
from gateway.services.export import write_export
from gateway.storage.repository import Repository
from gateway.storage.schema import resources

PATIENTS = json.loads((SAMPLES / "patients.json").read_text())
MARTIN = PATIENTS["martin"]["ins"]
FHIR = {"Content-Type": "application/fhir+json"}
LIMIT = 5 * 1024 * 1024


def test_everything_served_passes_the_official_profiles(client, bearer, settings, database, backend):
    profiles.require()
    engine = database[0]
    collected = profiles.Collected()
    system = bearer("system", sub="GAM CH-SAINT-AUBIN")
    patient = bearer("patient", patient=MARTIN)

    # Ingest: direct CDA, HL7v2 (identity, consents, documents, replacement, deletion), ITI-65.
    cda_files = sorted((SAMPLES / "cda").glob("*.xml")) + sorted((SAMPLES / "replacement").glob("*.xml"))
    if (CORPUS / "cda").is_dir():
        cda_files += sorted((CORPUS / "cda").glob("fr_*.xml"))
    for path in cda_files:
        response = client.post("/cda", data=path.read_bytes(), headers={"Content-Type": "application/xml"})
        collected.add(response.json)
    for path in sorted((SAMPLES / "hl7v2").glob("*.hl7")):
        reply = client.post("/hl7v2", data=path.read_bytes(), headers={**system, "Content-Type": "x-application/hl7-v2+er7"})
        assert b"MSA|AA" in reply.data, (path.name, reply.data)
    provided = client.post("/fhir", data=json.dumps(signed_submission(settings, (SAMPLES / "signed" / "synthese-moreau.xml").read_bytes())),
                           headers=FHIR)
    assert provided.status_code == 200, provided.json
    collected.add(provided.json, profiles.PROVIDE_RESPONSE)
    unsigned = client.post("/fhir", data=json.dumps(build_submission((SAMPLES / "cda" / "ldl-ses-martin.xml").read_bytes(), LIMIT)),
                           headers=FHIR)
    collected.add(unsigned.json, profiles.PROVIDE_RESPONSE)

    # The patient's writes: a decision, masking, a personal document.
    consent = client.post("/fhir/Consent", headers={**patient, **FHIR}, data=json.dumps({
        "resourceType": "Consent", "status": "active",
        "category": [{"coding": [{"system": "urn:dmp-gateway:consent-kind", "code": "professional"}]}],
        "provision": {"type": "permit", "actor": [{"role": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP"}]}, "reference": {"identifier": {
            "system": "urn:oid:1.2.250.1.71.4.2.1", "value": "899900000012"}}}]}}))
    assert consent.status_code == 201, consent.json
    documents = client.get("/fhir/DocumentReference", query_string={"status": "current"}, headers=patient).json
    first = documents["entry"][0]["resource"]
    masked = client.patch(f"/fhir/DocumentReference/{first['id']}", headers={
        **patient, "Content-Type": "application/json-patch+json"}, data=json.dumps([{"op": "add", "path": "/securityLabel/-", "value": {
            "coding": [{"system": "https://mos.esante.gouv.fr/NOS/TRE_A07-StatutVisibiliteDocument/FHIR/TRE-A07-StatutVisibiliteDocument",
                        "code": "MASQUE_PS"}]}}]))
    assert masked.status_code == 200, masked.json
    own = Repository(engine, AccessContext(role="patient", subject=MARTIN, patient_ins=MARTIN), settings.public_base_url)
    personal.add_document(own, title="Mes directives", type_code=personal.ADVANCE_DIRECTIVES, media_type="text/plain",
                          data="Je souhaite être informé.".encode(), file_name="directives.txt", max_bytes=LIMIT)

    # Reads: searches (ITI-67, ITI-66), reads, the trail, the capability statement, refusals.
    attend_all(engine)
    gp = bearer("doctor", sub=GP)
    for ins in (p["ins"] for p in PATIENTS.values()):
        found = client.get("/fhir/DocumentReference", headers=gp, query_string={
            "patient.identifier": f"urn:oid:1.2.250.1.213.1.4.10|{ins}", "status": "current,superseded"})
        assert found.status_code == 200
        collected.add(found.json, profiles.FIND_DOCUMENT_REFERENCES)
    lists = client.get("/fhir/List", headers=gp, query_string={"code": "submissionset"})
    collected.add(lists.json, profiles.FIND_LISTS)
    for path in ("/fhir/AuditEvent?_count=50", "/fhir/Consent", "/fhir/Patient?_count=50", "/fhir/metadata"):
        collected.add(client.get(path, headers=gp).json)
    # Subsets (_summary, _elements) keep what the profiles require: each still passes them.
    for subset in ({"_summary": "true"}, {"_summary": "text"}, {"_summary": "data"}, {"_elements": "type,date"}):
        found = client.get("/fhir/DocumentReference", headers=gp, query_string={"status": "current", **subset})
        collected.add(found.json, profiles.FIND_DOCUMENT_REFERENCES)
        collected.add(client.get(f"/fhir/DocumentReference/{first['id']}", headers=gp, query_string=subset).json)
    for res_type in ("List", "AuditEvent", "Consent", "Patient", "Practitioner", "PractitionerRole", "Organization"):
        found = client.get(f"/fhir/{res_type}", headers=gp, query_string={"_summary": "true", "_count": 20})
        assert found.status_code == 200, (res_type, found.json)
        collected.add(found.json, profiles.FIND_LISTS if res_type == "List" else ())
    collected.add(client.get("/fhir/AuditEvent", headers=patient).json)
    history = client.get(f"/fhir/DocumentReference/{first['id']}/_history?_count=1", headers=patient).json
    assert history["total"] == 2 and [link["relation"] for link in history["link"]] == ["self", "next"]
    collected.add(history)
    # The patient's copy of their record: bundle.json, a document Bundle written an entry a line.
    copy = io.BytesIO()
    write_export(own, settings.fhir_base, settings.export_key.read_bytes(), settings.export_cert.read_bytes(), copy)
    collected.add(json.loads(zipfile.ZipFile(copy).read("bundle.json")))
    collected.add(client.post("/cda", data=b"<nothing/>", headers={"Content-Type": "application/xml"}).json)
    collected.add(client.get("/fhir/DocumentReference/unknown", headers=gp).json)

    # Everything stored, as it is read back.
    with engine.connect() as conn:
        for body, in conn.execute(select(resources.c.body).where(resources.c.res_type != "Binary")):
            collected.add(json.loads(body))

    errors = collected.errors()
    REPORT.append(f"profilecheck ({backend}): {len(collected)} resources and answers validated, {len(errors)} errors")
    assert not errors, "\n".join(errors[:40])
