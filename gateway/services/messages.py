"""What operators see of the HL7v2 messages: list by status, one message with its ACK and the
resources it produced, and reprocessing (one message, or every failed one). The documents received
are listed here too; received_documents reprocesses them."""
from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import select, update

from gateway.access import writes
from gateway.hl7v2.er7 import MessageRejected, decode, split_segments
from gateway.storage.database import read_connection, write_transaction
from gateway.storage.repository import Repository, blob_bytes
from gateway.storage.schema import raw_inputs

from . import feeds

HL7V2_CHANNELS = ("mllp", "hl7v2-http")
REPROCESSABLE = ("failed", "refused", "received")


class NotReprocessable(ValueError):
    """The message is answered: it was processed (or found a duplicate), perhaps by a listener
    between the operator's look and the reprocessing."""


@dataclass
class MessageSummary:
    id: int
    received_at: str
    channel: str
    sender: str | None
    message_type: str | None
    control_id: str | None
    status: str
    ack_code: str | None
    reason: str | None

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def _summary(row) -> MessageSummary:
    outcome = json.loads(row.outcome) if row.outcome else {}
    # An HL7v2 message's outcome holds its ACK's issues; a document's, the refusal or failure.
    errors = [i["text"] for i in outcome.get("issues", []) if i.get("severity") == "E"]
    if "reason" in outcome:
        errors.append(outcome["reason"])
    return MessageSummary(row.id, row.received_at, row.channel, row.sender, row.message_type, row.control_id,
                          row.status, outcome.get("ack"), "; ".join(errors) or None)


def list_messages(repo: Repository, status: str | None = None, limit: int = 100,
                  before: int | None = None, channels: tuple[str, ...] = HL7V2_CHANNELS) -> list[MessageSummary]:
    """The latest inputs on these channels (HL7v2's by default), newest first."""
    query = select(raw_inputs.c.id, raw_inputs.c.received_at, raw_inputs.c.channel, raw_inputs.c.sender,
                   raw_inputs.c.message_type, raw_inputs.c.control_id, raw_inputs.c.status,
                   raw_inputs.c.outcome).where(raw_inputs.c.channel.in_(channels))
    if status:
        query = query.where(raw_inputs.c.status == status)
    if before:
        query = query.where(raw_inputs.c.id < before)
    with read_connection(repo.engine) as conn:
        rows = conn.execute(query.order_by(raw_inputs.c.id.desc()).limit(limit)).all()
    return [_summary(r) for r in rows]


# What an operator sees of a message: its segments and the fields that say what it is and what
# became of it. Every other non-empty field (identity, addresses, the document in OBX-5, consents)
# shows as REDACTED: operators read no patient data (README, "Access control").
VISIBLE_FIELDS = {
    "MSH": "all", "FHS": "all", "BHS": "all", "BTS": "all", "FTS": "all", "EVN": {1, 2}, "MSA": "all", "ERR": "all",
    "PID": {1}, "PV1": {1, 2}, "ORC": {1}, "OBR": {1, 4},
    "TXA": {1, 2, 3, 12, 13, 17}, "OBX": {1, 2, 3, 11}, "PRT": {4}, "ZFA": {1},
}
# MetaDMPMSS flags (OBX-3) whose Y/N value in OBX-5 is no patient data.
FLAG_OBSERVATIONS = {"MASQUE_PS", "INVISIBLE_PATIENT", "INVISIBLE_REP_LEGAUX", "CONNEXION_SECRETE", "MODIF_CONF_CODE",
                     "DESTDMP", "DESTMSSANTEPS", "DESTMSSANTEPAT", "ACK_RECEPTION", "ACK_LECTURE_MSS", "ACK_LECTURE"}
REDACTED = "REDACTED"


def layout(text: str) -> str:
    """The message with the content of its identifying and clinical fields hidden."""
    out = []
    for segment in split_segments(text):
        separator = segment[3] if segment.startswith("MSH") and len(segment) > 3 else "|"
        fields = segment.split(separator)
        kept = VISIBLE_FIELDS.get(fields[0], set())
        if kept == "all":
            out.append(segment)
            continue
        flag = fields[0] == "OBX" and len(fields) > 3 and fields[3].split("^")[0] in FLAG_OBSERVATIONS
        out.append(separator.join(
            [fields[0]] + [value if not value or n in kept or (flag and n == 5) else REDACTED
                           for n, value in enumerate(fields[1:], start=1)]))
    return "\r".join(out)


