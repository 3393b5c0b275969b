"""POST /fhir/DocumentReference: ITI-105 Simplified Publish (PDSM4DMP TD2), the document in
content.attachment.data."""
from __future__ import annotations

from flask import current_app, g, request

from gateway.services.ingest import Received
from gateway.services.provide import publish

from .blueprint import fhir
from .responses import FHIR_TYPES, fhir_response, negotiate, request_body, require_content_type, version_headers


@fhir.post("/DocumentReference")
def simplified_publish():
    negotiate()
    require_content_type(FHIR_TYPES, "is not supported: send application/fhir+json or application/fhir+xml")
    settings = current_app.config["SETTINGS"]
    created, stored = publish(g.repository, Received("iti105", request_body(), request.mimetype,
                                                     request.remote_addr), settings.trust_anchors,
                              settings.max_document_bytes)
    headers = version_headers(stored.version, stored.last_updated)
    headers["Location"] = f"{settings.fhir_base}/DocumentReference/{stored.res_id}/_history/{stored.version}"
    return fhir_response(stored.body, 201 if created else 200, headers)
