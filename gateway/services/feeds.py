"""One HL7v2 message, from any transport, through the ingest pipeline (services/ingest.py): route,
read outside any transaction (an ADT's Patient and Consents built and validated, a document
message's CDAs parsed and their DocumentReferences validated), apply in the group commit, ACK.

The ACK says AA only once the message's resources and its status are committed together. A
retransmission (same sender MSH-3/4, same MSH-10, same content but for MSH-7) is answered with the
ACK sent the first time and stores nothing; one that never got a final answer (the gateway stopped,
or failed) is processed again. A control id reused for a different message is processed as a new
message, with a warning in the ACK: dropping it would lose data."""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, replace
from typing import Callable

from werkzeug.http import parse_options_header

from gateway import metrics
from gateway.access.writes import Write
from gateway.hl7v2 import ack as acks, batch
from gateway.hl7v2.ack import Issue, Outcome
from gateway.hl7v2.er7 import Message, MessageRejected, transport_charset
from gateway.mapping import hl7v2 as v2
from gateway.refusal import Refused
from gateway.storage.database import failure_reason, unavailable
from gateway.storage.repository import Repository, UnitOfWork, earlier_messages

from . import document_messages, ingest, patients
from .ingest import Received, Written
from .patients import Applied, MessageRefused

log = logging.getLogger(__name__)
ER7 = "x-application/hl7-v2+er7"   # HL7 over HTTP's type of an ER7 message, and what an MLLP one is kept as

FINGERPRINT_CHUNK = 1024 * 1024   # characters
# PAM-FR events that create or update the patient; every other ADT event is acknowledged as is.
IDENTITY_EVENTS = {"A01", "A04", "A05", "A08", "A28", "A31"}
SUPPORTED_PROCESSING_IDS = {"P", "D", "T"}


@dataclass
class Reply:
    ack: bytes | None   # None when the sender asked for no acknowledgment (MSH-15/16)
    code: str           # the application outcome: AA, AE or AR
    raw_id: int | None
    retransmission: bool = False
    passing: bool = False   # not processed for a cause that passes (the database): AE, send it again


def fingerprint(message: Message) -> str:
    """The content of a message, all but MSH-7 (some engines restamp a message they resend): the
    SHA-256 of its segments joined by CR, encoded a MiB at a time rather than whole (a segment can
    carry a 20 MB document in base64)."""
    sep = message.encoding.field
    msh = message.msh.text.split(sep)
    if len(msh) > 6:
        msh[6] = ""  # MSH-7: the split starts at MSH-2, after the segment name
    digest = hashlib.sha256(sep.join(msh).encode("utf-8"))
    for segment in message.segments[1:]:
        digest.update(b"\r")
        for part in segment.received():
            if isinstance(part, memoryview):
                digest.update(part)     # a long run of base64: ASCII, its UTF-8 the bytes themselves
                continue
            for start in range(0, len(part), FINGERPRINT_CHUNK):
                digest.update(part[start:start + FINGERPRINT_CHUNK].encode("utf-8"))
    return digest.hexdigest()


@dataclass(frozen=True)
class Handler:
    """A message type's work: `read` with no database (for a document message: every CDA parsed
    and checked), then `apply` in the unit of work; `alone` when it may change a whole record."""
    apply: Callable[[UnitOfWork, object, Applied, str], None]
    read: Callable[[Message, int], object] = lambda message, max_bytes: message
    alone: bool = False


def route(message: Message) -> Handler:
    """The handler for this message type and event; unsupported ones are rejected (AR, table 0357)."""
    code, event, _ = message.message_type
    if not message.version.startswith("2."):
        raise MessageRejected(f"version '{message.version}' is not HL7 v2", "MSH^1^12", "203")
    if message.msh.get(11, 1) and message.msh.get(11, 1) not in SUPPORTED_PROCESSING_IDS:
        raise MessageRejected(f"processing id '{message.msh.get(11)}' is not P, D or T", "MSH^1^11", "202")
    for field_number in (15, 16):
        value = message.msh.get(field_number).strip().upper()
        if value not in acks.ACK_CONDITIONS:
            raise MessageRejected(f"MSH-{field_number} '{value[:20]}' is not AL, NE, ER or SU (HL7 table 0155)",
                                  f"MSH^1^{field_number}", "103")
    if code == "ADT":
        if event == "A40":
            return Handler(_merge, alone=True)
        if event == "A47":
            return Handler(_change_identifier)
        if event in IDENTITY_EVENTS:
            return Handler(_identity, _read_identity)
        return Handler(_movement, _read_movement)
    if (code == "MDM" and event in document_messages.MDM_ACTIONS) or (code == "ORU" and event == "R01"):
        return Handler(document_messages.apply, document_messages.read)
    if code in ("ADT", "MDM", "ORU"):
        raise MessageRejected(f"event {code} {event} is not supported (supported: ADT events, MDM T02, "
                              "MDM T10, MDM T04, ORU R01)", "MSH^1^9^1^2", "201")
    raise MessageRejected(f"message type {code} is not supported (supported: ADT, MDM, ORU)", "MSH^1^9", "200")