def _with_body(conn, raw_id: int, *columns) -> tuple | None:
    """A received HL7v2 message's columns and its body (kept in blobs under its hash)."""
    row = conn.execute(select(*columns, raw_inputs.c.sha256.label("body_sha256")).where(
        raw_inputs.c.id == raw_id, raw_inputs.c.channel.in_(HL7V2_CHANNELS))).first()
    return None if row is None else (row, blob_bytes(conn, row.body_sha256))


def get_message(repo: Repository, raw_id: int, content: bool = False) -> dict | None:
    """One message; its content only when `content` (the shell's operators, who hold the database
    anyway), else its layout."""
    with read_connection(repo.engine) as conn:
        found = _with_body(conn, raw_id, raw_inputs)
    if found is None:
        return None
    row, body = found
    try:
        text, charset = decode(body, transport=feeds.charset_of(row.content_type))
    except MessageRejected:
        text, charset = body.decode("utf-8", "replace"), None
    return {
        **_summary(row).as_dict(),
        "size": row.size,
        "sha256": row.sha256,
        "charset": charset,
        "message": text.replace("\r\n", "\r").replace("\n", "\r") if content else layout(text),
        "ack": row.ack,
        "outcome": json.loads(row.outcome) if row.outcome else None,
        "resources": json.loads(row.resources) if row.resources else [],
        "body": body,
    }


def reopen(repo: Repository, raw_id: int, status: str, named: str) -> None:
    """Make a raw input (status `status` when the operator looked) `received` again, to be claimed by
    its reprocessing; NotReprocessable when it was answered."""
    if status not in REPROCESSABLE:
        raise NotReprocessable(f"{named} is {status}; only {', '.join(REPROCESSABLE)} inputs are reprocessed")
    with write_transaction(repo.engine) as conn:
        # Only if still reprocessable: a listener may have finished it meanwhile.
        reopened = conn.execute(update(raw_inputs).where(
            raw_inputs.c.id == raw_id, raw_inputs.c.status.in_(REPROCESSABLE)).values(status="received")).rowcount
    if not reopened:
        raise NotReprocessable(f"{named} was processed meanwhile")


def reprocess(repo: Repository, raw_id: int, max_bytes: int) -> feeds.Reply:
    repo = Repository(repo.engine, writes.reprocessing(repo.access), repo.base_url)
    with read_connection(repo.engine) as conn:
        found = _with_body(conn, raw_id, raw_inputs.c.status, raw_inputs.c.channel, raw_inputs.c.content_type)
    if found is None:
        raise LookupError(f"no HL7v2 message {raw_id}")
    row, body = found
    reopen(repo, raw_id, row.status, f"message {raw_id}")
    try:
        return feeds.reprocess(repo, raw_id, body, row.channel, max_bytes, row.content_type)
    except feeds.MessageRejected:
        with write_transaction(repo.engine) as conn:
            conn.execute(update(raw_inputs).where(raw_inputs.c.id == raw_id).values(status=row.status))
        raise


def unanswered(repo: Repository, channels: tuple[str, ...]) -> list[int]:
    """The inputs on these channels that failed or were interrupted (still `received`), oldest first."""
    with read_connection(repo.engine) as conn:
        return conn.execute(select(raw_inputs.c.id).where(raw_inputs.c.status.in_(("failed", "received")),
                                                          raw_inputs.c.channel.in_(channels))
                            .order_by(raw_inputs.c.id)).scalars().all()


def reprocess_failed(repo: Repository, max_bytes: int) -> list[tuple[int, str]]:
    """Every failed (or interrupted) message again, oldest first: (id, ACK code). One that a
    listener finishes meanwhile (a message in flight is `received` too) is left to it."""
    done = []
    for raw_id in unanswered(repo, HL7V2_CHANNELS):
        try:
            done.append((raw_id, reprocess(repo, raw_id, max_bytes).code))
        except NotReprocessable:
            continue
    return done
