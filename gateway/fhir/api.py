"""The FHIR blueprint with every interaction's routes registered."""
from . import binary, capability, consent, create, patch, publish, read, search, transaction  # noqa: F401  (each registers its routes)
from .blueprint import fhir

__all__ = ["fhir"]
