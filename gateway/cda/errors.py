"""Refusals name the element (an XPath) and the reason, so a sender can fix the document."""
from __future__ import annotations


class DocumentRefused(Exception):
    """The document cannot be accepted. ``status`` is the HTTP status to answer with; ``patient_text``
    is the refusal told to a patient in the patient space, in French, where a patient can cause it
    (the reason itself is for the sender's integration engineer)."""

    def __init__(self, reason: str, *, location: str | None = None, status: int = 422, code: str = "invalid",
                 patient_text: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.location = location
        self.status = status
        self.code = code
        self.patient_text = patient_text

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}" if self.location else self.reason
