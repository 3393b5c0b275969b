"""POST /fhir with a transaction Bundle: ITI-65 Provide Document Bundle."""
from __future__ import annotations

from flask import current_app, g, request

from gateway.services.ingest import Received
from gateway.services.provide import provide

from .blueprint import fhir
from .responses import FHIR_TYPES, fhir_response, negotiate, request_body, require_content_type


@fhir.post("")
@fhir.post("/")
def transaction():
    negotiate()
    require_content_type(FHIR_TYPES, "is not supported: send application/fhir+json or application/fhir+xml")
    settings = current_app.config["SETTINGS"]
    response = provide(g.repository, Received("iti65", request_body(), request.mimetype,
                                              request.remote_addr), settings.trust_anchors, settings.max_document_bytes)
    return fhir_response(response, 200)
