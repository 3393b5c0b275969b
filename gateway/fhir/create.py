"""create: POST [type] for the identity resources, with If-None-Exist (conditional create).

Documents enter through ITI-65 or POST /cda, never as bare DocumentReferences.
"""
from __future__ import annotations

from urllib.parse import parse_qsl

from flask import current_app, g, request

from gateway.mapping import codes
from gateway.mapping.identity import ins_key_is_valid
from gateway.storage import search as search_sql
from gateway.storage.repository import new_id

from .blueprint import fhir
from .read import STORED_TYPES
from gateway.cda.errors import DocumentRefused

from .formats import load
from .responses import FHIR_TYPES, FhirError, fhir_response, negotiate, require_content_type, version_headers
from .validation import InvalidResource, validate

CREATABLE_TYPES = ("Patient", "Practitioner", "Organization")


def read_json_body() -> dict:
    """The request's resource as JSON data, sent as FHIR JSON or FHIR XML."""
    require_content_type(FHIR_TYPES, "is not supported: send application/fhir+json or application/fhir+xml")
    try:
        body = load(request.get_data(), request.mimetype)
    except DocumentRefused as refusal:
        raise FhirError(refusal.status, refusal.reason, code=refusal.code) from None
    if not isinstance(body, dict) or "resourceType" not in body:
        raise FhirError(400, "the body is not a FHIR resource (no resourceType)", code="structure")
    return body


@fhir.post("/<res_type>")
def create(res_type: str):
    if res_type not in CREATABLE_TYPES:
        if res_type in STORED_TYPES:
            raise FhirError(405, f"create is not supported on {res_type}; documents are submitted with ITI-65 "
                                 "(POST /fhir transaction) or POST /cda", code="not-supported")
        raise FhirError(404, f"resource type {res_type} is not supported by this server", code="not-supported")
    g.repository.access.require(g.repository.access.may_feed, f"create a {res_type}")
    negotiate()
    resource = read_json_body()
    if resource["resourceType"] != res_type:
        raise FhirError(400, f"the body is a {resource['resourceType']}, posted to {res_type}", code="invalid")
    condition = request.headers.get("If-None-Exist")
    if condition:
        try:
            parsed = search_sql.parse_search(res_type, parse_qsl(condition), strict=True)
        except search_sql.SearchError as exc:
            raise FhirError(400, f"If-None-Exist: {exc}", code="invalid") from None
        parsed.count = 2
        page = g.repository.search(parsed)
        if page.total > 1:
            raise FhirError(412, f"If-None-Exist matches {page.total} resources", code="duplicate")
        if page.total == 1:
            found = page.entries[0]
            return fhir_response(found.body, 200, version_headers(found.version, found.last_updated))
    resource["id"] = new_id()
    # The server owns versionId and lastUpdated; the client's profiles are kept.
    profiles = resource.get("meta", {}).get("profile")
    resource["meta"] = {"profile": profiles} if profiles else {}
    try:
        validate(resource)
    except InvalidResource as exc:
        raise FhirError(422, str(exc), code="invalid") from None
    if res_type == "Patient":
        for identifier in resource.get("identifier", []):
            if identifier.get("system", "").removeprefix("urn:oid:") in codes.INS_OIDS and \
                    not ins_key_is_valid(str(identifier.get("value", "")).replace(" ", "")):
                raise FhirError(422, "the INS is not valid: 15 characters whose last two are 97 - (first 13 mod 97)",
                                code="invalid", expression="Patient.identifier")
    with g.repository.unit_of_work() as uow:
        for identifier in resource.get("identifier", []):
            if identifier.get("system") and identifier.get("value"):
                if uow.find_by_identifier(res_type, identifier["system"], identifier["value"]):
                    # Which resource holds it is not told: the requester may not read it.
                    raise FhirError(409, f"a {res_type} with identifier {identifier['system']}|{identifier['value']} "
                                         "is already registered", code="duplicate")
                uow.claim_identifier(res_type, identifier["system"], identifier["value"], resource["id"])
        stored = uow.save(resource, patient_id=resource["id"] if res_type == "Patient" else None)
    base = current_app.config["SETTINGS"].fhir_base
    headers = version_headers(stored.version, stored.last_updated)
    headers["Location"] = f"{base}/{res_type}/{stored.res_id}/_history/{stored.version}"
    return fhir_response(stored.body, 201, headers)