@dataclass(frozen=True)
class PreparedIdentity:
    """An ADT message read before any transaction: the identity its PID states (none for a
    movement, whose PID only finds the patient) and the consents of its ZFA segments."""
    patient: patients.PreparedPatient | None
    ids: list   # the PID-3 identifiers, which find the patient
    consents: list[dict[str, dict]]
    unread: list[Issue]   # what of its ZFA segments the gateway does not read, said in the ACK


def _prepared(patient: patients.PreparedPatient | None, ids: list, message: Message) -> PreparedIdentity:
    """The identity, with what the message's ZFA segments state and what of them is not read."""
    zfas = message.all("ZFA")
    return PreparedIdentity(patient, ids, [patients.prepare_consents(z) for z in zfas],
                            patients.unread_oppositions(zfas))


def _read_identity(message: Message, max_bytes: int) -> PreparedIdentity:
    prepared = patients.prepare_patient(_required(message, "PID"))
    return _prepared(prepared, prepared.ids, message)


def _identity(uow, prepared: PreparedIdentity, applied, base_url) -> None:
    patient_id = patients.upsert_patient(uow, prepared.patient, applied)
    _consents(uow, prepared, patient_id, applied)


def _read_movement(message: Message, max_bytes: int) -> PreparedIdentity | None:
    """Movements (A02, A03, A11…) change no identity; a ZFA they carry still updates the consents."""
    pid = patients.single(message, "PID")
    if pid is None or message.first("ZFA") is None:
        return None
    return _prepared(None, patients.checked_ids(pid, 3), message)


def _movement(uow, prepared: PreparedIdentity | None, applied, base_url) -> None:
    patient_id = patients.find_patient(uow, prepared.ids) if prepared else None
    if patient_id:
        _consents(uow, prepared, patient_id, applied)


def _consents(uow, prepared: PreparedIdentity, patient_id, applied) -> None:
    for index, consents in enumerate(prepared.consents, start=1):
        patients.record_consents(uow, consents, patient_id, applied, index)
    applied.issues.extend(prepared.unread)


def _merge(uow, message, applied, base_url) -> None:
    pid, mrg = _required(message, "PID"), _required(message, "MRG")
    patients.merge(uow, pid, mrg, applied)


def _change_identifier(uow, message, applied, base_url) -> None:
    patients.change_identifier(uow, _required(message, "PID"), _required(message, "MRG"), applied)


def _required(message: Message, name: str):
    segment = patients.single(message, name)
    if segment is None:
        raise MessageRefused(Issue(f"the message has no {name} segment", name, "100"))
    return segment


def admitted(senders: tuple[str, ...], sender: str, address: str | None) -> bool:
    """Whether a configured entry ("MSH-3|MSH-4", or "MSH-3|MSH-4@address") admits this sender;
    with no entry configured every sender is."""
    if not senders:
        return True
    return any(entry == sender or entry == f"{sender}@{address}" for entry in senders)


def receive(repo: Repository, data: bytes, *, channel: str, max_bytes: int, senders: tuple[str, ...] = (),
            address: str | None = None, content_type: str = ER7) -> Reply:
    """`content_type`: HTTP's, whose charset the message is read in (er7.decode), kept with it."""
    if batch.is_batch(data):
        return _receive_batch(repo, data, channel=channel, max_bytes=max_bytes, senders=senders, address=address,
                              content_type=content_type)
    return ingest.run(repo, _receiving(repo, data, channel=channel, max_bytes=max_bytes, senders=senders,
                                       address=address, content_type=content_type))


