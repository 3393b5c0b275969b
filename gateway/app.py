"""Flask application factory."""
from __future__ import annotations

import logging
import time
import uuid

from flask import Flask, Response, g, request
from flask_cors import CORS
from sqlalchemy import Engine
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.middleware.proxy_fix import ProxyFix

from gateway import metrics
from gateway.access import AccessRefused
from gateway.access.audit import Outcome
from gateway.access.context import INSURER
from gateway.access.tokens import VerifiedTokens, load_keys
from gateway.refusal import Refused
from gateway.config import Settings
from gateway.fhir.api import fhir
from gateway.fhir.responses import FhirError, fhir_response, operation_outcome
from gateway.http.auth import requester
from gateway.http.cda import cda
from gateway.http.content_coding import decode_request_body
from gateway.http.hl7v2 import hl7v2
from gateway.http.inputs import holds_nul
from gateway.http.ops import ops
from gateway.http.slow_clients import StalledBodies
from gateway.logs import request_id
from gateway.space import init_space
from gateway.storage import search
from gateway.storage.database import RETRY_AFTER_SECONDS, failure_reason, make_engine, no_room, unavailable
from gateway.storage.repository import Repository

log = logging.getLogger(__name__)

HTTP_ISSUE_CODES = {400: "invalid", 404: "not-found", 405: "not-supported", 406: "not-supported",
                    408: "timeout", 413: "too-costly", 415: "not-supported"}


