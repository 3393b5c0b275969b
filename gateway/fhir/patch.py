"""PATCH DocumentReference/[id] and the conditional PATCH DocumentReference?identifier=[system]|[value]
(PDSM4DMP TD3.3a-d) with a JSON Patch, or a FHIRPath Patch (a Parameters resource, in FHIR JSON or
XML), as PDSm's OpenAPI takes both: masking, deletion, archiving (gateway/services/labels.py)."""
from __future__ import annotations

from flask import g, request

from gateway.services.labels import json_patch, patch_document
from gateway.storage import search as search_sql

from . import fhirpath_patch
from .blueprint import fhir
from .formats import load, load_json
from .read import lookup
from .responses import (FHIR_TYPES, FhirError, fhir_response, if_match, negotiate, operation_outcome,
                        require_content_type, written)

JSON_PATCH = "application/json-patch+json"
# XML Patch (RFC 5261), which the OpenAPI lists too, is not taken: its selectors are XPath, whose
# cost a client could make unbounded.
PATCH_TYPES = (JSON_PATCH, *FHIR_TYPES)


def _patch(res_id: str):
    negotiate()
    require_content_type(PATCH_TYPES, "is not supported: send a JSON Patch (application/json-patch+json) or a "
                                      "FHIRPath Patch (a Parameters resource, application/fhir+json or "
                                      "application/fhir+xml)")
    if request.mimetype == JSON_PATCH:
        operations = load_json(request.get_data())
        if not isinstance(operations, list):
            raise FhirError(400, "a JSON Patch is a list of operations", code="structure")
        patch = json_patch(operations)
    else:
        patch = fhirpath_patch.patch(load(request.get_data(), request.mimetype))
    stored = lookup(patch_document, g.repository, res_id, patch, if_match())
    if stored is None:
        return deleted()
    return written(stored, 200, "updated", located=False)


def deleted(diagnostics: str = "the document is deleted: no search returns it and a read answers 410 Gone"):
    return fhir_response(operation_outcome([{"severity": "information", "code": "deleted",
                                             "diagnostics": diagnostics}]), 200)


@fhir.patch("/DocumentReference/<res_id>")
def patch_by_id(res_id: str):
    return _patch(res_id)


@fhir.patch("/DocumentReference")
def patch_by_identifier():
    res_id = document_named_by_identifier("PATCH")
    if res_id is None:
        raise FhirError(404, "no document with this identifier", code="not-found")
    return _patch(res_id)


def document_named_by_identifier(method: str) -> str | None:
    """A conditional request's document, by id: the one, among those the requester sees, with the
    identifier its query names; None when there is none."""
    criteria = [(name, value) for name, value in request.args.items(multi=True) if name != "_format"]
    if [name for name, _ in criteria] != ["identifier"]:
        raise FhirError(400, f"a conditional {method} names the document by identifier=[system]|[value] only",
                        code="invalid")
    try:
        page = g.repository.search(search_sql.parse_search("DocumentReference", criteria + [("_count", "2")],
                                                           strict=True))
    except search_sql.SearchError as exc:
        raise FhirError(400, str(exc), code=exc.code) from None
    # Two entries at most (_count=2): none, one, or several.
    if not page.entries:
        return None
    if len(page.entries) > 1:
        raise FhirError(412, "the identifier matches several documents", code="multiple-matches")
    return page.entries[0].res_id