def _receiving(repo: Repository, data: bytes, *, channel: str, max_bytes: int, senders: tuple[str, ...],
               address: str | None, content_type: str) -> ingest.Steps[Reply]:
    """One message's pipeline (ingest.run, or a batch's ingest.run_together)."""
    started = time.perf_counter()
    message: Message | None = None
    try:
        message = Message.from_bytes(data, charset_of(content_type))
        message.require_header()
        if not admitted(senders, message.sender, address):
            raise MessageRejected(f"the sender {message.sender} is not admitted on this gateway", "MSH^1^3", "207")
        handler = route(message)
    except MessageRejected as rejected:
        outcome = Outcome(rejected.ack_code, [Issue(str(rejected), rejected.location, rejected.code)])
        return (yield from _unprocessed(data, channel, message or Message.header_of(data), outcome, started,
                                        content_type))

    keys = dict(control_id=message.control_id[:199], fingerprint=fingerprint(message),
                message_type=_listed_type(message))
    issues: list[Issue] = []
    received = Received(channel, data, content_type[:128], message.sender, keys)
    try:
        kept = yield ingest.keeping(received, Write.FEED)
    except Exception as failure:
        if not unavailable(failure):
            raise
        # Nothing could be kept: the sender keeps the message and sends it again on AE.
        log.warning("database unavailable: HL7v2 message not kept",
                    extra={"channel": channel, "reason": failure_reason(failure)})
        return _failed(message, None, passing=True)
    if kept.answered is not None:
        return _retransmission(message, kept.answered, started, channel)
    if kept.control_id_reused:
        issues.append(Issue(f"control id {message.control_id} was already used by this sender for a different "
                            "message; processed as a new message", "MSH^1^10", "205", "W"))
    return (yield from _processing(repo, received, Write.FEED, message, kept.raw_id, handler, issues, max_bytes,
                                   started))


def _receive_batch(repo: Repository, data: bytes, **receiving) -> Reply:
    """An HL7 batch: each of its messages received as if sent alone (kept, processed, acknowledged
    or found sent before), in order, and their ACKs sent back in a batch. Its messages are run side
    by side in windows (ingest.run_together): those of a window share transactions and flushes. A
    message that could not be processed for a cause that passes (AE, "send it again") stops the
    batch there: no message after it is processed (those of its window kept already are marked
    failed), as a sender of one message at a time would not send them before it. A batch that is not
    whole (a count of its trailers that is not what it holds, a segment outside any message) or
    holds over batch.MAX_MESSAGES is refused whole, before any of its messages is processed: it is
    kept raw, once, and each message answered AR."""
    read = batch.read(data)
    messages = read.messages
    problems = read.problems + ([f"the batch holds {len(messages)} messages, over the {batch.MAX_MESSAGES} a "
                                 "batch may hold here"] if len(messages) > batch.MAX_MESSAGES else [])
    if problems:
        return _refuse_batch(repo, data, read, problems, receiving["channel"], receiving["content_type"])
    replies: list[Reply | None] = []   # None: not run, after a message that could not be processed
    stopper: int | None = None         # the first message that could not be, for a cause that passes
    for window in ingest.windows(messages, len):
        if stopper is not None:
            replies += [None] * len(window)
            continue
        for finished in ingest.run_together(repo, [_receiving(repo, sent, **receiving) for sent in window]):
            if finished.error is not None:
                raise finished.error
            if stopper is None and finished.value.passing:
                stopper = len(replies)
            replies.append(finished.value)
    if stopper is not None:
        stopped = Message.header_of(messages[stopper])
        outcome = Outcome("AE", [Issue(f"not processed: the message {stopped.control_id if stopped else '?'} "
                                       "before it in the batch could not be; send the batch again", "", "207")])
        for index in range(stopper + 1, len(replies)):
            if replies[index] is None or replies[index].passing:
                message = Message.header_of(messages[index])
                replies[index] = _reply(_ack_text(message, outcome), message, outcome.code, None, passing=True)
    answered, taken = [], iter(replies)
    for group in read.groups:
        answered.append([reply.ack for reply in (next(taken) for _ in group.messages) if reply.ack is not None])
    return Reply(batch.answer(read, answered), _most_severe([reply.code for reply in replies]), None)


def _refuse_batch(repo: Repository, data: bytes, read: batch.Batch, problems: list[str], channel: str,
                  content_type: str) -> Reply:
    started = time.perf_counter()
    outcome = Outcome("AR", [Issue(f"the batch is not whole, and none of its messages was processed: {problem}",
                                   "", "100") for problem in problems])
    try:
        sender, keys = read.keys()
        ingest.keep(repo, Received(channel, data, content_type[:128], sender, keys), Write.FEED, status="refused",
                    outcome=_summary(outcome), named_patient=lambda uow: _named_patients(read.messages))
    except Exception as failure:
        _not_kept(failure, "a refused batch")
    metrics.observe_ingest(channel, "refused", started)
    answered = [[reply.ack for reply in (_reply(_ack_text(message, outcome), message, "AR", None)
                                         for message in map(Message.header_of, group.messages)) if reply.ack]
                for group in read.groups]
    if not any(answered):
        # Answered with no ACK, a batch reads as accepted whole (HL7 v2.5 2.10.3).
        read = replace(read, groups=[*read.groups, batch.Group(None)])
        answered.append([_reply(_ack_text(None, outcome), None, "AR", None).ack])
    return Reply(batch.answer(read, answered), "AR", None)


