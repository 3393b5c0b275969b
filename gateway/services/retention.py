"""Closing a record, and destroying it when the patient asked and the law allows.

A closed record (an active `record` Consent with provision deny) is kept RETENTION years after
its closure (CSP R1111-46 as summarised in the reference: ten years), then destroyed if the
patient requested it. `gateway retention` carries out the requests that are due: every resource of
the record, their versions, index rows, identifiers, rules, document bytes and the raw inputs that
carried them or named its patient are deleted. The AuditEvents stay: they name resources,
hold no content, and the hash chain that proves the trail intact runs through them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator

from sqlalchemy import Engine, delete, or_, select, update

from gateway.access.writes import Write
from gateway.storage.database import read_connection, write_transaction
from gateway.storage.repository import Repository, StoredResource, delete_blobs, record_closed
from gateway.storage.schema import (
    INDEX_TABLES,
    access_rules,
    awaited_parents,
    blobs,
    destruction_requests,
    raw_inputs,
    resource_versions,
    resources,
    unique_identifiers,
)

from . import consents

RETENTION_YEARS = 10
CHUNK = 500   # values of one IN (…): SQLite's bound is 32,766, PostgreSQL's 65,535 parameters


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _closure(repo: Repository, patient_id: str) -> StoredResource | None:
    """The active Consent that closes the record, if it is closed."""
    for stored in repo.search(consents.search_request(patient_id, "record")).entries:
        consent = stored.json()
        if consent.get("status") == "active" and consent.get("provision", {}).get("type") == "deny":
            return stored
    return None


def close_record(repo: Repository) -> StoredResource:
    """The Consent that closes the record: made, or the one that closed it already."""
    return consents.create(repo, consents.decision("record", "deny"))[0]


def reopen_record(repo: Repository) -> None:
    """Revoke the closure; a pending destruction request lapses with it. In one unit of work, on the
    record as it is then: a merge may have moved it since the request began, and brought the merged
    record's closure with it."""
    consents.own_patient(repo)
    with repo.unit_of_work(Write.CONSENT) as uow:
        patient_id = consents.own_record(uow)
        for closure in uow.closures(patient_id):
            uow.save(consents.checked_consent(consents.inactive(closure), patient_id, repo.access, closure.json()),
                     patient_id=patient_id, method="PUT")
        uow.withdraw_destruction(patient_id)


def _due(closed_at: str) -> str:
    closed = datetime.fromisoformat(closed_at.replace("Z", "+00:00"))
    return closed.replace(year=closed.year + RETENTION_YEARS).strftime("%Y-%m-%dT%H:%M:%S")


def request_destruction(repo: Repository) -> str:
    """Close the record if it is open and record the request; returns when it will be carried out."""
    closure = close_record(repo)
    due = _due(closure.json()["dateTime"])
    with repo.unit_of_work(Write.CONSENT) as uow:
        uow.request_destruction(consents.own_record(uow), requested_at=_now().strftime("%Y-%m-%dT%H:%M:%S"),
                                requested_by=repo.access.subject, due_at=due)
    return due


def record_state(repo: Repository) -> tuple[StoredResource | None, str | None]:
    """(the closing Consent or None, the date a requested destruction is due or None)."""
    patient_id = consents.own_patient(repo)
    with read_connection(repo.engine) as conn:
        due = conn.execute(select(destruction_requests.c.due_at).where(
            destruction_requests.c.patient_id == patient_id,
            destruction_requests.c.carried_out_at.is_(None))).scalar_one_or_none()
    return _closure(repo, patient_id), due


@dataclass
class Destroyed:
    patient_id: str
    resources: int
    raw_inputs: int


def carry_out(engine: Engine, now: datetime | None = None) -> list[Destroyed]:
    """Destroy the records whose destruction was requested and whose retention has run out."""
    stamp = (now or _now()).strftime("%Y-%m-%dT%H:%M:%S")
    with read_connection(engine) as conn:
        due = conn.execute(select(destruction_requests.c.patient_id).where(
            destruction_requests.c.carried_out_at.is_(None), destruction_requests.c.due_at <= stamp)).scalars().all()
    done = []
    for patient_id in due:
        with write_transaction(engine) as conn:
            if not record_closed(conn, patient_id):   # reopened since: the request lapsed
                conn.execute(delete(destruction_requests).where(destruction_requests.c.patient_id == patient_id))
                continue
            done.append(_destroy(conn, patient_id, stamp))
    return done


