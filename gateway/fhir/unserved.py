"""What R4 defines and this server does not serve, answered so: an operation (`$everything`,
`$export`…), a search or the history of every type at once. They were a 404 that
"Patient/$everything is not known" (read as a resource's id), that "resource type $export" or
"_history" "is not supported", or werkzeug's 405, "The method is not allowed for the requested URL"."""
from __future__ import annotations

from .blueprint import fhir
from .responses import FhirError

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
LISTED = "its CapabilityStatement (GET [base]/metadata) lists what this server serves"


@fhir.route("/$<operation>", methods=METHODS)
@fhir.route("/<res_type>/$<operation>", methods=METHODS)
@fhir.route("/<res_type>/<res_id>/$<operation>", methods=METHODS)
def operation(operation: str, res_type: str | None = None, res_id: str | None = None):
    raise FhirError(404, f"the operation ${operation} is not served: {LISTED}", code="not-supported")


@fhir.get("")
@fhir.get("/")
def search_every_type():
    raise FhirError(404, f"a search of every type at once is not served: search one, [base]/[type]?…; {LISTED}",
                    code="not-supported")


@fhir.get("/_history")
def history_of_everything():
    raise FhirError(404, "the history of the whole server is not served: ask for one resource's, "
                         "[type]/[id]/_history", code="not-supported")