def _named_patients(messages: list[bytes]) -> ingest.NamedPatient:
    """Every patient a batch's messages name by PID-3 (each message's first identifiers, as one
    message refused names them): its raw copy goes with the destruction of any of their records."""
    named: dict[str, None] = {}
    for sent in messages:
        message = Message.leading_segments(sent + b"\r")
        pid = message.first("PID") if message is not None else None
        if pid is not None:
            named.update(dict.fromkeys(patients.named_identifiers(v2.cx_ids(pid, 3))))
    return ingest.NamedPatient(identifiers=tuple(named))


def _most_severe(codes: list[str]) -> str:
    """The code a batch's answer is summed up by (HTTP's X-HL7-Ack-Code): AR, else AE, else AA."""
    return next((code for code in ("AR", "AE") if code in codes), "AA")


def reprocess(repo: Repository, raw_id: int, body: bytes, channel: str, max_bytes: int,
              content_type: str | None) -> Reply:
    """Process a stored message again (after a failure, or a refusal whose cause was fixed), read as
    it was received (`content_type`'s charset)."""
    started = time.perf_counter()
    message = Message.from_bytes(body, charset_of(content_type))
    message.require_header()
    received = Received(channel, body, content_type or ER7, message.sender)
    return ingest.run(repo, _processing(repo, received, Write.REPROCESS, message, raw_id, route(message), [],
                                        max_bytes, started))


def _processing(repo: Repository, received: Received, permission: Write, message: Message, raw_id: int,
                handler: Handler, issues: list[Issue], max_bytes: int, started: float) -> ingest.Steps[Reply]:
    answers: dict[str, str | None] = {}

    def acknowledged(outcome: Outcome) -> str | None:
        # Kept to answer with: an ACK built again would carry another control id than the one stored.
        answers["ack"] = _ack_text(message, outcome)
        return answers["ack"]

    def write(uow: UnitOfWork, prepared) -> Written[Outcome]:
        applied = Applied()
        handler.apply(uow, prepared, applied, repo.base_url)
        outcome = Outcome("AA", issues + applied.issues)
        return Written(outcome, applied.status, applied.produced, _summary(outcome), acknowledged(outcome))

    def refusal_recorded(refusal: Refused) -> tuple[dict, str | None]:
        outcome = Outcome(refusal.ack_code, issues + [Issue(refusal.reason, refusal.location or "",
                                                            refusal.hl7_code)])
        answers["code"] = outcome.code
        return _summary(outcome), acknowledged(outcome)

    try:
        _, written = yield from ingest.ingesting(received, permission, lambda: handler.read(message, max_bytes), write,
                                                 raw_id=raw_id, record_refusal=refusal_recorded,
                                                 named_patient=_named_patient(message), alone=handler.alone)
    except ingest.AlreadyHandled:
        row = next((r for r in earlier_messages(repo.engine, received.sender, message.control_id[:199])
                    if r.id == raw_id), None)
        if row is not None:
            return _retransmission(message, row, started, received.channel)
        return _failed(message, raw_id, passing=True)   # its raw copy is not there (yet): send it again
    except Refused:
        return _reply(answers["ack"], message, answers["code"], raw_id)
    except Exception as failure:
        return _failed(message, raw_id, passing=unavailable(failure))
    return _reply(written.ack, message, written.value.code, raw_id)


def _named_patient(message: Message | None) -> Callable[[UnitOfWork], ingest.NamedPatient]:
    """The patient a message names by its PID-3 (the one PID of the structures taken here), for a
    message refused or that stored nothing."""
    pid = message.first("PID") if message is not None else None
    return lambda uow: patients.named_patient(uow, v2.cx_ids(pid, 3)) if pid is not None else ingest.NO_ONE


def _failed(message: Message, raw_id: int | None, passing: bool) -> Reply:
    """Nothing of this message was kept but its raw copy (none when the database could not take
    even that), marked failed for an operator (`gateway messages reprocess`). The database
    unreachable or busy is passing: AE asks the sender to send it again. Anything else would fail
    again the same way: AR, so that no sender loops on it."""
    text = ("internal error: the message was not processed; send it again" if passing else
            "internal error: the message cannot be processed; it is kept for the gateway's operators")
    outcome = Outcome("AE" if passing else "AR", [Issue(text, "", "207")])
    return _reply(_ack_text(message, outcome), message, outcome.code, raw_id, passing=passing)


