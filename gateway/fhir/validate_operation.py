"""POST [base]/[type]/$validate (FHIR R4's Resource-validate): whether a resource holds to what this
gateway holds every resource it is sent to: FHIR R4's JSON or XML rules, its models, its invariants,
the codes its required bindings enumerate, the extensions the packages served here define, and
what the profiles served here prohibit. A client tries a resource before it sends it: an answer of
200 says what was checked, with the first problem found, as a write would be refused for it. The
resource is not kept, nor is anything read of a record: it is neither a document nor an access."""
from __future__ import annotations

import orjson
from flask import request

from gateway.refusal import Refused

from .blueprint import fhir
from .formats import load
from .responses import (FHIR_TYPES, FhirError, fhir_response, negotiate, operation_outcome, request_body,
                        require_content_type)
from .validation import InvalidResource, validate

CHECKED = ("FHIR R4's rules for JSON and XML, its models and invariants, the codes its required bindings "
           "enumerate, the extensions of FR Core, PDSm, IHE MHD and IHE BALP, and what PDSm's profiles prohibit")
MODES = (None, "create", "update")


@fhir.post("/<res_type>/$validate")
def validate_resource(res_type: str):
    negotiate()
    require_content_type(FHIR_TYPES, "is not supported: send the resource, or Parameters holding it, as "
                                     "application/fhir+json or application/fhir+xml")
    body = request_body()   # a body cut short is the request's fault, answered as any request's
    try:
        resource = load(body, request.mimetype)
        if resource["resourceType"] == "Parameters" and res_type != "Parameters":
            # The operation's own form: its `resource` parameter, again read as a body of its own
            # (the checks of a resource run from its root).
            resource = load(orjson.dumps(_parameter_resource(resource)), "application/fhir+json")
        if resource["resourceType"] != res_type:
            raise FhirError(400, f"the resource is a {resource['resourceType']}, validated at "
                                 f"[base]/{resource['resourceType']}/$validate, not at {res_type}'s", code="invalid")
        validate(resource)
    except Refused as refusal:
        if refusal.status == 413:
            raise
        issues = FhirError.of(refusal).outcome()["issue"]
    except InvalidResource as invalid:
        issues = [{"severity": "error", "code": "invalid", "diagnostics": problem,
                   "expression": [f"{invalid.res_type}.{where}"]} for where, problem in invalid.problems]
    else:
        issues = [{"severity": "information", "code": "informational",
                   "diagnostics": f"no problem found: the {res_type} holds to {CHECKED}. The official profiles are "
                                  "not checked here, nor what a transaction asks beyond the resource (a document's "
                                  "patient, its producer's rights)"}]
    return fhir_response(operation_outcome(issues))


@fhir.route("/<res_type>/$validate", methods=["GET", "PUT", "PATCH", "DELETE"])
def validate_by_another_method(res_type: str):
    # Else the operations not served took it, and said "$validate is not served".
    raise FhirError(405, f"{request.method} is not served at {request.path}: it takes POST, the resource in the body",
                    code="not-supported", headers={"Allow": "POST"})


def _parameter_resource(parameters: dict) -> dict:
    """The resource a Parameters body names (`resource`); its `mode` one this server validates for."""
    named = {p.get("name"): p for p in parameters.get("parameter") or [] if isinstance(p, dict)}
    mode = named.get("mode", {}).get("valueCode")
    if mode not in MODES:
        raise FhirError(400, f"mode {mode} is not validated here: a resource is validated as it would be created "
                             "or updated (mode create or update, or none)", code="not-supported")
    if "profile" in named:
        raise FhirError(400, "profile is not validated here: the official profiles are checked by the tools that "
                             "hold their definitions", code="not-supported")
    resource = named.get("resource", {}).get("resource")
    if not isinstance(resource, dict):
        raise FhirError(400, "Parameters names the resource to validate in its parameter `resource`",
                        code="required")
    return resource
