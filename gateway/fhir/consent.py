"""The patient's decisions over FHIR: POST Consent and PUT Consent/[id] (patients and their
representatives; revoking is a PUT with status inactive, so the history keeps every decision)."""
from __future__ import annotations

from flask import g

from gateway.services import consents

from .blueprint import fhir
from .create import existing_if_none_exist, read_json_body
from .read import lookup
from .responses import FhirError, if_match, negotiate, written


@fhir.post("/Consent")
def create_consent():
    negotiate()
    body = read_json_body(completed=True)
    # If-None-Exist was ignored, and the decision made whatever the client's condition found.
    existing = existing_if_none_exist("Consent")
    if existing is not None:
        return existing
    stored, created = consents.create(g.repository, body)
    return written(stored, 201, "created") if created else \
        written(stored, 200, "this decision is in force already: nothing was created")


@fhir.put("/Consent/<res_id>")
def update_consent(res_id: str):
    negotiate()
    body = read_json_body(completed=True)
    # R4 (http, update): the body SHALL carry the id the URL names; one without was taken.
    if body.get("id") != res_id:
        raise FhirError(400, f"the body's id {body.get('id', '(none)')} is not {res_id}: an update names its resource "
                             "in its URL and in its body", code="invalid", expression="Consent.id")
    return written(lookup(consents.update, g.repository, res_id, body, if_match()), 200, "updated")
