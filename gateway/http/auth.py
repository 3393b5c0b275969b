"""Who is asking over HTTP: the bearer token of every request, checked before any endpoint runs.

Open without a token: the CapabilityStatement (clients discover the server before they sign in),
/health and /metrics (no patient data). The patient space's pages have their own sign-in and
session. Everything else needs a valid token; an insurer, bank or
employer token is refused everything (CSP L1111-18), and the refusal is audited.
"""
from __future__ import annotations

from flask import current_app, request

from gateway.access import AccessContext
from gateway.access.tokens import InvalidToken, context_from_claims
from gateway.fhir.responses import FhirError

OPEN_ENDPOINTS = ("ops.health", "ops.metrics", "fhir.metadata")


class Unauthenticated(FhirError):
    def __init__(self, message: str):
        super().__init__(401, message, code="login")


def requester() -> AccessContext | None:
    """The AccessContext of this request; None for the open endpoints. Raises 401 or 403."""
    if request.endpoint in OPEN_ENDPOINTS or request.endpoint is None:
        return None
    if request.method == "OPTIONS":
        # A browser's CORS preflight: it carries no token (the Fetch standard leaves credentials
        # out) and reads nothing; Flask answers it with the methods allowed, flask-cors with the rest.
        return None
    if request.blueprint == "space":
        return None   # the patient space signs its users in itself (gateway/space)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("this endpoint needs a bearer token (Authorization: Bearer <JWT>)")
    try:
        return context_from_claims(current_app.config["TOKENS"].claims(token.strip()), request.remote_addr)
    except InvalidToken as exc:
        raise Unauthenticated(str(exc)) from None
