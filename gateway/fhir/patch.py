"""PATCH DocumentReference/[id] with a JSON Patch on securityLabel: masking and unmasking."""
from __future__ import annotations

import json

from flask import g, request

from gateway.cda.errors import DocumentRefused
from gateway.services.labels import patch_labels

from .blueprint import fhir
from .read import lookup
from .responses import FhirError, fhir_response, negotiate, require_content_type, version_headers

JSON_PATCH_TYPES = {"application/json-patch+json"}


@fhir.patch("/DocumentReference/<res_id>")
def patch_document(res_id: str):
    negotiate()
    require_content_type(JSON_PATCH_TYPES, "is not supported: send application/json-patch+json")
    try:
        patch = json.loads(request.get_data())
    except (ValueError, UnicodeDecodeError) as exc:
        raise FhirError(400, f"the body is not JSON: {exc}", code="structure") from None
    if not isinstance(patch, list):
        raise FhirError(400, "a JSON Patch is a list of operations", code="structure")
    try:
        stored = lookup(patch_labels, g.repository, res_id, patch)
    except DocumentRefused as refusal:
        raise FhirError(refusal.status, refusal.reason, code=refusal.code, expression=refusal.location) from None
    return fhir_response(stored.body, 200, version_headers(stored.version, stored.last_updated))
