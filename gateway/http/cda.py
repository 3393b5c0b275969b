"""POST /cda: a CDA document as the body; the gateway derives every metadata from its header."""
from __future__ import annotations

from flask import Blueprint, current_app, g, request

from gateway.fhir.responses import fhir_response, operation_outcome, require_content_type, written
from gateway.services.documents import CDA_CONTENT_TYPES, ingest_cda
from gateway.services.ingest import HEAD_KEPT

cda = Blueprint("cda", __name__)


@cda.post("/cda")
def post_cda():
    require_content_type(CDA_CONTENT_TYPES, f"is not a CDA document type ({', '.join(sorted(CDA_CONTENT_TYPES))})")
    settings = current_app.config["SETTINGS"]
    oversized = bool(request.content_length and request.content_length > settings.max_document_bytes)
    # Over the limit, the document is refused (413) from its first bytes, which its raw copy keeps,
    # as /hl7v2 and `gateway ingest` keep an oversized input's: operators see what was sent, by whom.
    data = request.stream.read(HEAD_KEPT) if oversized else request.get_data(cache=False)
    result = ingest_cda(g.repository, data, max_bytes=settings.max_document_bytes, channel="cda",
                        content_type=request.content_type, sender=request.remote_addr,
                        size=request.content_length if oversized else None)
    stored = result.document_reference
    location = f"{settings.fhir_base}/DocumentReference/{stored.res_id}"
    if not result.created:
        # The sender holds these very bytes; what became of them since (labels, status, versions) is
        # the record's, read through the access rules like any read, not told to whoever re-sends them.
        return fhir_response(operation_outcome([{
            "severity": "information", "code": "duplicate",
            "diagnostics": f"this document is already registered ({location}); nothing new was stored"}]),
            200, {"Location": location})
    return written(stored, 201, "created")
