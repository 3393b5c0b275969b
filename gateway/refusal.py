"""The one refusal type: an input, or a change to the record, that the gateway does not accept.

Every transport renders it once, in its own terms: a FHIR OperationOutcome (`status`, `code`, the
`location` as its expression), an HL7v2 ACK with ERR (`ack_code`, `hl7_code`, the `location` as
an HL7 location), a French sentence in the patient space (`patient_text`). The reason is written
for the sender's integration engineer: it names what to fix.
"""
from __future__ import annotations

# HL7 table 0357 by HTTP status: a key already taken, a key unknown, anything else an application error.
HL7_CODES = {409: "205", 404: "204"}


class Refused(Exception):
    def __init__(self, reason: str, *, location: str | None = None, status: int = 422, code: str = "invalid",
                 hl7_code: str | None = None, ack_code: str = "AE", patient_text: str | None = None,
                 record: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.location = location
        self.status = status
        self.code = code
        self.hl7_code = hl7_code or HL7_CODES.get(status, "207")
        self.ack_code = ack_code
        self.patient_text = patient_text
        # The record (its Patient's id) an input was refused for, when the refusal knows it (a closed
        # record): the refused raw copy, which holds the patient's data, is destroyed with it.
        self.record = record

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}" if self.location else self.reason

    def at(self, location: str, reason: str | None = None) -> "Refused":
        """The same refusal told at another location (the HL7v2 field that carried a document)."""
        return Refused(reason or self.reason, location=location, status=self.status, code=self.code,
                       hl7_code=self.hl7_code, ack_code=self.ack_code, patient_text=self.patient_text,
                       record=self.record)

    def summary(self) -> dict:
        """What the raw input records of it."""
        return {"reason": self.reason, "location": self.location, "code": self.hl7_code}