def _destroy(conn, patient_id: str, stamp: str) -> Destroyed:
    owned = conn.execute(select(resources.c.res_type, resources.c.res_id, resources.c.blob_sha256).where(
        resources.c.patient_id == patient_id, resources.c.res_type != "AuditEvent")).all()
    patients = [r.res_id for r in owned if r.res_type == "Patient"]   # with those merged into it
    identifiers = {f"{system}|{value}" for system, value in conn.execute(
        select(unique_identifiers.c.system, unique_identifiers.c.value).where(
            unique_identifiers.c.res_type == "Patient", unique_identifiers.c.res_id.in_(patients)))}
    raw = _raw_inputs_of(conn, {f"{r.res_type}/{r.res_id}" for r in owned}, identifiers)
    for res_type in {r.res_type for r in owned}:
        ids = [r.res_id for r in owned if r.res_type == res_type]
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start:start + CHUNK]
            for table in (resources, resource_versions, unique_identifiers, awaited_parents, *INDEX_TABLES):
                conn.execute(delete(table).where(table.c.res_type == res_type, table.c.res_id.in_(chunk)))
    conn.execute(delete(access_rules).where(access_rules.c.patient_id == patient_id))
    raw_ids = sorted(raw)
    for start in range(0, len(raw_ids), CHUNK):
        conn.execute(delete(raw_inputs).where(raw_inputs.c.id.in_(raw_ids[start:start + CHUNK])))
    _delete_unread_blobs(conn, {r.blob_sha256 for r in owned if r.blob_sha256} | set(raw.values()))
    conn.execute(update(destruction_requests).where(destruction_requests.c.patient_id == patient_id)
                 .values(carried_out_at=stamp))
    return Destroyed(patient_id, len(owned), len(raw))


def _delete_unread_blobs(conn, candidates: set[str]) -> None:
    """A blob goes when nothing refers to it any more: a resource's bytes, a raw input's body, or a
    document read from it (a message's raw copy goes once the documents read from it have gone, on
    the next pass). The raw copies the candidates are read from are candidates too; such a raw copy
    is never itself read from another (statements.INSERT_BLOB_IN_RAW)."""
    candidates |= {carrier for chunk in _chunks(candidates) for carrier in conn.execute(
        select(blobs.c.base64_of).where(blobs.c.sha256.in_(chunk), blobs.c.base64_of.is_not(None))).scalars()}
    while candidates:
        gone = set()
        for chunk in _chunks(candidates):
            read = set(conn.execute(select(resources.c.blob_sha256).where(
                resources.c.blob_sha256.in_(chunk))).scalars())
            read |= set(conn.execute(select(raw_inputs.c.sha256).where(raw_inputs.c.sha256.in_(chunk))).scalars())
            read |= set(conn.execute(select(blobs.c.base64_of).where(blobs.c.base64_of.in_(chunk))).scalars())
            unread = [sha256 for sha256 in chunk if sha256 not in read]
            delete_blobs(conn, unread)
            gone.update(unread)
        if not gone:
            return
        candidates -= gone


def _chunks(values: set[str]) -> Iterator[list[str]]:
    ordered = sorted(values)
    for start in range(0, len(ordered), CHUNK):
        yield ordered[start:start + CHUNK]


def _raw_inputs_of(conn, references: set[str], identifiers: set[str]) -> dict[int, str]:
    """The raw inputs that produced or named any of `references` (their `resources`), whose outcome
    names the record (`record`: refused, or naming no resource of it), or that name one of its
    Patients' `identifiers` (refused before the record was made), with their bodies' blobs: one
    pass over the inputs, streamed. Each reference was a `LIKE '%…%'` of its own, 200 to a
    statement, each statement a pass over every input: a pass per 200 of the record's resources."""
    found = {}
    rows = conn.execute(select(raw_inputs.c.id, raw_inputs.c.sha256, raw_inputs.c.resources, raw_inputs.c.outcome,
                               raw_inputs.c.patient_identifiers)
                        .where(or_(raw_inputs.c.resources.is_not(None), raw_inputs.c.outcome.is_not(None),
                                   raw_inputs.c.patient_identifiers.is_not(None)))
                        .execution_options(yield_per=1000))
    for row in rows:
        # An ITI-65 submission names what it wrote by version (`DocumentReference/<id>/_history/1`):
        # matched as the resource, or its raw copy, the documents it carried, outlived the record.
        named = {"/".join(name.split("/", 2)[:2]) for name in json.loads(row.resources)} if row.resources else set()
        if row.outcome and (record := json.loads(row.outcome).get("record")):
            named.add(record)
        if not references.isdisjoint(named) or (
                row.patient_identifiers and not identifiers.isdisjoint(json.loads(row.patient_identifiers))):
            found[row.id] = row.sha256
    return found


def pending(engine: Engine) -> list[dict]:
    with read_connection(engine) as conn:
        return [dict(r._mapping) for r in conn.execute(select(destruction_requests).order_by(
            destruction_requests.c.due_at)).all()]
