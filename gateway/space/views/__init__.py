"""The pages of the patient space, one module per page."""
from . import documents, errors, history, password, personal, record, records, sharing, signin  # noqa: F401
