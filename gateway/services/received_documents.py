"""The documents received (POST /cda, ITI-65, ITI-105, `gateway ingest`) as operators see them: one
described without its content, and reprocessed, one or every failed one, after the cause of its
failure or refusal was fixed.

A document is processed again as the requester who submitted it (raw_inputs.requester), through
its transport's own service: its write rights are theirs (feeding as this professional, replacing
a version they produced), and so is what the gateway completes from them (the custodian, the
AuditEvents). The operator only needs the right to reprocess. A patient's upload is not
reprocessed: its title and type came from a form that its raw copy does not keep, and the page
told the patient it was not added.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from sqlalchemy import select

from gateway.access import AccessContext
from gateway.access.writes import Write, require
from gateway.config import Settings
from gateway.storage.database import read_connection
from gateway.storage.repository import Repository, blob_bytes
from gateway.storage.schema import raw_inputs

from .documents import ingest_cda
from .ingest import AlreadyHandled, Received
from .messages import NotReprocessable, reopen, unanswered
from .provide import provide, publish


def _cda(repo: Repository, received: Received, settings: Settings, raw_id: int) -> None:
    ingest_cda(repo, received.body, max_bytes=settings.max_document_bytes, channel=received.channel,
               content_type=received.content_type, sender=received.sender, raw_id=raw_id)


def _iti65(repo: Repository, received: Received, settings: Settings, raw_id: int) -> None:
    provide(repo, received, settings.trust_anchors, settings.max_document_bytes, raw_id)


def _iti105(repo: Repository, received: Received, settings: Settings, raw_id: int) -> None:
    publish(repo, received, settings.trust_anchors, settings.max_document_bytes, raw_id)


TRANSPORTS = {"cda": _cda, "bulk": _cda, "iti65": _iti65, "iti105": _iti105}
DOCUMENT_CHANNELS = tuple(TRANSPORTS)


@dataclass
class Reprocessed:
    raw_id: int
    status: str               # the raw input's status now: processed, duplicate, refused or failed
    reason: str | None        # why it was refused, or failed
    resources: list[str]      # what it produced


def describe(repo: Repository, raw_id: int) -> dict | None:
    """A document received, without its content: how and from whom it came, and what became of it."""
    with read_connection(repo.engine) as conn:
        row = conn.execute(select(raw_inputs).where(
            raw_inputs.c.id == raw_id, raw_inputs.c.channel.in_(DOCUMENT_CHANNELS))).first()
    if row is None:
        return None
    outcome = json.loads(row.outcome) if row.outcome else {}
    requester = AccessContext.from_json(row.requester) if row.requester else None
    return {"id": row.id, "received_at": row.received_at, "channel": row.channel, "sender": row.sender,
            "requester": f"{requester.role} {requester.subject}" if requester else None,
            "content_type": row.content_type, "size": row.size, "sha256": row.sha256, "status": row.status,
            "reason": outcome.get("reason"), "resources": json.loads(row.resources) if row.resources else []}


def reprocess(repo: Repository, raw_id: int, settings: Settings) -> Reprocessed:
    require(repo.access, Write.REPROCESS)
    named = f"document {raw_id}"
    with read_connection(repo.engine) as conn:
        row = conn.execute(select(raw_inputs.c.status, raw_inputs.c.channel, raw_inputs.c.content_type,
                                  raw_inputs.c.sender, raw_inputs.c.requester, raw_inputs.c.sha256).where(
            raw_inputs.c.id == raw_id, raw_inputs.c.channel.in_(DOCUMENT_CHANNELS))).first()
    if row is None:
        raise LookupError(f"no {named} received")
    if row.requester is None:
        raise NotReprocessable(f"{named} was received before the gateway kept who submitted it; "
                               "its sender sends it again")
    reopen(repo, raw_id, row.status, named)
    with read_connection(repo.engine) as conn:
        body = blob_bytes(conn, row.sha256)
    # With the rights of whoever sent it; named after the operator too, so that the trail of what
    # it writes says who had it processed again (an HL7v2 message's says the same, writes.reprocessing).
    requester = AccessContext.from_json(row.requester)
    as_requester = Repository(repo.engine, dataclasses.replace(
        requester, name=f"{requester.name or requester.subject}, reprocessed by {repo.access.subject}"), repo.base_url)
    try:
        TRANSPORTS[row.channel](as_requester, Received(row.channel, body, row.content_type, row.sender),
                                settings, raw_id)
    except AlreadyHandled:
        raise NotReprocessable(f"{named} was taken up meanwhile: its sender sent it again") from None
    except Exception:
        # A refusal or a failure: the pipeline recorded it (and logged a failure) on the raw input,
        # where the operator reads it, as for any other outcome.
        pass
    ended = describe(repo, raw_id)
    return Reprocessed(raw_id, ended["status"], ended["reason"], ended["resources"])


def reprocess_failed(repo: Repository, settings: Settings) -> tuple[list[Reprocessed], list[tuple[int, str]]]:
    """Every failed (or interrupted) document again, oldest first: those reprocessed, and those left
    with why. One that its sender sends again meanwhile (a document in flight is `received` too) is
    left to that attempt; one whose requester is not known stays failed, and is named each time."""
    done, left = [], []
    for raw_id in unanswered(repo, DOCUMENT_CHANNELS):
        try:
            done.append(reprocess(repo, raw_id, settings))
        except NotReprocessable as exc:
            left.append((raw_id, str(exc)))
    return done, left
