"""The FHIR R4 API (base /fhir): one module per interaction, all reading through the repository."""
from __future__ import annotations

from flask import Blueprint

from .responses import FhirError, fhir_response

fhir = Blueprint("fhir", __name__, url_prefix="/fhir")

from . import binary, capability, create, read, search  # noqa: E402,F401  (routes)

__all__ = ["fhir", "FhirError", "fhir_response"]