def _try_again_later(diagnostics: str) -> Response:
    """A failure of the moment, not of the request: 503 with Retry-After."""
    response = fhir_response(operation_outcome([{"severity": "error", "code": "transient",
                                                 "diagnostics": diagnostics}]), 503)
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    # `GET /fhir/DocumentReference/?status=current`, as a base URL ending in a slash or a hand-typed
    # query writes it, is the search (HAPI answers it so): it was a 404.
    app.url_map.strict_slashes = False
    app.config["SETTINGS"] = settings
    app.config["ENGINE"] = engine or make_engine(settings.database_url)
    app.config["TOKENS"] = VerifiedTokens(load_keys(settings.jwt_keys), settings.jwt_issuer, settings.jwt_audience)

    small_body = 1024 * 1024
    document_in_json = settings.max_document_bytes * 4 // 3 + small_body   # base64 in a Bundle or ITI-105
    # /hl7v2 and /cda answer an oversized input themselves (AR or 413, its first bytes kept): past
    # twice the limit, 413 before anything is read.
    body_limits = {"cda.post_cda": settings.max_document_bytes * 2, "hl7v2.post_message": settings.mllp_max_bytes * 2,
                   "fhir.transaction": document_in_json, "fhir.simplified_publish": document_in_json,
                   "space.add_document": settings.max_document_bytes + small_body,
                   # a copy of a whole record to check (werkzeug spools it to disk, not to memory)
                   "space.verify_copy": 1 << 30}

    @app.before_request
    def start_request():
        # The body each endpoint may take: a document where one is sent, 1 MiB anywhere else; a
        # larger one is refused (413) before it is read, so no request holds more in memory.
        request.max_content_length = body_limits.get(request.endpoint, small_body)
        g.started = time.perf_counter()
        rid = request.headers.get("X-Request-Id") or uuid.uuid4().hex
        g.request_id = rid
        request_id.set(rid)
        if holds_nul(request.path, fields=request.args.items(multi=True)):
            raise Refused("the path or a query parameter holds the character U+0000 (NUL)", location="url",
                          status=400, code="value")
        access = requester()
        if access is not None:
            # One repository per request, built from who is asking: every read goes through it.
            g.repository = Repository(app.config["ENGINE"], access, settings.public_base_url, settings.search_seconds)
            if access.role == INSURER:
                refusal = Outcome("4", "insurers, banks and employers may not access the record (CSP L1111-18)")
                g.repository.record_authorization("AuthZ-Role", refusal)
                raise AccessRefused(refusal.description)
            if closed := g.repository.closed_to_holder():
                # The rules already show them nothing of the record; this says why, in its trail too.
                g.repository.record_authorization("AuthZ-Role", Outcome("4", closed.reason), closed.patient_id)
                raise AccessRefused(closed.reason)
        # Once the requester is known: nobody refused makes the gateway decode anything. The patient
        # space knows its requester in its own before_request, and decodes there.
        if request.blueprint != "space":
            decode_request_body(request)

    @app.after_request
    def finish_request(response):
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.HTTP_REQUESTS.labels(request.method, endpoint, response.status_code).inc()
        if hasattr(g, "started"):
            metrics.HTTP_LATENCY.labels(request.method, endpoint).observe(time.perf_counter() - g.started)
        response.headers["X-Request-Id"] = g.get("request_id", "")
        log.info("request", extra={"method": request.method, "endpoint": endpoint, "status": response.status_code,
                                   "ms": round((time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 1)})
        return response

    @app.errorhandler(FhirError)
    def fhir_error(error: FhirError):
        response = fhir_response(error.outcome(), error.status, error.headers)
        if error.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        return response

    @app.errorhandler(Refused)
    def refused(refusal: Refused):
        return fhir_error(FhirError.of(refusal))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        # werkzeug's own text for a path it routes nowhere asks to "check your spelling": it says which.
        described = f"nothing is served at {request.path}" if error.description == NotFound.description \
            else error.description
        if error.code == 405 and getattr(error, "valid_methods", None):
            # werkzeug's "The method is not allowed for the requested URL" named neither.
            served = sorted(method for method in error.valid_methods if method not in ("HEAD", "OPTIONS"))
            described = f"{request.method} is not served at {request.path}: it takes {', '.join(served)}"
        issue = {"severity": "error", "code": HTTP_ISSUE_CODES.get(error.code, "processing"), "diagnostics": described}
        response = fhir_response(operation_outcome([issue]), error.code)
        if error.code == 405 and hasattr(error, "valid_methods") and error.valid_methods:
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response

    @app.errorhandler(Exception)
    def internal_error(error: Exception):
        if unavailable(error):
            log.warning("database unavailable", extra={"path": request.path, "reason": failure_reason(error)})
            return _try_again_later("the database is unavailable: try again")
        if no_room(error):
            # A temporary file's disk (TMPDIR): a body decoded, a form's file, a record's copy.
            log.warning("no room left on a disk", extra={"path": request.path, "reason": error.strerror})
            return _try_again_later("the gateway has no room left on its disk for this request: try again later")
        log.exception("unhandled error")
        issue = {"severity": "fatal", "code": "exception",
                 "diagnostics": f"internal error; quote request id {g.get('request_id')}"}
        return fhir_response(operation_outcome([issue]), 500)

    app.register_blueprint(ops)
    app.register_blueprint(cda)
    app.register_blueprint(hl7v2)
    app.register_blueprint(fhir)
    if settings.cors_origins:
        # A web application of these origins may call the FHIR API from a browser with its bearer
        # token: the headers FHIR's interactions send, and those they answer with, readable.
        CORS(app, resources={r"/fhir/*": {"origins": list(settings.cors_origins)}}, supports_credentials=False,
             methods=["GET", "HEAD", "POST", "PUT", "PATCH"],
             allow_headers=["Authorization", "Content-Type", "Content-Encoding", "Accept", "If-Match", "If-None-Match",
                            "If-None-Exist", "Prefer", "X-Request-Id"],
             expose_headers=["ETag", "Last-Modified", "Location", "Content-Location", "X-Request-Id"], max_age=600)
    init_space(app, settings)
    search.set_cursor_key(app.secret_key)
    app.wsgi_app = StalledBodies(app.wsgi_app, settings.http_client_timeout)
    if settings.proxies:
        # The client's address, not the load balancer's: the sign-in attempts counted per address
        # and the trail's network address were the balancer's, the same for every patient, so that
        # 31 wrong passwords from anywhere locked the whole patient space out for 15 minutes.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.proxies, x_proto=0, x_host=0, x_port=0, x_prefix=0)
    return app
