"""FHIR responses: JSON with the FHIR media type, OperationOutcomes, content negotiation."""
from __future__ import annotations

import json
import re
from email.utils import format_datetime, parsedate_to_datetime
from datetime import datetime

from flask import Response, current_app, has_request_context, request
from lxml import etree
from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_options_header

from gateway.cda.parser import safe_parser
from gateway.refusal import Refused

from . import subsetting
from .formats import FHIR_XML, XML_FORMATS, XML_TYPES, to_xml

FHIR_JSON = "application/fhir+json"
JSON_TYPES = {"application/fhir+json", "application/json", "json", "application/json+fhir", "*/*",
              "application/*"}
# The FHIR version a media type may name (`application/fhir+json; fhirVersion=4.0`, R4 "http"):
# this server's, or another, which it cannot serve (406) nor read (415).
FHIR_VERSIONS = ("4.0", "4.0.1")
# A version as an ETag names it (RFC 9110: a weak or strong quoted tag).
ETAG = re.compile(r'(?:W/)?"([0-9]{1,18})"')


class FhirError(Exception):
    """An error answered as an OperationOutcome with an HTTP status."""

    def __init__(self, status: int, diagnostics: str, *, code: str = "processing", expression: str | None = None,
                 issues: list[dict] | None = None, headers: dict[str, str] | None = None):
        super().__init__(diagnostics)
        self.status = status
        self.diagnostics = diagnostics
        self.code = code
        self.expression = expression
        self.issues = issues
        self.headers = headers or {}

    @classmethod
    def of(cls, refusal: Refused) -> "FhirError":
        """The refusal as the FHIR API tells it."""
        return cls(refusal.status, refusal.reason, code=refusal.code, expression=refusal.location)

    def outcome(self) -> dict:
        if self.issues:
            return operation_outcome(self.issues)
        issue = {"severity": "error", "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            issue["expression"] = [self.expression]
        return operation_outcome([issue])


FHIR_JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")
FHIR_TYPES = FHIR_JSON_TYPES + XML_TYPES


def require_content_type(allowed, explanation: str) -> None:
    """415 unless the request body has one of the `allowed` media types, of FHIR 4.0 if it says."""
    if request.mimetype not in allowed:
        raise FhirError(415, f"content type {request.mimetype or '(none)'} {explanation}", code="not-supported")
    version = request.mimetype_params.get("fhirversion")
    if version not in (None, *FHIR_VERSIONS):
        raise FhirError(415, f"content type {request.mimetype}; fhirVersion={version} is not supported: this server "
                             "takes FHIR 4.0 (R4)", code="not-supported")


READ_PART = 1 << 20


def request_body() -> bytes | bytearray:
    """The body, read into one buffer of its declared length and not kept by the request. werkzeug's
    get_data grows a buffer and copies it out: twice a 27 MB Bundle at once. A chunked body (no
    Content-Length) is read that way still; a body cut short is refused."""
    length = request.content_length
    if length is None:
        return request.get_data(cache=False)
    body = bytearray(length)
    with memoryview(body) as view:
        read = 0
        while read < length:
            # A part at a time: a server's stream without readinto (gunicorn's) reads the whole
            # size asked for into a buffer of its own, then copies it.
            count = request.stream.readinto(view[read:read + READ_PART])
            if not count:
                raise FhirError(400, f"the body ends after {read} of its {length} bytes", code="incomplete")
            read += count
    return body


def operation_outcome(issues: list[dict]) -> dict:
    return {"resourceType": "OperationOutcome", "issue": issues}


def format_named() -> str | None:
    """What `_format` asks for: "json", "xml", "other", or None without one. Read as HAPI reads it:
    its media type in any case and without parameters, a space taken for the '+' that a URL typed
    unencoded turns into (curl sends `…?_format=application/fhir+json` as is, and the query reads
    `application/fhir json`: it was refused 406). One naming another FHIR version is "other"."""
    fmt = request.args.get("_format")
    if not fmt:
        return None
    mime, _, parameters = fmt.partition(";")
    mime = "+".join(mime.split()).lower()
    if parse_options_header("x;" + parameters)[1].get("fhirversion") not in (None, *FHIR_VERSIONS):
        return "other"
    return "json" if mime in JSON_TYPES else "xml" if mime in XML_FORMATS else "other"


def presentation_params() -> list[tuple[str, str]]:
    """`_format` and `_pretty` as this request's URL gave them, which the links of a page it
    answers repeat (as HAPI's do): a client that asked for XML by `_format` (a browser, a client
    that sets no Accept) got the next page in JSON."""
    return [(name, value) for name in ("_format", "_pretty") for value in request.args.getlist(name)[:1]]


def wants_xml() -> bool:
    """Whether this request asked for FHIR XML (_format first, then the best Accept; a _format this
    server does not serve is refused by `negotiate`, but on Binary, whose document it then serves)."""
    named = format_named()
    if named in ("json", "xml"):
        return named == "xml"
    accept = accepted()
    best = accept.best_match([*FHIR_JSON_TYPES, *XML_TYPES])
    return best in XML_TYPES and accept[best] > accept[FHIR_JSON]


def accepted() -> MIMEAccept:
    """Accept's media types without their parameters, which werkzeug would match with nothing (a
    client sending `application/fhir+xml; fhirVersion=4.0` or `application/fhir+json;
    charset=utf-8` was refused 406), less those asking for another FHIR version than this one's."""
    kept = []
    for value, quality in request.accept_mimetypes:
        mime, params = parse_options_header(value)
        if params.get("fhirversion") in (None, *FHIR_VERSIONS):
            kept.append((mime, quality))
    return MIMEAccept(kept)


def negotiate() -> None:
    """Refuse (406) a client that accepts neither FHIR JSON nor FHIR XML, by _format or Accept."""
    named = format_named()
    if named == "other":
        raise FhirError(406, f"_format={request.args['_format']} is not supported: this server answers "
                             "application/fhir+json and application/fhir+xml, of FHIR 4.0 (R4)", code="not-supported")
    if named:
        return
    asked = [mime for mime, quality in request.accept_mimetypes if quality > 0]
    served = [mime for mime, quality in accepted() if quality > 0]
    if asked and not any(mime in JSON_TYPES or mime in XML_TYPES or mime.endswith(("+json", "+xml"))
                         for mime in served):
        raise FhirError(406, f"Accept: {request.headers.get('Accept')} cannot be served: this server answers "
                             "application/fhir+json and application/fhir+xml, of FHIR 4.0 (R4)", code="not-supported")


def fhir_response(body: dict | str, status: int = 200, headers: dict | None = None) -> Response:
    # `_pretty=true` (R4 search, "for human convenience"): indented, as curl users read it. It was
    # taken and did nothing.
    pretty = has_request_context() and request.args.get("_pretty") == "true"
    if body and has_request_context() and wants_xml():
        data = to_xml(body)
        if pretty:
            root = etree.fromstring(data, safe_parser())
            etree.indent(root, space="  ")
            data = etree.tostring(root, xml_declaration=True, encoding="utf-8") + b"\n"
        response = Response(data, status=status, mimetype=FHIR_XML)
        response.headers["Content-Type"] = f"{FHIR_XML}; charset=utf-8"
    else:
        if pretty and body:
            text = json.dumps(json.loads(body) if isinstance(body, str) else body, ensure_ascii=False, indent=2) + "\n"
        else:
            text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        response = Response(text, status=status, mimetype=FHIR_JSON)
        response.headers["Content-Type"] = f"{FHIR_JSON}; charset=utf-8"
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def if_match() -> int | None:
    """The version an If-Match header names (W/"3", as this server's ETags; "3" too), None when
    there is none or it is `*` (any current version): an update is made only if it is current."""
    value = request.headers.get("If-Match")
    if value is None or value.strip() == "*":
        return None
    match = ETAG.fullmatch(value.strip())
    if match is None:
        raise FhirError(400, 'If-Match names the version to update as its ETag: W/"[versionId]"', code="invalid")
    return int(match.group(1))


def not_modified(version: int, last_updated: str) -> bool:
    """Whether a conditional read may be answered 304 (R4 http, read; RFC 9110, 13.1.2 and 13.1.3):
    If-None-Match names this version among its tags (weakly compared: W/"3" or "3") or is `*`; or,
    without it, If-Modified-Since is not before the last change. Only If-None-Match: W/"3", exactly
    as this server writes its ETags, was read, and If-Modified-Since not at all."""
    tags = request.headers.get("If-None-Match")
    if tags is not None:
        return tags.strip() == "*" or any(int(tag) == version for tag in ETAG.findall(tags))
    since = request.headers.get("If-Modified-Since")
    if since is None:
        return False
    try:
        asked = parsedate_to_datetime(since)
    except (TypeError, ValueError):
        return False   # RFC 9110: an invalid date is ignored
    if asked.tzinfo is None:
        return False
    return _moment(last_updated).replace(microsecond=0) <= asked   # HTTP dates have whole seconds


def preferred(name: str) -> str | None:
    """The value the request's Prefer header gives a preference (RFC 7240: `return=minimal`,
    `handling=strict`, several in one header or in several), or None."""
    for part in re.split(r"[,;]", ",".join(request.headers.getlist("Prefer"))):
        key, _, value = part.partition("=")
        if key.strip().lower() == name:
            return value.strip().strip('"')
    return None


def written(stored, status: int, done: str, *, located: bool = True) -> Response:
    """The answer to a create, an update or a patch: its version in ETag and Last-Modified, where it
    is in Location (a create's), and the resource, or what `Prefer: return=` asks instead (R4 http,
    "Managing Return Content"): nothing (`minimal`) or an OperationOutcome saying what was `done`."""
    headers = version_headers(stored.version, stored.last_updated)
    reference = f"{stored.res_type}/{stored.res_id}/_history/{stored.version}"
    if located:
        headers["Location"] = f"{current_app.config['SETTINGS'].fhir_base}/{reference}"
    returned = preferred("return")
    if returned == "minimal":
        response = Response(status=status)
        del response.headers["Content-Type"]   # no body, no type (Flask's default is text/html)
        response.headers.update(headers)
        return response
    if returned == "OperationOutcome":
        return fhir_response(operation_outcome([{"severity": "information", "code": "informational",
                                                 "diagnostics": f"{reference}: {done}"}]), status, headers)
    return fhir_response(stored.body, status, headers)


def version_headers(version: int, last_updated: str) -> dict:
    return {"ETag": f'W/"{version}"', "Last-Modified": format_datetime(_moment(last_updated), usegmt=True)}


def _moment(last_updated: str) -> datetime:
    """A resource's lastUpdated (FHIR's instant) as the datetime HTTP's dates are compared with."""
    return datetime.fromisoformat(last_updated.replace("Z", "+00:00"))


def subset_asked(res_type: str) -> subsetting.Subset | None:
    """The elements `_summary` or `_elements` ask a read to keep, None for all."""
    try:
        return subsetting.requested(res_type, request.args.getlist("_summary"), request.args.getlist("_elements"),
                                    search=False)
    except subsetting.SubsetError as exc:
        raise FhirError(400, str(exc), code="invalid") from None
