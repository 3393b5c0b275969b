"""POST /fhir/DocumentReference: ITI-105 Simplified Publish (PDSM4DMP TD2), the document in
content.attachment.data."""
from __future__ import annotations

from flask import current_app, g, request

from gateway.services.ingest import Received
from gateway.services.provide import publish

from .blueprint import fhir
from .responses import FHIR_TYPES, negotiate, request_body, require_content_type, written


@fhir.post("/DocumentReference")
def simplified_publish():
    negotiate()
    require_content_type(FHIR_TYPES, "is not supported: send application/fhir+json or application/fhir+xml")
    settings = current_app.config["SETTINGS"]
    created, stored = publish(g.repository, Received("iti105", request_body(), request.mimetype,
                                                     request.remote_addr), settings.trust_anchors,
                              settings.max_document_bytes)
    return written(stored, 201 if created else 200, "created" if created else "already registered: nothing was created")
