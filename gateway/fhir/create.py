"""create: POST [type] for the identity resources, with If-None-Exist (conditional create), which a
Consent's POST takes too.

Documents enter through ITI-65 or POST /cda, never as bare DocumentReferences.
"""
from __future__ import annotations

from urllib.parse import parse_qsl

from flask import g, request

from gateway.services import directory
from gateway.services.directory import REGISTERED_TYPES
from gateway.storage import search as search_sql

from .blueprint import fhir
from .formats import load
from .read import STORED_TYPES
from .responses import FHIR_TYPES, FhirError, negotiate, require_content_type, written


def read_json_body(completed: bool = False) -> dict:
    """The request's resource as JSON data, sent as FHIR JSON or FHIR XML; `completed` as `load` has it."""
    require_content_type(FHIR_TYPES, "is not supported: send application/fhir+json or application/fhir+xml")
    body = load(request.get_data(), request.mimetype, completed=completed)
    if not isinstance(body, dict) or "resourceType" not in body:
        raise FhirError(400, "the body is not a FHIR resource (no resourceType)", code="structure")
    return body


@fhir.post("/<res_type>")
def create(res_type: str):
    if res_type not in REGISTERED_TYPES:
        if res_type in STORED_TYPES:
            raise FhirError(405, f"create is not supported on {res_type}; documents are submitted with ITI-65 "
                                 "(POST /fhir transaction) or POST /cda", code="not-supported")
        raise FhirError(404, f"resource type {res_type} is not supported by this server", code="not-supported")
    negotiate()
    resource = read_json_body()
    if resource["resourceType"] != res_type:
        raise FhirError(400, f"the body is a {resource['resourceType']}, posted to {res_type}", code="invalid")
    return existing_if_none_exist(res_type) or written(directory.register(g.repository, resource), 201, "created")


def existing_if_none_exist(res_type: str):
    """The answer of a conditional create (If-None-Exist) whose search finds the resource, among those
    the requester sees: 200 with it, nothing created; None to create it."""
    condition = request.headers.get("If-None-Exist")
    if condition is None:
        return None
    try:
        page = g.repository.search(_condition(res_type, condition))
    except search_sql.SearchError as exc:
        raise FhirError(400, f"If-None-Exist: {exc}", code=exc.code) from None
    if len(page.entries) > 1:
        raise FhirError(412, "If-None-Exist matches several resources", code="duplicate")
    if len(page.entries) == 1:
        return written(page.entries[0], 200, "already exists (If-None-Exist): nothing was created")
    return None


def _condition(res_type: str, header: str) -> search_sql.SearchRequest:
    """If-None-Exist's search, for none, one or several matches: its parameters, as FHIR writes them,
    or after `[base/]Type?`, as HAPI's client sends them (refused before). It names a criterion and
    no result parameter: without one (`identifier=` left empty, a blank header), or with
    `_summary=count`, the search matched any resource the requester sees, or none, and the create
    was answered with one of them or made anyway."""
    target, asked, query = header.strip().partition("?")
    if not asked or "=" in target or "&" in target:   # no `Type?`: a value may hold a '?'
        target, query = "", header.strip()
    if target and target.rstrip("/").rsplit("/", 1)[-1] != res_type:
        raise search_sql.SearchError(f"names a search of {target.rsplit('/', 1)[-1][:64]!r}, not of {res_type}")
    params = parse_qsl(query, keep_blank_values=True)
    given = next((name for name, _ in params if name in search_sql.RESULT_PARAMS), None)
    if given:
        raise search_sql.SearchError(f"{given} is not a search criterion: name the resource that must not exist")
    parsed = search_sql.parse_search(res_type, params, strict=True)
    if not parsed.criteria:
        raise search_sql.SearchError("names no search criterion: name the resource that must not exist, as "
                                     "identifier=[system]|[value]")
    parsed.count = 2
    return parsed