def _ack_text(message: Message | None, outcome: Outcome) -> str | None:
    """The ACK the sender asked for (MSH-15/16), or None; without a readable MSH, always one."""
    code = acks.wanted(message, outcome) if message is not None else outcome.code
    return acks.build(message, outcome, code) if code else None


def _reply(ack: str | None, message: Message | None, code: str, raw_id: int | None,
           retransmission: bool = False, passing: bool = False) -> Reply:
    return Reply(acks.encode(ack, message) if ack else None, code, raw_id, retransmission, passing)


def _listed_type(message: Message) -> str | None:
    """MSH-9's code and event, as operators list and filter messages by them (ADT^A28)."""
    return "^".join(p for p in message.message_type[:2] if p)[:32] or None


def _summary(outcome: Outcome) -> dict:
    return {"ack": outcome.code, "issues": [{"text": i.text, "location": i.location, "code": i.code,
                                             "severity": i.severity} for i in outcome.issues]}


def _retransmission(message: Message, row, started: float, channel: str) -> Reply:
    metrics.observe_ingest(channel, "duplicate", started)
    log.info("HL7v2 retransmission answered with the original ACK", extra={"raw_id": row.id})
    code = json.loads(row.outcome).get("ack", "AA") if row.outcome else "AA"
    return _reply(row.ack, message, code, row.id, retransmission=True)


def charset_of(content_type: str | None) -> str:
    """The character set (MSH-18's name) a stored or received Content-Type names, "" for none."""
    return transport_charset(parse_options_header(content_type or ER7)[1].get("charset"))


def _unprocessed(data: bytes, channel: str, message: Message | None, outcome: Outcome, started: float,
                 content_type: str = ER7, read: Message | None = None) -> ingest.Steps[Reply]:
    """A message that cannot be routed is kept raw, refused, and answered AR. `read`: what of it was
    read for the patient it names, when `message` is its MSH alone (its first bytes were kept)."""
    readable = message is not None and bool(message.control_id)
    text = _ack_text(message, outcome)
    try:
        received = Received(channel, data, content_type[:128], message.sender if message is not None else None,
                            {"control_id": message.control_id[:199], "message_type": _listed_type(message)}
                            if readable else None)
        raw_id = (yield ingest.keeping(received, Write.FEED, status="refused", outcome=_summary(outcome), ack=text,
                                       named_patient=_named_patient(read or message))).raw_id
    except Exception as failure:
        _not_kept(failure, "a refused message")
        raw_id = None
    metrics.observe_ingest(channel, "refused", started)
    return _reply(text, message, outcome.code, raw_id)


def _not_kept(failure: Exception, what: str) -> None:
    """A refused input the database could not keep: it is answered all the same. The database
    unavailable is a warning (as it comes, so does every input of a batch's window after one it
    failed), anything else an error with its traceback."""
    if unavailable(failure):
        log.warning("database unavailable: %s not kept", what, extra={"reason": failure_reason(failure)})
    else:
        log.exception("could not store %s", what)


def refuse_unended(repo: Repository, head: bytes, size: int, idle: bool, channel: str) -> Reply:
    """A frame MLLP did not end (<FS><CR>): what came of it is kept, refused, and answered AR from its
    MSH when the sender still listens (one ending its frames with <FS> alone waits so for its ACK)."""
    started = time.perf_counter()
    after = "sending nothing more for the idle timeout" if idle else "closing the connection"
    outcome = Outcome("AR", [Issue(f"the MLLP frame was not ended by <FS><CR> (0x1C 0x0D) before the sender stopped, "
                                   f"{after}: its {size} bytes were kept, not processed", "MSH^1", "100")])
    return ingest.run(repo, _unprocessed(head, channel, Message.header_of(head), outcome, started,
                                         read=Message.leading_segments(head)))


def refuse_oversized(repo: Repository, head: bytes, size: int, limit: int, channel: str) -> Reply:
    """A message over the size limit: its first bytes are kept, and it is answered AR from its MSH."""
    started = time.perf_counter()
    message = Message.header_of(head)
    outcome = Outcome("AR", [Issue(f"the message is {size} bytes, over the {limit} bytes this gateway accepts; "
                                   "only its first bytes were kept", "MSH^1", "104")])
    return ingest.run(repo, _unprocessed(head, channel, message, outcome, started,
                                         read=Message.leading_segments(head)))
