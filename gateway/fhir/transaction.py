"""POST /fhir with a transaction Bundle: ITI-65 Provide Document Bundle."""
from __future__ import annotations

from flask import current_app, g, request

from gateway.cda.errors import DocumentRefused
from gateway.services.provide import provide

from .blueprint import fhir
from .responses import FhirError, fhir_response, negotiate


@fhir.post("")
@fhir.post("/")
def transaction():
    negotiate()
    if request.mimetype not in ("application/fhir+json", "application/json"):
        raise FhirError(415, f"content type {request.mimetype or '(none)'} is not supported: send "
                             "application/fhir+json", code="not-supported")
    settings = current_app.config["SETTINGS"]
    try:
        response = provide(g.repository, request.get_data(), settings.trust_anchors,
                           settings.max_document_bytes, sender=request.remote_addr)
    except DocumentRefused as refusal:
        raise FhirError(refusal.status, refusal.reason, code=refusal.code, expression=refusal.location) from None
    return fhir_response(response, 200)
