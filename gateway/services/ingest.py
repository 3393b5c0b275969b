"""The ingest pipeline, one for every transport (MLLP, POST /hl7v2, POST /cda, ITI-65, ITI-105,
`gateway ingest`, the patient space's uploads):

    raw copy (committed; an HL7v2 message sent again is found instead) -> prepare (no database)
    -> write (a unit of work in the group commit) -> the raw input's final status, the metric, the
    log line.

The requester's permission (`Write`, decided in gateway.access.writes) opens each unit of work of
the input, from the raw copy on: an input its sender may not submit is refused before anything of
it is kept. A transport decodes its input, gives its work as `prepare` (reading, rules, checks,
and the resources an input states, mapped and validated: whatever needs nothing stored, done
outside any transaction, so SQLite's write lock is never held for it) and `write` (inside the unit
of work: look-ups, the ids they give, persistence), and renders a `Refused` into its own answer: an
ACK with ERR, an OperationOutcome, a French sentence. The raw copy, the result, and a refusal or failure (the
unit of work that failed left nothing behind) are each written in the group commit.

An input's pipeline is written as the steps it waits for (`ingesting` yields each unit of work as a
`Step`, and is given its value once committed): `ingest` runs one input's, `run_together` several
inputs' side by side, each round's units submitted at once, so that the messages of an HL7 batch
and the documents of `gateway ingest` share transactions and flushes as inputs from several
connections do.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Generator, Generic, Iterable, Iterator, TypeVar

from gateway import metrics
from gateway.access.writes import Write
from gateway.refusal import Refused
from gateway.storage.database import failure_reason, unavailable
from gateway.storage.commits import MAX_BATCH, Pending
from gateway.storage.repository import Repository, UnitOfWork

log = logging.getLogger(__name__)

I = TypeVar("I")
P = TypeVar("P")
T = TypeVar("T")


@dataclass
class Received:
    """An input as it arrived."""
    channel: str                  # the transport: mllp, hl7v2, cda, iti65, iti105, bulk, patient-space
    body: bytes | bytearray       # as a request was read (fhir.responses.request_body)
    content_type: str | None
    sender: str | None
    keys: dict | None = None      # an HL7v2 message's control id, fingerprint and type
    sha256: str | None = None     # the body's, when the transport has it already (a CDA's digests)

    def __post_init__(self):
        # raw_inputs.sender's width: MSH-3|MSH-4 may be longer (HL7 allows 227 characters each), a
        # file's path too. Kept, and matched for a retransmission, as its first 256 characters.
        if self.sender is not None:
            self.sender = self.sender[:256]

    def take_body(self) -> bytes | bytearray:
        """The body, for the work to read once its raw copy is kept; the input lets go of it. A FHIR
        Bundle carrying a 20 MB document is 27 MB of body: held beside what it is read into, and
        then the document, it took the peak memory past 3x the document."""
        body, self.body = self.body, b""
        return body


@dataclass
class Written(Generic[T]):
    """What a write stored, as the raw input and the metric record it."""
    value: T
    status: str = "processed"     # the raw input's final status: processed, duplicate or skipped
    produced: list[str] = field(default_factory=list)
    outcome: dict | None = None   # the raw input's outcome (an HL7v2 ACK's code and issues)
    ack: str | None = None        # the ACK sent, kept to answer a retransmission with it


class AlreadyHandled(Exception):
    """Another process finished this raw input between our look-up and our claim."""


# Of an input over its size limit (a message posted to /hl7v2, a file given to `gateway ingest`), the
# bytes read and kept with its refusal, as the MLLP listener keeps of a frame: enough for an MSH or a
# CDA header, and the rest is not read.
HEAD_KEPT = 64 * 1024

# A raw input in one of these was answered: a copy of it sent again gets the same answer.
FINAL_STATUSES = ("processed", "refused", "duplicate", "skipped")
# Every status a raw input has: `received` until it is answered, `failed` when it could not be.
STATUSES = ("received", *FINAL_STATUSES, "failed")


@dataclass(frozen=True)
class NamedPatient:
    """The patient an input names, for its raw copy to go with their record's destruction: the
    record, if that patient is known; otherwise the identifiers the input names them by
    (`system|value`, at most NAMED_IDENTIFIERS a patient), which find the record made for them
    later (a batch refused whole names every patient of its messages so)."""
    record: str | None = None
    identifiers: tuple[str, ...] = ()


NO_ONE = NamedPatient()
# A patient is named by an INS or an IPP or two: an input naming more keeps the first ones.
NAMED_IDENTIFIERS = 20


@dataclass
class Kept:
    """Where an input's raw copy is."""
    raw_id: int
    answered: object | None = None    # an earlier copy, already answered: nothing was stored
    control_id_reused: bool = False   # the sender gave another message this control id before


