"""GET /fhir/metadata: a CapabilityStatement listing exactly what the server supports."""
from __future__ import annotations

from flask import current_app

from gateway.services.directory import REGISTERED_TYPES
from gateway.storage.searchparams import SEARCH_PARAMS

from .blueprint import fhir
from .read import STORED_TYPES
from .responses import fhir_response, negotiate

MHD = "https://profiles.ihe.net/ITI/MHD/CapabilityStatement/"
VALIDATE = {"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
            "documentation": "POST [type]/$validate: the resource, or Parameters holding it (mode create or update), "
                             "checked as a write checks it; nothing is kept"}
SEARCH_TYPE_NAMES = {"token": "token", "string": "string", "date": "date", "reference": "reference"}
SEARCH_DOCUMENTATION = {
    "DocumentReference": "ITI-67 Find Document References (IHE MHD, ANS PDSm)",
    "Patient": "Patient search by identifier (INS, IPP), name, birthdate, gender, deceased",
    "List": "ITI-66 Find Document Lists (IHE MHD, ANS PDSm): SubmissionSets and Folders (code submissionset, folder)",
}


def capability_statement(base: str, cors: bool = False) -> dict:
    resources = []
    for res_type in STORED_TYPES:
        interactions = [{"code": "read"}, {"code": "vread"}, {"code": "history-instance"}]
        params = SEARCH_PARAMS.get(res_type, {})
        if params:
            interactions.append({"code": "search-type"})
        if res_type in REGISTERED_TYPES or res_type == "Consent":
            interactions.append({"code": "create"})
        if res_type == "Consent":
            interactions.append({"code": "update", "documentation": "the patient or a representative; revoke "
                                                                   "with status inactive"})
        if res_type == "DocumentReference":
            interactions.append({"code": "create", "documentation": "ITI-105 Simplified Publish"})
            interactions.append({"code": "patch", "documentation": (
                "JSON Patch, also conditional on identifier (PDSM4DMP TD3.3a-d): securityLabel (masking), the "
                "isArchived extension (archiving), status entered-in-error (deletion). MHD allows a "
                "DocumentReference only current and superseded: a deletion is carried out as a FHIR delete, the "
                "document leaves every search and a read answers 410 Gone; its versions stay in the history.")})
            interactions.append({"code": "delete", "documentation": (
                "the deletion the PATCH of the status to entered-in-error asks (PDSM4DMP TD3.3c), by id or "
                "conditional on identifier; a producer of the document only")})
        entry = {
            "type": res_type,
            "interaction": interactions,
            # An update (Consent's PUT, DocumentReference's PATCH) may name its version with If-Match.
            "versioning": "versioned-update" if res_type in ("Consent", "DocumentReference") else "versioned",
            "readHistory": True,
            "conditionalCreate": res_type in REGISTERED_TYPES + ("Consent",),
            "conditionalRead": "full-support",   # If-None-Match and If-Modified-Since
        }
        if res_type == "DocumentReference":
            entry["conditionalDelete"] = "single"
        entry["operation"] = [VALIDATE]
        if params:
            entry["searchParam"] = [{"name": p.name, "type": SEARCH_TYPE_NAMES[p.type]} for p in params.values()] + [
                {"name": "_id", "type": "token"}, {"name": "_lastUpdated", "type": "date"}]
        if res_type == "DocumentReference":
            entry["profile"] = "https://interop.esante.gouv.fr/ig/fhir/pdsm/StructureDefinition/pdsm-comprehensive-document-reference"
            entry["searchInclude"] = ["DocumentReference:subject", "DocumentReference:patient",
                                      "DocumentReference:author", "DocumentReference:custodian",
                                      "DocumentReference:authenticator"]
            entry["searchParam"] += [{"name": "patient.identifier", "type": "token"}]
        if res_type == "Patient":
            entry["searchRevInclude"] = ["DocumentReference:subject", "DocumentReference:patient"]
        if res_type in SEARCH_DOCUMENTATION:
            entry["documentation"] = SEARCH_DOCUMENTATION[res_type]
        resources.append(entry)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-22",
        "kind": "instance",
        "instantiates": [MHD + "IHE.MHD.DocumentResponder", MHD + "IHE.MHD.DocumentRecipient"],
        "software": {"name": "gateway", "version": "0.1.0"},
        "implementation": {"description": "DMP interoperability gateway", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json", "application/fhir+xml", "xml"],
        "patchFormat": ["application/json-patch+json", "application/fhir+json", "application/fhir+xml"],
        "rest": [{
            "mode": "server",
            "security": {
                "cors": cors,   # GATEWAY_CORS_ORIGINS
                "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                         "code": "OAuth"}]}],
                "description": "Bearer JWT (claims sub, role, purpose, org, patient). Every read and change "
                               "is filtered by the patient's consents and audited (AuditEvent, IHE BALP).",
            },
            "documentation": "ITI-65 Provide Document Bundle (POST transaction), ITI-105 Simplified Publish "
                             "(POST DocumentReference), ITI-66 Find Document Lists, ITI-67 Find Document "
                             "References, ITI-68 Retrieve Document (GET attachment url), and the DMP's transactions "
                             "of the ANS guide PDSM4DMP.",
            "resource": resources,
            "interaction": [{"code": "transaction", "documentation": (
                "ITI-65 Provide Document Bundle: one SubmissionSet, its DocumentReferences and Binaries, and "
                "Folders created (POST) or added to (PUT List/[id]); all or nothing")}],
        }],
    }


@fhir.get("/metadata")
def metadata():
    negotiate()
    settings = current_app.config["SETTINGS"]
    return fhir_response(capability_statement(settings.fhir_base, bool(settings.cors_origins)))
