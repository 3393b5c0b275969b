"""ITI-68 Retrieve Document: GET Binary/[id] returns the document bytes exactly as received.

A client asking for a FHIR format (Accept or _format) gets the Binary resource with base64 data.
"""
from __future__ import annotations

import base64
import json

from flask import Response, g, request
from werkzeug.exceptions import RequestedRangeNotSatisfiable

from gateway.storage.repository import Gone, NotFound, StoredResource

from .blueprint import fhir
from .responses import (FHIR_JSON_TYPES, FhirError, accepted, fhir_response, format_named, not_modified, subset_asked,
                        version_headers)

FHIR_ACCEPTS = ("application/fhir+json", "application/json")
RESOURCE_TYPES = {*FHIR_JSON_TYPES, "application/fhir+xml", "application/xml+fhir"}


def resource_body(stored: StoredResource) -> str:
    """The stored JSON as written; a Binary read as FHIR carries its bytes base64-encoded."""
    if stored.res_type == "Binary" and stored.blob_sha256:
        resource = stored.json()
        resource["data"] = base64.b64encode(g.repository.blob(stored.blob_sha256)).decode()
        return json.dumps(resource, ensure_ascii=False, separators=(",", ":"))
    return stored.body


def _wants_resource() -> bool:
    """Whether the client asks for the Binary resource, not the document: by a FHIR format, named by
    _format or Accept (R4, Binary), in JSON or XML. A browser, which accepts */*, gets the document,
    and so does an Accept of application/xml, the CDA's own type. Only JSON was served: an Accept of
    application/fhir+xml got the document, and _format=xml too unless Accept named FHIR JSON."""
    if format_named() in ("json", "xml"):
        return True
    asked = {mime for mime, quality in accepted() if quality > 0}
    return bool(asked & RESOURCE_TYPES) and "*/*" not in asked


def retrieve(res_id: str) -> Response:
    try:
        stored = g.repository.read("Binary", res_id)
    except NotFound as exc:
        raise FhirError(404, str(exc), code="not-found") from None
    except Gone as exc:
        raise FhirError(410, str(exc), code="deleted") from None
    headers = version_headers(stored.version, stored.last_updated)
    if not_modified(stored.version, stored.last_updated):   # before the document's bytes are read
        return Response(status=304, headers=headers)
    if _wants_resource():
        subset = subset_asked("Binary")
        body = resource_body(stored)
        return fhir_response(subset.apply_text(body) if subset else body, 200, headers)
    content_type = stored.json().get("contentType", "application/octet-stream")
    data = g.repository.blob(stored.blob_sha256)
    response = Response(data, status=200, mimetype=content_type)
    for key, value in headers.items():
        response.headers[key] = value
    # A part of the document (Range: bytes=…, 206), so that a client whose download of a large one
    # broke off goes on from where it stopped. If-Range names the version (the ETag) or the date
    # the client had: the ETag is weak, but a Binary's bytes never change, only its labels.
    try:
        return response.make_conditional(request, accept_ranges=True, complete_length=len(data))
    except RequestedRangeNotSatisfiable:
        if request.range is None or request.range.units != "bytes" or len(request.range.ranges) > 1:
            # Another unit, no range at all, or several (multipart/byteranges, which werkzeug does
            # not build): ignored, as RFC 9110 lets a server, for the whole document.
            return response
        raise FhirError(416, f"the document is {len(data)} bytes long: the range asked for is not in it",
                        code="invalid", headers={"Content-Range": f"bytes */{len(data)}"}) from None


@fhir.get("/Bundle/<res_id>")
def fhir_document(res_id: str) -> Response:
    """A FHIR document (a Bundle of type document) a DocumentReference points to (PDSM4DMP TD3.2):
    kept as received, like any document, and read through the same rules as its Binary."""
    try:
        stored = g.repository.read("Binary", res_id)
    except NotFound as exc:
        raise FhirError(404, str(exc).replace("Binary", "Bundle"), code="not-found") from None
    except Gone as exc:
        raise FhirError(410, str(exc).replace("Binary", "Bundle"), code="deleted") from None
    if stored.json().get("contentType", "").split(";")[0] not in FHIR_ACCEPTS:
        raise FhirError(404, f"Bundle/{res_id} is not known", code="not-found")
    return fhir_response(g.repository.blob(stored.blob_sha256).decode("utf-8"), 200,
                         version_headers(stored.version, stored.last_updated))