@dataclass(frozen=True)
class Step(Generic[T]):
    """A unit of work a pipeline waits for: `yield`ed, it is given back the work's value once
    committed, or raises its error there."""
    work: Callable[[UnitOfWork], T]
    permission: Write
    alone: bool = False


Steps = Generator[Step, object, T]


@dataclass
class Finished(Generic[T]):
    """How a pipeline run by `run_together` ended: its value, or what it raised."""
    value: T | None = None
    error: Exception | None = None


# Inputs run side by side go in windows of at most WINDOW_INPUTS inputs and WINDOW_BYTES (an input
# larger is a window alone): a window's units fill the group commit's transactions, and what is read
# of its inputs at once (documents parsed, resources mapped) stays as bounded as one input's.
WINDOW_INPUTS = MAX_BATCH
WINDOW_BYTES = 1024 * 1024


def windows(inputs: Iterable[I], size: Callable[[I], int]) -> Iterator[list[I]]:
    """The inputs, in their order, in windows for `run_together`."""
    window: list[I] = []
    held = 0
    for item in inputs:
        if window and (len(window) == WINDOW_INPUTS or held + size(item) > WINDOW_BYTES):
            yield window
            window, held = [], 0
        window.append(item)
        held += size(item)
    if window:
        yield window


def run(repo: Repository, steps: Steps[T]) -> T:
    """One input's pipeline: its value, or what it raised."""
    finished = run_together(repo, [steps])[0]
    if finished.error is not None:
        raise finished.error
    return finished.value


def run_together(repo: Repository, pipelines: list[Steps]) -> list[Finished]:
    """Several inputs' pipelines in order, side by side. Each round submits the next unit of work of
    every pipeline still running at once, in the inputs' order, and then waits for them: they share
    the group commit's transactions and flushes instead of waiting each for its own. What a
    pipeline does between its units (reading, mapping) runs between rounds, outside any
    transaction. Each unit comes after the one before it in its round: none runs once the database
    failed an earlier one (NotRun), so no input is processed ahead of an earlier one that could not
    be."""
    finished: list[Finished | None] = [None] * len(pipelines)
    steps: dict[int, Step] = {}

    def advance(index: int, value: object = None, error: Exception | None = None) -> None:
        try:
            steps[index] = pipelines[index].send(value) if error is None else pipelines[index].throw(error)
        except StopIteration as done:
            finished[index] = Finished(done.value)
        except Exception as failure:
            finished[index] = Finished(error=failure)

    for index in range(len(pipelines)):
        advance(index)
    while steps:
        submitted: list[tuple[int, Pending | Exception]] = []
        previous: Pending | None = None
        for index, step in sorted(steps.items()):
            try:
                previous = repo.submit(step.work, step.permission, alone=step.alone, after=previous)
                submitted.append((index, previous))
            except Exception as refused:   # a requester who may not do this write
                submitted.append((index, refused))
        steps.clear()
        for index, pending in submitted:
            if isinstance(pending, Exception):
                advance(index, error=pending)
                continue
            try:
                value = pending.result()
            except Exception as failure:
                advance(index, error=failure)
            else:
                advance(index, value)
    return finished


def keep(repo: Repository, received: Received, permission: Write, **keeping_options) -> Kept:
    """`keeping`'s unit of work, run alone."""
    step = keeping(received, permission, **keeping_options)
    return repo.write(step.work, step.permission)


def keeping(received: Received, permission: Write, *, status: str = "received", outcome: dict | None = None,
            ack: str | None = None,
            named_patient: Callable[[UnitOfWork], NamedPatient] = lambda uow: NO_ONE) -> Step[Kept]:
    """Store the input exactly as received, committed before any processing starts. An HL7v2
    message (its keys hold a fingerprint) already received from its sender under its control id is
    not stored again: its earlier copy is returned. The look-up and the copy are one unit of work,
    so two copies sent at the same time are not both kept. A document (no HL7v2 keys) sent again
    after its processing failed takes up the copy that was never answered, so that the copy records
    how it ended; one that was answered is kept again, and found a duplicate. An input kept
    `refused` at once (a message no handler takes) keeps the patient it names (`named_patient`)."""
    keys = received.keys or {}
    sha256 = received.sha256 or hashlib.sha256(received.body).hexdigest()

    def unit(uow: UnitOfWork) -> Kept:
        earlier = uow.earlier_inputs(received.sender, keys["control_id"]) if "fingerprint" in keys else []
        same = next((row for row in earlier if row.fingerprint == keys["fingerprint"]), None)
        if same is not None:
            return Kept(same.id, same if same.status in FINAL_STATUSES else None)
        if not keys and status == "received":
            unanswered = uow.unanswered_copy(received.channel, sha256, received.sender)
            if unanswered is not None:
                return Kept(unanswered)
        named = naming(outcome, named_patient(uow)) if status == "refused" else {"outcome": outcome}
        raw_id = uow.store_raw(received.channel, received.body, received.content_type, received.sender,
                               message=received.keys, status=status, ack=ack, sha256=sha256, **named)
        return Kept(raw_id, control_id_reused=bool(earlier))

    return Step(unit, permission)


