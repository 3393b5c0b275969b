"""Search (ITI-67 for DocumentReference): GET [type]?... and POST [type]/_search."""
from __future__ import annotations

import json
from urllib.parse import urlencode

from flask import current_app, g, request

from gateway.storage import search as search_sql
from gateway.storage.repository import SearchPage

from . import subsetting
from .blueprint import fhir
from .read import check_type
from .record_state import patients_with_state
from .responses import FhirError, fhir_response, negotiate, operation_outcome, preferred, presentation_params


def _params_from_request(include_form: bool) -> list[tuple[str, str]]:
    params = list(request.args.items(multi=True))
    if include_form:
        params += list(request.form.items(multi=True))
    return [(k, v) for k, v in params if k != "_format"]


def run_search(res_type: str, params: list[tuple[str, str]]):
    check_type(res_type)
    negotiate()
    try:
        parsed = search_sql.parse_search(res_type, params, strict=preferred("handling") == "strict")
        subset = subsetting.requested(res_type, parsed.summary, parsed.elements, search=True)
        page = g.repository.search(parsed)
    except search_sql.SearchError as exc:
        raise FhirError(400, str(exc), code=exc.code) from None
    except subsetting.SubsetError as exc:
        raise FhirError(400, str(exc), code="invalid") from None
    return fhir_response(searchset(res_type, parsed, page, subset))


def _link(res_type: str, parsed: search_sql.SearchRequest, cursor: str | None) -> str:
    base = current_app.config["SETTINGS"].fhir_base
    params = list(parsed.base_params) + ([("_cursor", cursor)] if cursor else []) + presentation_params()
    return f"{base}/{res_type}" + (f"?{urlencode(params)}" if params else "")


def searchset(res_type: str, parsed: search_sql.SearchRequest, page: SearchPage,
              subset: subsetting.Subset | None) -> str:
    """The Bundle as text: stored resources are spliced in as written, never re-serialised but to
    keep the elements `_summary` or `_elements` asked for of the matches."""
    base = current_app.config["SETTINGS"].fhir_base
    current = search_sql.encode_cursor(*parsed.cursor) if parsed.cursor else None
    links = [{"relation": "self", "url": _link(res_type, parsed, current)}]
    if page.next_keys is not None:
        links.append({"relation": "next", "url": _link(res_type, parsed, search_sql.encode_cursor(page.next_keys, "n"))})
    if page.previous_keys is not None:
        links.append({"relation": "previous",
                      "url": _link(res_type, parsed, search_sql.encode_cursor(page.previous_keys, "p"))})
    entries = []
    patients = patients_with_state(g.repository, page.entries + page.included)
    for mode, items in (("match", page.entries), ("include", page.included)):
        for stored in items:
            body = patients.get(stored.res_id, stored.body) if stored.res_type == "Patient" else stored.body
            if subset is not None and mode == "match":
                body = subset.apply_text(body)
            entries.append('{"fullUrl":%s,"resource":%s,"search":{"mode":"%s"}}' % (
                json.dumps(f"{base}/{stored.res_type}/{stored.res_id}"), body, mode))
    if parsed.ignored:
        outcome = operation_outcome([{"severity": "warning", "code": "not-supported",
                                      "diagnostics": f"search parameter ignored: {name}"} for name in parsed.ignored])
        entries.append('{"resource":%s,"search":{"mode":"outcome"}}' % json.dumps(outcome, ensure_ascii=False))
    head = {"resourceType": "Bundle", "type": "searchset", "link": links}
    if page.total is not None:
        head = {"resourceType": "Bundle", "type": "searchset", "total": page.total, "link": links}
    text = json.dumps(head, ensure_ascii=False, separators=(",", ":"))
    return text[:-1] + ',"entry":[' + ",".join(entries) + "]}" if entries else text


@fhir.get("/<res_type>")
def search_get(res_type: str):
    return run_search(res_type, _params_from_request(False))


@fhir.post("/<res_type>/_search")
def search_post(res_type: str):
    if request.mimetype not in ("application/x-www-form-urlencoded", ""):
        raise FhirError(415, "POST _search takes application/x-www-form-urlencoded parameters", code="not-supported")
    return run_search(res_type, _params_from_request(True))
