"""The FHIR blueprint with every interaction's routes registered."""
# Each module registers its routes.
from . import (binary, capability, consent, create, delete, patch, publish, read, search, transaction,  # noqa: F401
               unserved, validate_operation)
from .blueprint import fhir

__all__ = ["fhir"]
