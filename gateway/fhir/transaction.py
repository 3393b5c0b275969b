"""POST /fhir with a transaction Bundle: ITI-65 Provide Document Bundle."""
from __future__ import annotations

from flask import current_app, g, request

from gateway.cda.errors import DocumentRefused
from gateway.services.provide import provide

from .blueprint import fhir
from .responses import FHIR_TYPES, FhirError, fhir_response, negotiate, require_content_type


@fhir.post("")
@fhir.post("/")
def transaction():
    g.repository.access.require(g.repository.access.may_feed, "submit documents")
    negotiate()
    require_content_type(FHIR_TYPES, "is not supported: send application/fhir+json or application/fhir+xml")
    settings = current_app.config["SETTINGS"]
    try:
        response = provide(g.repository, request.get_data(), settings.trust_anchors,
                           settings.max_document_bytes, sender=request.remote_addr,
                           content_type=request.mimetype)
    except DocumentRefused as refusal:
        raise FhirError(refusal.status, refusal.reason, code=refusal.code, expression=refusal.location) from None
    return fhir_response(response, 200)
