"""DELETE DocumentReference/[id] and the conditional DELETE DocumentReference?identifier=[system]|[value]:
the deletion PDSM4DMP asks with its PATCH of the status to entered-in-error (TD3.3c), whose open
question names a FHIR delete as the alternative; a client that took it was answered 405. Both are
the same deletion (gateway/services/labels.py): who may ask, the audit, If-Match. A decision is not
deleted but revoked: DELETE Consent/[id] says how."""
from __future__ import annotations

from flask import g

from gateway.services.labels import DELETION, patch_document
from gateway.storage.repository import Gone, NotFound

from .blueprint import fhir
from .patch import deleted, document_named_by_identifier
from .responses import FhirError, fhir_response, if_match, negotiate, operation_outcome


def _delete(res_id: str):
    try:
        patch_document(g.repository, res_id, DELETION, if_match())
    except NotFound as exc:
        raise FhirError(404, str(exc), code="not-found") from None
    except Gone:
        # R4: deleting a resource deleted already has no effect (a DELETE retried, its answer lost).
        return deleted("the document was deleted already")
    return deleted()


@fhir.delete("/DocumentReference/<res_id>")
def delete_by_id(res_id: str):
    negotiate()
    return _delete(res_id)


@fhir.delete("/DocumentReference")
def delete_by_identifier():
    negotiate()
    res_id = document_named_by_identifier("DELETE")
    if res_id is None:
        # R4: a conditional delete that matches nothing deletes nothing, and succeeds (one retried
        # finds its document gone); the answer says so.
        return fhir_response(operation_outcome([{"severity": "warning", "code": "not-found", "diagnostics": (
            "no document with this identifier (among those the requester sees): nothing was deleted")}]), 200)
    return _delete(res_id)


@fhir.delete("/Consent/<res_id>")
def delete_consent(res_id: str):
    raise FhirError(405, "a decision is revoked, not deleted: PUT it with status inactive, and its history keeps it",
                    code="not-supported", headers={"Allow": "GET, PUT"})
