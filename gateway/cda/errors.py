"""Refusals name the element (an XPath) and the reason, so a sender can fix the document."""
from __future__ import annotations


class DocumentRefused(Exception):
    """The document cannot be accepted. ``status`` is the HTTP status to answer with."""

    def __init__(self, reason: str, *, location: str | None = None, status: int = 422, code: str = "invalid"):
        super().__init__(reason)
        self.reason = reason
        self.location = location
        self.status = status
        self.code = code

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}" if self.location else self.reason