def ingest(repo: Repository, received: Received, permission: Write, prepare: Callable[[], P],
           write: Callable[[UnitOfWork, P], Written[T]], **options) -> tuple[int, Written[T]]:
    """One input through the pipeline (`ingesting`), alone."""
    return run(repo, ingesting(received, permission, prepare, write, **options))


def ingesting(received: Received, permission: Write, prepare: Callable[[], P],
              write: Callable[[UnitOfWork, P], Written[T]], *, raw_id: int | None = None,
              record_refusal: Callable[[Refused], tuple[dict, str | None]] = lambda refusal: (refusal.summary(), None),
              named_patient: Callable[[UnitOfWork], NamedPatient] = lambda uow: NO_ONE,
              alone: bool = False) -> Steps[tuple[int, Written[T]]]:
    """One input through the pipeline. Returns the raw input's id and what was written; raises
    the `Refused` (recorded as such) or the failure (recorded as failed, for `gateway messages
    reprocess`). `raw_id` names an input already kept (a reprocessing, an unanswered
    retransmission); `record_refusal` gives what the raw input keeps of a refusal (its outcome, and
    the ACK it was answered with); `named_patient`, the patient the input names, from what its
    transport decoded of it, for an input refused or whose result names no resource; `alone`: the
    write, which may change a whole record, runs in a transaction of its own (GroupCommit.submit)."""
    started = time.perf_counter()
    kept_here = raw_id is None
    if kept_here:
        raw_id = (yield keeping(received, permission)).raw_id

    def unit(uow: UnitOfWork) -> Written[T]:
        if not uow.claim_raw(raw_id):
            raise AlreadyHandled()
        written = write(uow, prepared)
        # An input whose result names nothing of a record (an ADT that changed nothing, an MDM not for
        # the shared record) names its patient, as a refusal does: its raw copy holds their
        # identity, and goes with the record's destruction.
        named = {"outcome": written.outcome} if written.produced else naming(written.outcome, named_patient(uow))
        uow.record_outcome(raw_id, written.status, produced=written.produced, ack=written.ack, **named)
        return written

    try:
        prepared = prepare()
        while True:
            try:
                written = yield Step(unit, permission, alone)
                break
            except AlreadyHandled:
                if not kept_here:
                    raise
                # Another attempt at the same document took up its copy and claimed it first (a
                # client that timed out sent it again while this attempt was at work): this one is
                # kept as a copy of its own, which a third attempt may take up in turn. Each turn is
                # lost to an attempt that found the copy of the turn before: there are no more turns
                # than attempts at the same document sent meanwhile.
                raw_id = yield Step(lambda uow: uow.copy_raw(raw_id), permission)
    except AlreadyHandled:
        raise
    except Refused as refusal:
        outcome, ack = record_refusal(refusal)
        said = refusal.record
        yield Step(lambda uow: uow.record_outcome(raw_id, "refused", ack=ack, **naming(
            outcome, NamedPatient(said) if said else named_patient(uow))), Write.RECORD)
        metrics.observe_ingest(received.channel, "refused", started)
        log.info("input refused", extra={"raw_id": raw_id, "channel": received.channel,
                                         "location": refusal.location, "status": refusal.status})
        raise
    except Exception as failure:
        if unavailable(failure):
            log.warning("input failed: database unavailable", extra={"raw_id": raw_id, "channel": received.channel,
                                                                     "reason": failure_reason(failure)})
        else:
            log.exception("input failed", extra={"raw_id": raw_id, "channel": received.channel})
        try:
            yield Step(lambda uow: uow.record_outcome(raw_id, "failed", {"reason": "internal error"}), Write.RECORD)
        except Exception:
            log.error("could not record the failure", extra={"raw_id": raw_id})
        metrics.observe_ingest(received.channel, "failed", started)
        raise
    metrics.observe_ingest(received.channel, written.status, started)
    log.info("input processed", extra={"raw_id": raw_id, "channel": received.channel, "status": written.status})
    return raw_id, written


def naming(outcome: dict | None, named: NamedPatient) -> dict:
    """A raw input's outcome and identifiers (as `record_outcome` takes them) naming the patient it
    concerns: the record's destruction takes its raw copy, which holds the patient's identity and
    what was sent of them (services.retention). The outcome names the record (its Patient's id),
    when the refusal knows it (a closed record) or the patient is known by the identifiers the input
    gives; else those identifiers are kept, apart from the outcome, which operators read."""
    if named.record is not None:
        return {"outcome": {**(outcome or {}), "record": f"Patient/{named.record}"}}
    return {"outcome": outcome, "patient_identifiers": list(named.identifiers)}
