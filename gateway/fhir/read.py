"""read, vread and history: GET [type]/[id], [type]/[id]/_history/[vid], [type]/[id]/_history."""
from __future__ import annotations

import json
from urllib.parse import urlencode

from flask import current_app, g, request

from gateway.mapping.dates import InvalidTime, fhir_range
from gateway.storage.repository import Gone, NotFound
from gateway.storage.search import offset_restored
from gateway.storage.schema import MAX_VERSION

from .blueprint import fhir
from .binary import resource_body, retrieve
from .record_state import patients_with_state
from .responses import (FhirError, fhir_response, negotiate, not_modified, presentation_params, subset_asked,
                        version_headers)

STORED_TYPES = ("DocumentReference", "Binary", "Patient", "Practitioner", "PractitionerRole", "Organization", "List", "Consent",
                "AuditEvent", "RelatedPerson")


def check_type(res_type: str) -> None:
    if res_type not in STORED_TYPES:
        raise FhirError(404, f"resource type {res_type} is not supported by this server", code="not-supported")


def lookup(fn, *args):
    try:
        return fn(*args)
    except NotFound as exc:
        raise FhirError(404, str(exc), code="not-found") from None
    except Gone as exc:
        raise FhirError(410, str(exc), code="deleted") from None


@fhir.get("/<res_type>/<res_id>")
def read(res_type: str, res_id: str):
    check_type(res_type)
    if res_id == "_history":   # not an id (FHIR's have no '_'): the history of a whole type, not served
        raise FhirError(404, f"the history of every {res_type} is not served: ask for one resource's, "
                             f"{res_type}/[id]/_history", code="not-supported")
    if res_type == "Binary":
        return retrieve(res_id)
    negotiate()
    subset = subset_asked(res_type)
    stored = lookup(g.repository.read, res_type, res_id)
    headers = version_headers(stored.version, stored.last_updated)
    if not_modified(stored.version, stored.last_updated):
        return fhir_response("", 304, headers)
    body = patients_with_state(g.repository, [stored]).get(res_id) if res_type == "Patient" else resource_body(stored)
    return fhir_response(subset.apply_text(body) if subset else body, 200, headers)


@fhir.get("/<res_type>/<res_id>/_history/<vid>")
def vread(res_type: str, res_id: str, vid: str):
    check_type(res_type)
    negotiate()
    subset = subset_asked(res_type)
    # A version past the column's range names none (PostgreSQL refused it as a parameter: a 500).
    if not (vid.isascii() and vid.isdigit()) or int(vid) > MAX_VERSION:
        raise FhirError(404, f"version {vid} is not known", code="not-found")
    stored = lookup(g.repository.vread, res_type, res_id, int(vid))
    body = resource_body(stored)
    return fhir_response(subset.apply_text(body) if subset else body, 200,
                         version_headers(stored.version, stored.last_updated))


@fhir.get("/<res_type>/<res_id>/_history")
def history(res_type: str, res_id: str):
    """A resource's versions, newest first, a page of `_count` (50, at most 500) at a time, with a
    link to the next: `total` counts them all. Before, a page was all there was: the versions past
    the 50th were not served, and `total` counted the page. `_since` keeps the versions made at or
    after an instant (it was ignored); `_at` and `_list` are refused, not ignored."""
    check_type(res_type)
    negotiate()
    for unsupported in ("_at", "_list"):
        if unsupported in request.args:
            raise FhirError(400, f"{unsupported} is not supported on a history: use _since", code="not-supported")
    count = min(_whole("_count", request.args.get("_count", "50")), 500)
    below = min(_whole("_below", request.args["_below"]), MAX_VERSION + 1) if "_below" in request.args else None
    since = offset_restored(request.args["_since"]) if "_since" in request.args else None
    try:
        lowest = fhir_range(since)[0] if since is not None else None
    except InvalidTime as exc:
        raise FhirError(400, f"_since: {exc}", code="invalid") from None
    versions, total = lookup(lambda: g.repository.history(res_type, res_id, count + 1, below=below, since=lowest))
    base = current_app.config["SETTINGS"].fhir_base
    entries = []
    for stored, method in versions[:count]:
        entry = {"fullUrl": f"{base}/{res_type}/{res_id}",
                 "request": {"method": "DELETE" if stored.deleted else method,
                             "url": f"{res_type}/{res_id}" if method != "POST" else res_type},
                 "response": {"status": "200 OK", "etag": f'W/"{stored.version}"',
                              "lastModified": stored.last_updated}}
        if not stored.deleted:
            entry["resource"] = json.loads(stored.body)
        entries.append(entry)
    links = [{"relation": "self", "url": request.url}]
    if len(versions) > count and count:
        kept = [("_count", str(count))] + ([("_since", since)] if since is not None else [])
        links.append({"relation": "next", "url": f"{base}/{res_type}/{res_id}/_history?"
                                                 + urlencode(kept + [("_below", str(versions[count - 1][0].version))]
                                                             + presentation_params())})
    bundle = {"resourceType": "Bundle", "type": "history", "total": total, "link": links, "entry": entries}
    return fhir_response(bundle)


def _whole(name: str, value: str) -> int:
    if not (value.isascii() and value.isdigit()):
        raise FhirError(400, f"{name} must be a non-negative integer", code="invalid")
    return int(value)
