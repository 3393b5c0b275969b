"""The repository: the one object through which resources are read and written.

It is built per request from who is asking (an AccessContext); every query it runs carries the
reader's access filter in its SQL, so no endpoint can read around it.
"""
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterator, TypeVar
from urllib.parse import urlparse

import orjson
from sqlalchemy import Connection, Engine, and_, delete, func, insert, or_, select, text, tuple_, update
from sqlalchemy.exc import DBAPIError
from uuid6 import uuid7

from gateway import base64text
from gateway.access import AccessContext
from gateway.access import audit, writes
from gateway.access.context import (
    DIRECTORY_TYPES,
    EMERGENCY,
    INS_SYSTEMS,
    PATIENT,
    REGULATION,
    TOKEN_PATIENT_STATE,
    ClosedToHolder,
)
from gateway.access.rules import (
    MASQUE_PS,
    VISIBILITY_COLUMNS,
    binary_ids,
    related_ids,
    rules_of,
    signed_ids,
    validity,
    visibility_columns,
)
from gateway.access.writes import Write
from gateway.mapping.document import author_idnatps, producer_ids
from gateway.refusal import Refused

from . import search as search_sql
from . import statements as sql
from .commits import Pending, group_commit
from .database import pipelined, read_connection, timed_out, write_transaction
from .schema import (
    BLOB_PART,
    access_rules,
    account_records,
    blob_parts,
    blobs,
    destruction_requests,
    notifications,
    resource_versions,
    resources,
    search_reference,
    unique_identifiers,
)
from .searchparams import index_rows


class NotFound(LookupError):
    pass


class Gone(LookupError):
    """The resource existed and was deleted (410)."""


@dataclass(frozen=True)
class Base64InRaw:
    """Where a raw copy already kept holds a document in base64 (an MDM^T02's OBX-5): the `length`
    characters at `at` of the raw copy's bytes, `raw_size` of them, stored under `raw_sha256`."""
    raw_sha256: str
    raw_size: int
    at: int
    length: int


@dataclass(frozen=True)
class StoredResource:
    res_type: str
    res_id: str
    version: int
    last_updated: str   # FHIR instant
    body: str           # JSON text as validated on write
    deleted: bool = False
    blob_sha256: str | None = None
    patient_id: str | None = None
    hidden_from_patient: bool = False
    hidden_from_representatives: bool = False

    @property
    def reference(self) -> str:
        return f"{self.res_type}/{self.res_id}"

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass(frozen=True)
class RecordState:
    """What the DMP tells of a record beside its Patient (PDSM4DMP TD0.2)."""
    closed_on: str | None          # the date the patient closed it
    attached: bool                 # the patient has an account in the patient space (Mon espace santé)
    attending: bool                # the requester is the patient's attending physician (médecin traitant DMP)


T = TypeVar("T")

# The identifiers a unit finds in one statement at most (UnitOfWork.look_up_identifiers): a
# document's registration asks for five or six.
LOOK_UP_TOGETHER = 8
# Beyond this many matches a search's Bundle.total is left out unless _total=accurate asks for it.
TOTAL_BOUND = 1000
# The rows search_all reads per statement.
SEARCH_ALL_PAGE = 200
# The resources a merge reads, writes anew and audits at a time (live_patient_resources).
PATIENT_PAGE = 200
# A patient is told of an emergency access to their record at most once in this time: the accesses
# after the first are in the trail the notice sends them to.
EMERGENCY_NOTICE_EVERY = timedelta(hours=1)


@dataclass
class SearchPage:
    entries: list[StoredResource]
    total: int | None              # None: more than TOTAL_BOUND matches and no exact count asked for
    included: list[StoredResource] = field(default_factory=list)
    next_keys: list | None = None
    previous_keys: list | None = None
    patient_ids: list[str] = field(default_factory=list)   # whose data a count-only answer counted


def _now() -> tuple[str, str]:
    """(FHIR instant, index string) for the same moment."""
    moment = datetime.now(timezone.utc)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z"), _index_time(moment)


def _index_time(moment: datetime) -> str:
    """A moment as the index columns and the gateway's own tables keep it (UTC, no zone)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")


def _instant(index_value: str) -> str:
    return index_value + "Z"


def dumps(resource: dict) -> str:
    """A resource's text as stored: orjson's, in a tenth of the standard library's time (68 against
    6 us a CDA's DocumentReference), under SQLite's write lock for each resource a unit writes. It
    reads back as the same values: orjson writes a small float's exponent otherwise (1e-7 for
    1e-07, 0.00001 for 1e-05), both FHIR decimals. The standard library's writing is kept for what
    orjson refuses: an integer beyond 64 bits, which a decimal sent in XML may hold."""
    try:
        return orjson.dumps(resource).decode()
    except TypeError:
        return json.dumps(resource, ensure_ascii=False, separators=(",", ":"))


class Repository:
    def __init__(self, engine: Engine, access: AccessContext, base_url: str | None = None,
                 search_seconds: float | None = None):
        self.engine = engine
        self.access = access
        self.base_url = base_url
        # How long a search may run (GATEWAY_SEARCH_TIMEOUT for the HTTP readers): within its bounds
        # (30 parameters, 100 values) its work still grows with the documents the reader may see.
        self.search_seconds = search_seconds

    def _visible(self, res_type: str, listed: bool = False):
        return self.access.resource_filter(resources, res_type, listed)

    def _row(self, row) -> StoredResource:
        return StoredResource(row.res_type, row.res_id, row.version, _instant(row.last_updated), row.body,
                              row.deleted, row.blob_sha256, row.patient_id, row.hidden_from_patient,
                              row.hidden_from_representatives)

    # -- reads: each one leaves an AuditEvent before its answer ---------------------------------

    def read(self, res_type: str, res_id: str) -> StoredResource:
        stored = self._readable(res_type, res_id)
        self._audit_access("read", stored)
        return stored

    def read_all(self, res_type: str, res_ids: list[str]) -> list[StoredResource]:
        """Reads of several resources, each answered as `read` answers it, their AuditEvents (one a
        resource) recorded together: a record's copy read its 1,500 documents' Binaries in 1,500
        group commits, a quarter of its time."""
        found = [self._readable(res_type, res_id) for res_id in res_ids]
        events = [self._event("read", s.patient_id, s.reference, flags_of=[s]) for s in found if s.patient_id]
        if events:
            self.record_audit(events)
        return found

    def _readable(self, res_type: str, res_id: str) -> StoredResource:
        """The resource, if this reader may see it; a refused read is audited and raised."""
        row = self._visible_current(res_type, res_id)
        if row is None or row.deleted:
            self._audit_refused("read", res_type, res_id)
            if row is None:
                raise NotFound(f"{res_type}/{res_id} is not known")
            raise Gone(f"{res_type}/{res_id} was deleted")
        return self._row(row)

    def vread(self, res_type: str, res_id: str, version: int) -> StoredResource:
        # A version is visible when the resource itself is: the access filter applies to the current
        # row. The current version is in `resources`, those it replaced in the history: one snapshot.
        with read_connection(self.engine) as conn:
            current = row = self._visible_current(res_type, res_id, conn)
            if current is not None and current.version != version:
                row = conn.execute(select(resource_versions).where(
                    resource_versions.c.res_type == res_type, resource_versions.c.res_id == res_id,
                    resource_versions.c.version == version)).first()
        if row is None or current is None or row.deleted:
            self._audit_refused("vread", res_type, res_id)
            if row is None or current is None:
                raise NotFound(f"{res_type}/{res_id}/_history/{version} is not known")
            raise Gone(f"{res_type}/{res_id} version {version} is a deletion")
        stored = self._row(current)
        self._audit_access("vread", stored)
        return StoredResource(res_type, res_id, row.version, _instant(row.last_updated), row.body, row.deleted,
                              current.blob_sha256, current.patient_id)

    def masked_by_its_patient(self, docref_id: str) -> bool:
        """Whether the MASQUE_PS of a document this requester reads is the patient's (or their
        representative's), which only they lift, rather than its producer's: how the patient space
        says whose mask it is. No data, no access: the page's read of the document is audited."""
        with read_connection(self.engine) as conn:
            return bool(conn.execute(select(resources.c.masked_by_patient).where(
                resources.c.res_type == "DocumentReference", resources.c.res_id == docref_id,
                self.access.resource_filter(resources, "DocumentReference"))).scalar())

    def visible_to(self, reader: AccessContext, res_type: str, res_id: str) -> bool:
        """Whether another reader may see a resource this requester sees: how the patient space
        explains who can read a document. It answers yes or no, returns no data and is no access,
        so it leaves no trail; the reader's own filter decides, as it would for their request."""
        if self._visible_current(res_type, res_id) is None:
            raise NotFound(f"{res_type}/{res_id} is not known")
        with read_connection(self.engine) as conn:
            return conn.execute(select(resources.c.res_id).where(
                resources.c.res_type == res_type, resources.c.res_id == res_id,
                reader.resource_filter(resources, res_type))).first() is not None

    def record_states(self, patient_ids: list[str]) -> dict[str, RecordState]:
        """The state of the records of Patients this requester has read (no data of its own: whether
        the record is closed and since when, attached to the patient space, and whether the requester
        is the attending physician)."""
        if not patient_ids:
            return {}
        with read_connection(self.engine) as conn:
            rules = conn.execute(select(access_rules.c.patient_id, access_rules.c.kind, access_rules.c.consent_id,
                                        access_rules.c.actor_value).where(
                access_rules.c.patient_id.in_(patient_ids), access_rules.c.effect.in_(("deny", "permit")),
                access_rules.c.kind.in_(("record", "attending-physician")))).all()
            closing = {r.patient_id: r.consent_id for r in rules if r.kind == "record"}
            closed_on = dict(conn.execute(select(resources.c.res_id, resources.c.last_updated).where(
                resources.c.res_type == "Consent", resources.c.res_id.in_(list(closing.values())))).all()) if closing else {}
            ins = conn.execute(select(unique_identifiers.c.res_id, unique_identifiers.c.value).where(
                unique_identifiers.c.res_type == "Patient", unique_identifiers.c.res_id.in_(patient_ids),
                unique_identifiers.c.system.in_(INS_SYSTEMS))).all()
            accounts = set(conn.execute(select(account_records.c.patient_ins).where(
                account_records.c.patient_ins.in_([value for _, value in ins]))).scalars())
        attached = {res_id for res_id, value in ins if value in accounts}
        attending = {r.patient_id for r in rules if r.kind == "attending-physician" and self.access.is_professional
                     and r.actor_value == self.access.subject}
        return {p: RecordState(closed_on.get(closing[p], "")[:10] if p in closing else None, p in attached,
                               p in attending) for p in patient_ids}

    def own_patient_id(self) -> str | None:
        """The Patient id of the record a patient or representative token is about, while it is open
        to them (access.context.HOLDER, REPRESENTED_MINOR: alive, and a minor to a parent)."""
        found = self._token_patient
        if found is None or found[2] or self.closed_to_holder() is not None:
            return None
        return found[0]

    def closed_to_holder(self, holder: AccessContext | None = None) -> ClosedToHolder | None:
        """For a patient or a legal representative (this requester, or `holder`) whose record is
        here but closed to them (the rules show them none of it): why."""
        holder = holder or self.access
        if not holder.acts_for_patient:
            return None
        found = self._token_patient if holder is self.access else _token_patient_state(self.engine, holder)
        if found is None:
            return None
        patient_id, born, died = found
        return ClosedToHolder.of(holder.role, patient_id, born, died, holder.guardianship)

    @functools.cached_property
    def _token_patient(self) -> tuple[str, str | None, bool] | None:
        """The Patient of this requester's token, their birth and whether they died: looked up once
        for a request, which asks up to three times (whether the record is closed to them, which
        record is theirs, who they are in its trail). A patient's search made a look-up for two of
        them, 0.44 of its 3.66 ms."""
        return _token_patient_state(self.engine, self.access)

    @functools.cached_property
    def requester_patient(self) -> str | None:
        """The Patient id by which the trail names a patient who asks (None for anyone else)."""
        return self.own_patient_id() if self.access.role == PATIENT else None

    def _visible_current(self, res_type: str, res_id: str, conn: Connection | None = None):
        if conn is None:
            with read_connection(self.engine) as conn:
                return self._visible_current(res_type, res_id, conn)
        return conn.execute(select(resources).where(
            resources.c.res_type == res_type, resources.c.res_id == res_id, self._visible(res_type))).first()

    def history(self, res_type: str, res_id: str, count: int = 50, *, below: int | None = None,
                since: str | None = None) -> tuple[list[tuple[StoredResource, str]], int]:
        """A page of a resource's versions, newest first: `count` of those below version `below`,
        updated at or after `since` (an index instant); and how many versions there are since then,
        below or not, for the page's total."""
        # The current version is in `resources`, those it replaced in the history: one snapshot.
        with read_connection(self.engine) as conn:
            current = self._visible_current(res_type, res_id, conn)
            if current is not None:
                kept = [resource_versions.c.res_type == res_type, resource_versions.c.res_id == res_id]
                if since:
                    kept.append(resource_versions.c.last_updated >= since)
                total = conn.execute(select(func.count()).select_from(resource_versions).where(*kept)).scalar_one()
                if below is not None:
                    kept.append(resource_versions.c.version < below)
                replaced = conn.execute(select(resource_versions).where(*kept)
                                        .order_by(resource_versions.c.version.desc()).limit(count)).all()
        if current is None:
            self._audit_refused("history-instance", res_type, res_id)
            raise NotFound(f"{res_type}/{res_id} is not known")
        self._audit_access("history-instance", self._row(current))
        recent = not since or current.last_updated >= since
        rows = ([current] if recent and (below is None or current.version < below) else []) + replaced
        return ([(StoredResource(res_type, res_id, r.version, _instant(r.last_updated), r.body, r.deleted), r.method)
                 for r in rows[:count]], total + recent)

    def blob(self, sha256: str) -> bytes:
        with read_connection(self.engine) as conn:
            data = blob_bytes(conn, sha256)
        if data is None:
            raise NotFound("document bytes are missing")
        return data

    def blob_parts(self, sha256: str) -> Iterator[bytes]:
        """A blob's bytes a stored part at a time (`blob_pieces`): a record's copy writes each into
        its ZIP, where joining them held the document twice."""
        with read_connection(self.engine) as conn:
            yield from blob_pieces(conn, sha256)

    def document_content(self, docref: dict) -> tuple[str, bytes]:
        """(content type, bytes) of a DocumentReference's document, read (and audited) through its Binary."""
        binary = self.read("Binary", binary_ids(docref)[0])
        return binary.json().get("contentType", "application/octet-stream"), self.blob(binary.blob_sha256)

    def search(self, request: search_sql.SearchRequest) -> SearchPage:
        page, events = self._audited_page(request)
        if events:
            self.record_audit(events)
        return page

    def search_all(self, res_type: str, params: list[tuple[str, str]]) -> list[StoredResource]:
        """Every match, read SEARCH_ALL_PAGE at a time, and one search in the trail: a page of the
        patient space asks one question. Audited page by page, opening the documents of a record
        of 5,902 wrote 30 searches into the patient's own history."""
        found, cursor, events = [], None, {}
        try:
            while True:
                page, page_events = self._audited_page(search_sql.parse_search(
                    res_type, params + [("_count", str(SEARCH_ALL_PAGE))] + ([("_cursor", cursor)] if cursor else [])))
                found += page.entries
                for pending in page_events:
                    events.setdefault((pending.patient_id, pending.event["outcome"]), pending)
                if page.next_keys is None:
                    return found
                cursor = search_sql.encode_cursor(page.next_keys, "n")
        finally:   # the pages read before one that ran out of time were read all the same
            if events:
                self.record_audit(list(events.values()))

    def _audited_page(self, request: search_sql.SearchRequest) -> tuple[SearchPage, list["PendingAudit"]]:
        # The page and what its AuditEvents say (the patients it was about, whether the reader may
        # open their records) come from one read transaction: one snapshot, one connection.
        try:
            with read_connection(self.engine, self.search_seconds) as conn:
                page = self._search(conn, request)
                return page, self._search_audit(conn, request, page)
        except DBAPIError as exc:
            if not timed_out(exc):
                raise
            raise search_sql.SearchError(
                f"the search ran longer than the {self.search_seconds:g} s this gateway gives one: narrow it "
                "(name the patient, a type, a period) or ask for fewer values", code="too-costly") from None

    def _search(self, conn: Connection, request: search_sql.SearchRequest) -> SearchPage:
        # A search that names no patient, by a reader whose patients are few, is driven from them:
        # from its type alone it would read every document of that type (README, "Search").
        listed = self.access.lists_patients and not search_sql.names_its_rows(request)
        where = search_sql.where_clause(request, self._visible(request.res_type, listed), self.base_url,
                                        access_drives=listed)
        columns = search_sql.sort_columns(request)
        backwards = bool(request.cursor and request.cursor[1] == "p")
        key_columns = [c.label(f"k{i}") for i, (c, _) in enumerate(columns)]
        order = [(c.asc() if desc == backwards else c.desc()) for c, desc in columns]
        if request.total == "estimate" and not request.cursor and request.count and not request.summary_count:
            # A first page and its bounded total in one pass: the keys of the first TOTAL_BOUND + 1
            # matches in order (the page's query sorts every match anyway), then the page's rows.
            first = conn.execute(select(resources.c.res_id, *key_columns).where(where).order_by(*order)
                                 .limit(TOTAL_BOUND + 1)).all()
            total = len(first) if len(first) <= TOTAL_BOUND else None
            chosen = first[: request.count + 1]
            # Read by id in the same snapshot (read_connection): the rows the filtered query chose.
            found = {r.res_id: r for r in conn.execute(select(resources).where(
                resources.c.res_type == request.res_type, resources.c.res_id.in_([r.res_id for r in chosen]))
                ).all()} if chosen else {}
            rows = [found[r.res_id] for r in chosen]
            sort_keys = {r.res_id: [getattr(r, f"k{i}") for i in range(len(columns))] for r in chosen}
        else:
            total = self._total(conn, request, where)
            if request.summary_count or request.count == 0:
                patients = conn.execute(select(resources.c.patient_id).where(where).distinct().limit(100)).scalars()
                return SearchPage([], total, patient_ids=[p for p in patients if p])
            query = select(resources, *key_columns).where(where)
            if request.cursor:
                query = query.where(search_sql.after_keys(columns, request.cursor[0], backwards))
            rows = conn.execute(query.order_by(*order).limit(request.count + 1)).all()
            sort_keys = {r.res_id: [getattr(r, f"k{i}") for i in range(len(columns))] for r in rows}
        more = len(rows) > request.count
        rows = rows[: request.count]
        if backwards:
            rows.reverse()
        keys = [sort_keys[r.res_id] for r in rows]
        page = SearchPage([self._row(r) for r in rows], total)
        if rows:
            has_next = more if not backwards else True
            has_previous = (more if backwards else request.cursor is not None)
            page.next_keys = keys[-1] if has_next else None
            page.previous_keys = keys[0] if has_previous else None
        page.included = self._includes(conn, request, [r.res_id for r in rows])
        return page

    @staticmethod
    def _total(conn: Connection, request: search_sql.SearchRequest, where) -> int | None:
        """The number of matches: exact with _total=accurate or _summary=count; none with _total=none;
        otherwise exact up to TOTAL_BOUND and left out beyond it: a bounded count stops at
        TOTAL_BOUND + 1 rows, whatever the number of matches."""
        if request.summary_count or request.total == "accurate":
            return conn.execute(select(func.count()).select_from(resources).where(where)).scalar_one()
        if request.total == "none":
            return None
        bounded = conn.execute(select(func.count()).select_from(
            select(resources.c.res_id).where(where).limit(TOTAL_BOUND + 1).subquery())).scalar_one()
        return bounded if bounded <= TOTAL_BOUND else None

    def _includes(self, conn: Connection, request: search_sql.SearchRequest, ids: list[str]) -> list[StoredResource]:
        if not ids:
            return []
        found: dict[tuple[str, str], StoredResource] = {}
        for source_type, param, target_type in request.include:
            refs = select(search_reference.c.target_type, search_reference.c.target_id).where(
                search_reference.c.res_type == source_type, search_reference.c.param == param,
                search_reference.c.res_id.in_(ids))
            if target_type:
                refs = refs.where(search_reference.c.target_type == target_type)
            for t_type, t_id in conn.execute(refs.distinct()).all():
                self._add_visible(conn, found, t_type, [t_id])
        for source_type, param, target_type in request.revinclude:
            if target_type and target_type != request.res_type:
                continue
            sources = conn.execute(select(search_reference.c.res_id).where(
                search_reference.c.res_type == source_type, search_reference.c.param == param,
                search_reference.c.target_type == request.res_type,
                search_reference.c.target_id.in_(ids)).distinct()).scalars().all()
            self._add_visible(conn, found, source_type, list(sources))
        return list(found.values())

    def _add_visible(self, conn: Connection, found: dict, res_type: str, res_ids: list[str]) -> None:
        for start in range(0, len(res_ids), 500):
            rows = conn.execute(select(resources).where(
                resources.c.res_type == res_type, resources.c.res_id.in_(res_ids[start:start + 500]),
                resources.c.deleted.is_(False), self._visible(res_type))).all()
            for row in rows:
                found[(row.res_type, row.res_id)] = self._row(row)

    # -- the audit trail of reads ---------------------------------------------------------------

    def _audit_access(self, interaction: str, stored: StoredResource) -> None:
        if stored.patient_id is None:
            return  # the directory (professionals, organisations) is not patient data
        self.record_audit([self._event(interaction, stored.patient_id, stored.reference, flags_of=[stored])])

    def _audit_refused(self, interaction: str, res_type: str, res_id: str) -> None:
        """A read that found nothing the reader may see. The trail names the owner, if any, so the
        patient learns of the attempt; the reader gets the same answer as for a missing resource,
        in the same time: a read of nothing is recorded too (without a patient, in the gateway's
        trail), so that a forbidden and a missing resource cost the same work."""
        if res_type in DIRECTORY_TYPES:
            return
        with read_connection(self.engine) as conn:
            row = conn.execute(select(resources).where(resources.c.res_type == res_type,
                                                       resources.c.res_id == res_id)).first()
        outcome = audit.Outcome("4", "not found or not visible to this reader")
        if row is None or row.patient_id is None:
            self.record_audit([self._event(interaction, None, f"{res_type}/{res_id[:64]}", outcome=outcome)])
            return
        stored = self._row(row)
        self.record_audit([self._event(interaction, stored.patient_id, stored.reference, flags_of=[stored],
                                       outcome=outcome)])

    def _search_audit(self, conn: Connection, request: search_sql.SearchRequest, page: SearchPage
                      ) -> list["PendingAudit"]:
        """The AuditEvents of a search: one per patient it found or named."""
        query = search_sql.query_string(request)
        found = dict.fromkeys([s.patient_id for s in page.entries + page.included if s.patient_id] + page.patient_ids)
        named = [p for p in self._patients_named(conn, request) if p not in found]
        if not found and not named and request.res_type in DIRECTORY_TYPES:
            return []
        events = [self._event("search-type", patient_id, query=query) for patient_id in found]
        for patient_id in named:
            # A search about a record this reader may not open (blocked by the patient, never
            # authorised, record closed) is a refused attempt: the patient sees it as one.
            refused = self._visible_current("Patient", patient_id, conn) is None
            events.append(self._event("search-type", patient_id, query=query, outcome=audit.Outcome(
                "4", "the access rules refuse this reader the record") if refused else audit.SUCCESS))
        return events or [self._event("search-type", None, query=query)]

    def _patients_named(self, conn: Connection, request: search_sql.SearchRequest) -> list[str]:
        """The patients a search asks about by reference or identifier, found or not: a search that
        found nothing visible still belongs in the trail of the patient it was about."""
        ids, identifiers = [], []
        for criterion in request.criteria:
            if criterion.param not in ("patient", "subject") and not (request.res_type == "Patient"
                                                                      and criterion.param in ("_id", "identifier")):
                continue
            if criterion.chain_type not in (None, "Patient"):   # subject:Group.identifier names no patient
                continue
            for value in criterion.values:
                if criterion.chain == "identifier" or criterion.param == "identifier":
                    system, _, code = value.rpartition("|")
                    identifiers.append((system, code))
                elif criterion.chain is None:
                    ids.append(value.rstrip("/").rsplit("/", 1)[-1])
        if identifiers:
            conditions = [and_(unique_identifiers.c.value == code, *([unique_identifiers.c.system == system]
                                                                     if system else []))
                          for system, code in identifiers]
            ids += conn.execute(select(unique_identifiers.c.res_id).where(
                unique_identifiers.c.res_type == "Patient", or_(*conditions))).scalars().all()
        if not ids:
            return []
        return list(conn.execute(select(resources.c.res_id).where(
            resources.c.res_type == "Patient", resources.c.res_id.in_(ids))).scalars())

    @property
    def host(self) -> str:
        """The gateway's network name in the AuditEvents it writes."""
        return urlparse(self.base_url).hostname if self.base_url else audit.GATEWAY

    def _event(self, interaction: str, patient_id: str | None, entity: str | None = None, *,
               query: str | None = None, flags_of: list[StoredResource] = (),
               outcome: audit.Outcome = audit.SUCCESS) -> "PendingAudit":
        event = audit.audit_event(new_id(), _now()[0], interaction, self.access, patient_id=patient_id,
                                  entity=entity, query=query, outcome=outcome, host=self.host,
                                  requester_patient=self.requester_patient)
        return PendingAudit(event, patient_id, any(s.hidden_from_patient for s in flags_of),
                            any(s.hidden_from_representatives for s in flags_of))

    def record_audit(self, events: list["PendingAudit"]) -> None:
        if self.access.purpose in (EMERGENCY, REGULATION):
            # An emergency access is granted because no opposition is on record: that decision is
            # audited too, so the patient and the attending physician see it was made, and the
            # patient is told of it (R1111-48; UnitOfWork.store_audit).
            events = events + [replace(self._authorization("AuthZ-Consent", audit.SUCCESS, e.patient_id),
                                       emergency_access=True)
                               for e in events if e.patient_id and e.event["outcome"] == "0"]
        self._record(events)

    def _authorization(self, basis: str, outcome: audit.Outcome, patient_id: str | None) -> "PendingAudit":
        event = audit.authorization_event(new_id(), _now()[0], self.access, patient_id=patient_id, basis=basis,
                                          outcome=outcome, host=self.host)
        return PendingAudit(event, patient_id)

    def record_authorization(self, basis: str, outcome: audit.Outcome, patient_id: str | None = None) -> None:
        self._record([self._authorization(basis, outcome, patient_id)])

    def _record(self, events: list["PendingAudit"]) -> None:
        """AuditEvents of a read, written with the other reads' of the next group commit."""
        self.require(Write.RECORD)
        group_commit(self.engine).record(lambda conn: UnitOfWork(self, conn), events)

    # -- writes ---------------------------------------------------------------------------------

    def require(self, permission: Write) -> None:
        """Refuses (403) a requester who may not do this `Write`. Every unit of work is opened with
        it; a service that reads before it writes asks first, so the refusal comes before the read."""
        writes.require(self.access, permission)

    def unit_of_work(self, permission: Write) -> "UnitOfWork":
        """A unit of work in a transaction of its own, for a requester who may do this `Write`."""
        self.require(permission)
        return UnitOfWork(self)

    def write(self, work: Callable[["UnitOfWork"], T], permission: Write, *, alone: bool = False) -> T:
        """Run `work` in a unit of work of the next group commit, for a requester who may do this
        `Write`; its value once committed. `alone`: in a transaction of its own (GroupCommit.submit)."""
        return self.submit(work, permission, alone=alone).result()

    def submit(self, work: Callable[["UnitOfWork"], T], permission: Write, *, alone: bool = False,
               after: Pending | None = None) -> Pending[T]:
        """`write` without waiting for the commit (GroupCommit.submit): its `result()` does."""
        self.require(permission)
        return group_commit(self.engine).submit(lambda conn: UnitOfWork(self, conn), work, alone=alone, after=after)


@dataclass(frozen=True)
class PendingAudit:
    """An AuditEvent to write, with whose record it belongs to and whom it must not reveal a hidden
    document to (an access to a document hidden from the patient is hidden from them too)."""
    event: dict
    patient_id: str | None
    hidden_from_patient: bool = False
    hidden_from_representatives: bool = False
    emergency_access: bool = False   # an emergency access granted, which its patient is told of


# The width of unique_identifiers' and awaited_parents' system and value columns: PostgreSQL refuses
# a longer string (SQLite would keep it), and a business identifier that long is no identifier.
IDENTIFIER_CHARS = 256


def says_the_same(resource: dict, stored: dict | None) -> bool:
    """Whether a resource says what its stored version says, its meta aside. An update that says
    it writes no version (nor its index rows, rules and AuditEvent), as FHIR lets an update that
    changes nothing: a feed resends a patient's identity with every admission, a client retries a
    PUT whose answer it lost, a patient revokes a decision twice."""
    return stored is not None and ({k: v for k, v in resource.items() if k != "meta"}
                                   == {k: v for k, v in stored.items() if k != "meta"})


def _require_keepable(res_type: str, system: str, value: str) -> None:
    """An identifier the gateway can keep as a key, or a refusal that says which (its system, not
    its value: a patient's IPP is not written into a refusal that operators read)."""
    if len(system) > IDENTIFIER_CHARS or len(value) > IDENTIFIER_CHARS:
        named = system if len(system) <= 80 else system[:80] + "…"
        raise Refused(f"an identifier of the {res_type} (system {named}) is longer than the {IDENTIFIER_CHARS} "
                      "characters this gateway keeps for its system or its value")


class ChangedMeanwhile(Refused):
    """A resource changed between the read a change was made from and its write: written, the
    change would undo the other one (a mask lost to an archiving made from the version before)."""

    def __init__(self, reference: str):
        super().__init__(f"{reference} changed while this request was made from it: read it again and send it again",
                         location=reference.split("/", 1)[0], status=409, code="conflict")


class PreconditionFailed(Refused):
    """An update asked for with If-Match whose version is no longer the current one (FHIR's
    version-aware update: 412)."""

    def __init__(self, reference: str, version: int):
        super().__init__(f"If-Match names version {version} of {reference}, which is not its current version: "
                         "read it again", location=reference.split("/", 1)[0], status=412, code="conflict",
                         patient_text="il a été modifié entre-temps : rechargez la page et recommencez.")


class DuplicateIdentifier(Exception):
    def __init__(self, res_type: str, system: str, value: str, res_id: str):
        super().__init__(f"{res_type} with identifier {system}|{value} exists: {res_id}")
        self.res_type, self.system, self.value, self.res_id = res_type, system, value, res_id


@dataclass(frozen=True)
class Change:
    reference: str
    patient_id: str | None
    created: bool
    method: str
    hidden_from_patient: bool
    hidden_from_representatives: bool


class UnitOfWork:
    """One unit of work: resources, index rows, blobs, raw-input status and the AuditEvents of
    the changes, committed together. As a context manager it is one transaction of its own; the
    group commit (storage/commits.py) runs several in one transaction, each in a savepoint."""

    def __init__(self, repository: Repository, conn: Connection | None = None):
        self.repository = repository
        self._context = None
        self.conn: Connection | None = conn
        self.changes: list[Change] = []
        self.audit: list[PendingAudit] = []
        # What this unit has learnt of unique identifiers, and the ids it minted and has not saved
        # yet: no statement asks twice, and a resource under a fresh id has no previous version.
        # A concurrent claim of the same identifier still fails at its insert (the unique key).
        self._identifiers: dict[tuple[str, str, str], str | None] = {}
        self._minted: set[str] = set()
        # The labels of a DocumentReference saved before its new Binary, which takes them in its INSERT.
        self._binary_labels: dict[str, dict] = {}

    def __enter__(self) -> "UnitOfWork":
        self._context = write_transaction(self.repository.engine)
        self.conn = self._context.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                audit.extend_chain(self.conn, self.store_audit())
            except BaseException as failure:
                self._context.__exit__(type(failure), failure, failure.__traceback__)
                raise
        return self._context.__exit__(exc_type, exc, tb)

    def store_audit_so_far(self) -> None:
        """The AuditEvents of the changes made so far, stored and linked into the audit chain now: a
        unit that changes a whole record (a merge) holds neither them nor their JSON to its end.
        They are linked before the entries of the units before it in its batch: a chain orders its
        links, whatever the order their events were written in."""
        audit.extend_chain(self.conn, self.store_audit())

    def store_audit(self) -> list[tuple[str, str]]:
        """One AuditEvent per resource this unit changed (BALP names one data entity per event),
        stored with every pending one. Returns (id, JSON as stored) of each, for the hash chain."""
        repository = self.repository
        for change in self.changes:
            kind = {"PATCH": "patch", "DELETE": "delete"}.get(change.method) or ("create" if change.created else "update")
            event = audit.audit_event(new_id(), _now()[0], kind, repository.access, patient_id=change.patient_id,
                                      entity=change.reference, host=repository.host,
                                      requester_patient=repository.requester_patient)
            self.audit.append(PendingAudit(event, change.patient_id, change.hidden_from_patient,
                                           change.hidden_from_representatives))
        self.changes = []
        if not self.audit:
            return []
        bodies = self._insert_new([(p.event, p.patient_id, {
            "hidden_from_patient": p.hidden_from_patient, "hidden_from_representatives": p.hidden_from_representatives})
            for p in self.audit])
        stored = [(pending.event["id"], body) for pending, body in zip(self.audit, bodies)]
        self._queue_emergency_notices()
        self.audit = []
        return stored

    def _queue_emergency_notices(self) -> None:
        """"Your record was accessed in an emergency", queued for its patient with the first such
        access of the hour (services/notifications.py sends it): the trail showed each access, to a
        patient who came to read it, and nothing told them to."""
        granted = {p.patient_id: p.event["id"] for p in self.audit if p.emergency_access and p.patient_id}
        if not granted:
            return
        now = datetime.now(timezone.utc)
        for patient_id, event_id in granted.items():
            sql.QUEUE_EMERGENCY_NOTICE.execute(self.conn, {
                "event_id": event_id, "patient_id": patient_id, "key_patient": patient_id,
                "queued_at": _index_time(now), "since": _index_time(now - EMERGENCY_NOTICE_EVERY)})

    def _insert_new(self, new: list[tuple[dict, str | None, dict]]) -> list[str]:
        """Resources written for the first time under fresh ids (a transaction's AuditEvents), as
        one multi-row insert per table: no previous version to read, no index rows to delete.
        Returns their JSON as stored."""
        instant, index_time = _now()
        current, index = [], {}
        for resource, patient_id, columns in new:
            resource["meta"] = {**resource.get("meta", {}), "versionId": "1", "lastUpdated": instant}
            body = dumps(resource)
            current.append({"res_type": resource["resourceType"], "res_id": resource["id"], "version": 1,
                            "last_updated": index_time, "deleted": False, "patient_id": patient_id,
                            "blob_sha256": None, "body": body, "method": "POST", **columns})
            for kind, rows in index_rows(resource).items():
                index.setdefault(kind, []).extend(rows)
        sql.insert_together(self.conn, [(sql.INSERT_RESOURCE, current), *_index_parts(index)])
        return [row["body"] for row in current]

    def new_id(self) -> str:
        """A fresh id for a resource this unit creates: its first save reads no previous version."""
        minted = new_id()
        self._minted.add(minted)
        return minted

    def look_up_identifiers(self, keys: list[tuple[str, str, str]]) -> None:
        """The resources holding these (res_type, system, value), found in one statement for the
        look-ups of this unit that follow (find_by_identifier, claim_identifier): on PostgreSQL each
        was a round trip, about 0.1 ms of the gateway's CPU, and registering a document made five
        (its own, its patient's INS and IPP, its author's, their organisation's). At most
        LOOK_UP_TOGETHER of them; the others are looked up as they are asked for."""
        wanted = list(dict.fromkeys(key for key in keys if key not in self._identifiers))[:LOOK_UP_TOGETHER]
        if len(wanted) < 2:
            return
        params = {}
        for n, (res_type, system, value) in enumerate(wanted):
            params.update({f"key_type{n}": res_type, f"key_system{n}": system, f"key_value{n}": value})
        rows = sql.find_identifiers(len(wanted)).execute(self.conn, params).fetchall()
        found = {(res_type, system, value): res_id for res_type, system, value, res_id in rows}
        for key in wanted:
            self._identifiers[key] = found.get(key)

    def find_by_identifier(self, res_type: str, system: str, value: str) -> str | None:
        key = (res_type, system, value)
        if key not in self._identifiers:
            row = sql.FIND_IDENTIFIER.execute(self.conn, {"key_type": res_type, "key_system": system,
                                                          "key_value": value}).fetchone()
            self._identifiers[key] = row[0] if row else None
        return self._identifiers[key]

    def claim_identifier(self, res_type: str, system: str, value: str, res_id: str) -> None:
        """Record that this identifier belongs to res_id; a concurrent claim fails at commit or here."""
        _require_keepable(res_type, system, value)
        existing = self.find_by_identifier(res_type, system, value)
        if existing and existing != res_id:
            raise DuplicateIdentifier(res_type, system, value, existing)
        if not existing:
            sql.INSERT_IDENTIFIER.execute(self.conn, {"res_type": res_type, "system": system, "value": value,
                                                      "res_id": res_id})
            self._identifiers[(res_type, system, value)] = res_id

    def await_parent(self, system: str, value: str, docref_id: str) -> None:
        """This document replaces one that is not registered here, known by this identifier."""
        _require_keepable("DocumentReference", system, value)
        self._hold_document_identifier(system, value)
        sql.AWAIT_PARENT.execute(self.conn, {"system": system, "value": value, "res_type": "DocumentReference",
                                             "res_id": docref_id})

    def replacements_awaiting(self, system: str, value: str) -> list[str]:
        """The documents that replace the one with this identifier, registered before it."""
        self._hold_document_identifier(system, value)
        return [row[0] for row in sql.REPLACEMENTS_AWAITING.execute(
            self.conn, {"key_system": system, "key_value": value}).fetchall()]

    def _hold_document_identifier(self, system: str, value: str) -> None:
        """No other transaction looks for the replacements of this document identifier, or adds
        one, until this one ends: a version and its replacement stored at once by two processes
        then find each other (SQLite has one writer; PostgreSQL a lock)."""
        if self.conn.dialect.name == "postgresql":
            sql.LOCK_DOCUMENT_IDENTIFIER.execute(self.conn, {"key_system": system, "key_value": value}).close()

    def patient_record(self, patient_id: str | None) -> str | None:
        """The record a Patient found belongs to: itself, or the survivor it was merged into (A40).
        On PostgreSQL a merge holds its patient's record alone (`merging`) and this shares it to the
        commit: a message or document for the patient that arrives during the merge waits for it,
        then goes to the survivor's record, which the identifiers read before the merge ended did
        not name. SQLite's one writer orders them already, and its merged Patients' identifiers
        and ids are read after the merge."""
        if patient_id is None or self.conn.dialect.name != "postgresql":
            return patient_id
        sql.SHARE_PATIENT_RECORD.execute(self.conn, {"key_patient": patient_id}).close()
        row = sql.PATIENT_RECORD.execute(self.conn, {"key_id": patient_id}).fetchone()
        record = row[0] if row else patient_id
        if record != patient_id:
            self._identifiers.clear()   # the merge that ended meanwhile moved them to the survivor
        return record

    def own_patient_id(self) -> str | None:
        """The record a patient or representative token is about, as this unit sees it: the request
        looked it up before the unit began, and a merge (A40) may have moved that record into
        another since. What the patient decides or adds goes where the record is now, under the
        rules that apply to it, not under the merged patient, whose rules no longer do."""
        found = self.conn.execute(self.repository.access.own_record())
        return self.patient_record(found.scalar())

    def merging(self, patient_id: str) -> None:
        """Nothing is stored for this patient's record by another transaction until this unit ends
        (`patient_record`), so that the merge moves all of it."""
        if self.conn.dialect.name == "postgresql":
            sql.LOCK_PATIENT_RECORD.execute(self.conn, {"key_patient": patient_id}).close()

    def current(self, res_type: str, res_id: str, *, for_update: bool = False) -> StoredResource | None:
        """Its current version; `for_update`: locked until the unit commits, for a change made from it."""
        row = self.conn.execute(sql.CURRENT_FOR_UPDATE if for_update else sql.CURRENT,
                                {"key_type": res_type, "key_id": res_id}).first()
        return self.repository._row(row) if row else None

    def current_if_unchanged(self, resource: dict, patient_id: str | None) -> StoredResource | None:
        """The current version of the resource an update would write, if the update says what it
        says (`says_the_same`) in the same record: the update then writes nothing. Locked until the
        unit commits, so that a change made meanwhile is compared, not overwritten: of two equal
        updates at once, the second finds the first's version."""
        current = self.current(resource["resourceType"], resource["id"], for_update=True)
        if current is None or current.deleted or current.patient_id != patient_id \
                or not says_the_same(resource, current.json()):
            return None
        return current

    def visible_current(self, res_type: str, res_id: str) -> StoredResource | None:
        """The current version of a resource the requester may read (the read filter, in SQL), as
        this unit sees it."""
        row = self.conn.execute(select(resources).where(resources.c.res_type == res_type, resources.c.res_id == res_id,
                                                        self.repository._visible(res_type))).first()
        return self.repository._row(row) if row else None

    def look_at_record_alone(self, patient_id: str) -> None:
        """Another unit that looks at this record alone waits until this one ends (the record's
        Patient row, locked), so that what a patient adds twice at once (a decision, a contact, a
        file) is added once: the second finds the first. SQLite's one writer orders them already."""
        self.current("Patient", patient_id, for_update=True)

    def decision_in_force(self, consent: dict, patient_id: str) -> StoredResource | None:
        """The record's active Consent that decides what this one would (the access rules it gives:
        kind, effect, actors, the period they hold for), if any, the record looked at alone
        (`look_at_record_alone`)."""
        rules = rules_of(consent, patient_id)
        if not rules:
            return None
        actors = self._decisions_of_kind(patient_id, rules[0]["kind"], rules[0]["effect"])
        wanted = {(rule["actor_system"], rule["actor_value"]) for rule in rules}
        bounds = validity(consent)
        for consent_id in sorted(consent_id for consent_id, named in actors.items() if named == wanted):
            found = self.current("Consent", consent_id)
            if validity(found.json()) == bounds:
                return found
        return None

    def decisions_replaced_by(self, consent: dict, patient_id: str) -> list[StoredResource]:
        """The record's active Consents that a new decision decides again, which it replaces: of its
        kind, those about professionals that name one it names (whatever their effect; one that names
        others too is replaced for those it names, `consents.without_actors`), and every other one
        (one attending physician; one decision on consultation, on emergency access, on the record).
        Kept in force beside the new one, a block outlived the authorisation that followed it, and an
        opposition the permit that followed it."""
        rules = rules_of(consent, patient_id)
        if not rules:
            return []
        named = {(rule["actor_system"], rule["actor_value"]) for rule in rules}
        decisions = self._decisions_of_kind(patient_id, rules[0]["kind"])
        replaced = sorted(consent_id for consent_id, theirs in decisions.items()
                          if rules[0]["kind"] != "professional" or theirs & named)
        return [self.current("Consent", consent_id) for consent_id in replaced]

    def _decisions_of_kind(self, patient_id: str, kind: str, effect: str | None = None) -> dict[str, set]:
        """The record's active decisions of a kind (and effect): the actors each names (system,
        value), by Consent id; the record looked at alone (`look_at_record_alone`)."""
        self.look_at_record_alone(patient_id)
        query = select(access_rules.c.consent_id, access_rules.c.actor_system, access_rules.c.actor_value).where(
            access_rules.c.patient_id == patient_id, access_rules.c.kind == kind)
        if effect is not None:
            query = query.where(access_rules.c.effect == effect)
        actors: dict[str, set] = {}
        for consent_id, system, value in self.conn.execute(query):
            actors.setdefault(consent_id, set()).add((system, value))
        return actors

    def live_of_record(self, res_type: str, patient_id: str) -> list[StoredResource]:
        """The record's live resources of one type (a patient's few: their contacts), looked at
        alone (`look_at_record_alone`)."""
        self.look_at_record_alone(patient_id)
        rows = self.conn.execute(select(resources).where(resources.c.res_type == res_type,
                                                         resources.c.patient_id == patient_id,
                                                         resources.c.deleted.is_(False)).order_by(resources.c.res_id))
        return [self.repository._row(row) for row in rows]

    def readable_documents_holding(self, patient_id: str, sha256: str) -> list[StoredResource]:
        """The record's live DocumentReferences whose document is these bytes (their Binary's blob)
        and which the requester reads (the read filter, in SQL): what answers a requester names
        only what they may see."""
        bodies = self.conn.execute(select(resources.c.body).where(
            resources.c.blob_sha256 == sha256, resources.c.res_type == "Binary", resources.c.patient_id == patient_id,
            resources.c.deleted.is_(False))).scalars()
        references = [json.loads(body).get("securityContext", {}).get("reference", "") for body in bodies]
        found = [self.visible_current("DocumentReference", reference.split("/", 1)[1]) for reference in references
                 if reference.startswith("DocumentReference/")]
        return [document for document in found if document is not None and not document.deleted]

    def live_lists_naming(self, reference: str, patient_id: str) -> list[StoredResource]:
        """The record's live Lists (SubmissionSets, Folders) one of whose entries is this document."""
        target_type, target_id = reference.split("/", 1)
        naming = select(search_reference.c.res_id).where(
            search_reference.c.res_type == "List", search_reference.c.param == "item",
            search_reference.c.target_type == target_type, search_reference.c.target_id == target_id)
        rows = self.conn.execute(select(resources).where(
            resources.c.res_type == "List", resources.c.res_id.in_(naming), resources.c.patient_id == patient_id,
            resources.c.deleted.is_(False)).order_by(resources.c.res_id))
        return [self.repository._row(row) for row in rows]

    def document_binary(self, docref: StoredResource) -> StoredResource | None:
        """The Binary that holds a stored DocumentReference's document (a CDA's or a FHIR document's)."""
        return self.current("Binary", binary_ids(docref.json())[0])

    def save_binary(self, binary_id: str, docref_id: str, content_type: str, data: bytes, sha256: str,
                    patient_id: str, checked: Callable[[dict], dict], in_raw: Base64InRaw | None = None
                    ) -> StoredResource:
        """A document's bytes and their Binary, read through the rules of its DocumentReference.
        Saved after that DocumentReference, in the same unit, the new Binary takes its labels in
        its INSERT (`save`). `checked` is the caller's validation, which refuses in its own terms.
        `in_raw`: where the raw copy of the message that carried the document holds it in base64."""
        binary = checked({"resourceType": "Binary", "id": binary_id, "contentType": content_type,
                          "securityContext": {"reference": f"DocumentReference/{docref_id}"}})
        return self.save(binary, patient_id=patient_id, blob_sha256=self.store_blob(data, sha256, in_raw))

    def store_blob(self, data: bytes, sha256: str | None = None, in_raw: Base64InRaw | None = None) -> str:
        """Store bytes under their SHA-256 (`sha256`: computed before the transaction, so that no
        write lock is held while a large document is hashed), unless already stored. A document a
        message's raw copy holds in base64 (`in_raw`) is read from it, not written again: an
        MDM^T02's commit wrote its CDA twice, once in base64, and the database kept both."""
        digest = sha256 or hashlib.sha256(data).hexdigest()
        if in_raw is not None and in_raw.raw_size <= BLOB_PART and sql.INSERT_BLOB_IN_RAW.execute(self.conn, {
                "sha256": digest, "size": len(data), "no_data": b"", "at": in_raw.at, "length": in_raw.length,
                "raw_sha256": in_raw.raw_sha256, "raw_size": in_raw.raw_size}).fetchone():
            return digest
        view = memoryview(data)
        if sql.INSERT_BLOB.execute(self.conn, {"sha256": digest, "size": len(data),
                                               "data": view[:BLOB_PART]}).fetchone():
            # One part per statement: the drivers' copies of a value stay one part, not the document.
            for part, start in enumerate(range(BLOB_PART, len(data), BLOB_PART), start=1):
                sql.INSERT_BLOB_PART.execute(self.conn, {"sha256": digest, "part": part,
                                                         "data": view[start:start + BLOB_PART]})
        return digest

    def save(self, resource: dict, *, patient_id: str | None = None, blob_sha256: str | None = None,
             method: str | None = None, based_on: int | None = None) -> StoredResource:
        """Create or update: a new version, its history row, its index rows, the access facts it
        carries (a document's visibility, a Consent's rules), and a change for the audit trail.
        `based_on`: the version the change was made from, read before this unit; ChangedMeanwhile
        when another is current."""
        res_type = resource["resourceType"]
        # A resource under an id this unit minted is new: it has no previous version to read, and
        # nothing could name it yet (no signature of it to follow).
        minted_here = resource["id"] in self._minted
        self._minted.discard(resource["id"])
        columns: dict = {}
        if res_type == "DocumentReference":
            columns = {**visibility_columns(resource), "authors": self._authors(resource)}
            columns.update(self._hidden_as_signed(signed_ids(resource), columns))
        elif res_type == "Binary" and minted_here:
            columns = self._binary_labels.pop(resource["id"], {})
        stored = self._store(resource, patient_id=patient_id, blob_sha256=blob_sha256, method=method,
                             columns=columns, new=minted_here, based_on=based_on)
        if res_type == "DocumentReference":
            # The Binary is read through the same rules as the DocumentReference that points to it:
            # one saved already takes its labels by an UPDATE, a new one not saved yet in its INSERT.
            labels = _read_alike(columns)
            binaries = binary_ids(resource)
            self._binary_labels.update((res_id, labels) for res_id in binaries if res_id in self._minted)
            self._set_visibility([res_id for res_id in binaries if res_id not in self._minted], "Binary", columns)
            if not minted_here:
                self._follow_signatures(stored.res_id)
            self._announce(resource, patient_id, columns)
        if res_type == "Consent":
            if stored.version > 1:
                sql.DELETE_RULES.execute(self.conn, {"key_consent": stored.res_id})
            rows = rules_of(resource, patient_id) if patient_id else []
            if rows:
                sql.INSERT_RULES.executemany(self.conn, rows)
        self.changes.append(Change(stored.reference, patient_id, stored.version == 1,
                                   method or ("POST" if stored.version == 1 else "PUT"),
                                   bool(columns.get("hidden_from_patient")),
                                   bool(columns.get("hidden_from_representatives"))))
        return stored

    def _announce(self, docref: dict, patient_id: str | None, columns: dict) -> None:
        """Queue "a document was added to your record" for a document a professional or a feeding
        system stored, once the patient may see it: at its creation, or when the label that kept it
        from the patient until it was announced is removed. Once per document (the unique key); never
        for the patient's own documents, nor for a signature."""
        if (patient_id is None or self.repository.access.acts_for_patient or docref.get("status") != "current"
                or columns.get("hidden_from_patient") or signed_ids(docref)):
            return
        sql.QUEUE_NOTIFICATION.execute(self.conn, {"docref_id": docref["id"], "patient_id": patient_id,
                                                   "queued_at": _now()[1]})

    def _set_visibility(self, ids: list[str], res_type: str, columns: dict) -> None:
        """A DocumentReference's labels and authors (`_read_alike`) onto resources already saved
        that are read through the same rules."""
        values = _read_alike(columns)
        if not values:
            return
        for res_id in ids:
            sql.UPDATE_RESOURCE.execute(self.conn, {"key_type": res_type, "key_id": res_id, **values})

    def _hidden_as_signed(self, signed: list[str], own: dict) -> dict:
        """A signature names what it signs and carries its digest: it is hidden from whoever the
        signed documents are hidden from."""
        if not signed:
            return {}
        rows = self.conn.execute(select(*[resources.c[name] for name in VISIBILITY_COLUMNS]).where(
            resources.c.res_type == "DocumentReference", resources.c.res_id.in_(signed))).all()
        return {name: bool(own.get(name)) or any(getattr(row, name) for row in rows) for name in VISIBILITY_COLUMNS}

    def _follow_signatures(self, docref_id: str) -> None:
        """The signatures of a document whose labels changed take its visibility again."""
        signatures = self.conn.execute(sql.SIGNATURES_OF, {"key_id": docref_id}).all()
        for signature_id, body in signatures:
            signature = json.loads(body)
            signed = signed_ids(signature)
            if not signed:
                continue
            columns = self._hidden_as_signed(signed, visibility_columns(signature))
            self._set_visibility([signature_id], "DocumentReference", columns)
            self._set_visibility(binary_ids(signature), "Binary", columns)

    # -- who may change a document: decided here, with the rules of access/writes.py -------------

    def document_to_change(self, docref_id: str | None, patient_id: str | None, named: writes.Producers,
                           location: str) -> StoredResource:
        """The document a replacement or deletion names, if it is a live document of this patient that
        the requester may change (with a submission naming `named`). Another patient's document
        answers exactly as a missing one: the refusal names nothing the requester did not send."""
        stored = self.current("DocumentReference", docref_id, for_update=True) if docref_id else None
        if stored is None or stored.deleted or patient_id is None or stored.patient_id != patient_id:
            raise Refused("the document to replace or delete is not a registered document of this patient",
                          location=location, status=422, code="not-found")
        if not writes.may_change_document(self.repository.access, self.producers_of(stored.json()), named):
            raise Refused(writes.CHANGE_REFUSED, location=location, status=403, code="forbidden")
        return stored

    def folder_to_update(self, folder_id: str | None, patient_id: str, location: str) -> StoredResource:
        """The Folder an ITI-65 submission adds to, if it is a live Folder of this patient. Adding to
        a Folder is feeding the record (writes.Write.FEED, which the submission's unit holds): its
        sender need not read it. Locked until the unit commits, so that two updates of it come one
        after the other, the second one checked against the first."""
        stored = self.current("List", folder_id, for_update=True) if folder_id else None
        if stored is None or stored.deleted or stored.patient_id != patient_id or "folder" not in [
                c.get("code") for c in stored.json().get("code", {}).get("coding", [])]:
            raise Refused("the PUT names no Folder of this patient's record (by its id in the url, or by its "
                          "uniqueId)", location=location, status=422, code="not-found")
        return stored

    def require_labels(self, docref: dict, changed: set[str]) -> None:
        """Refuses a change of these visibility labels on a document the requester may not make."""
        producer = writes.may_change_document(self.repository.access, self.producers_of(docref), writes.Producers())
        masked_by_patient = bool(self.conn.execute(select(resources.c.masked_by_patient).where(
            resources.c.res_type == "DocumentReference", resources.c.res_id == docref["id"])).scalar())
        forbidden = changed - writes.changeable_labels(self.repository.access, producer, masked_by_patient)
        if forbidden:
            why = (": the patient masked the document from professionals, and only they or their representative "
                   "unmask it" if MASQUE_PS in forbidden and producer and masked_by_patient else "")
            raise Refused(f"the role {self.repository.access.role} may not change {', '.join(sorted(forbidden))}{why}",
                          location="DocumentReference.securityLabel", status=403, code="forbidden",
                          patient_text="votre compte ne permet pas de changer cette visibilité du document.")

    def producers_of(self, docref: dict) -> writes.Producers:
        """The authors of a stored document and the organisations behind it (its authors', its custodian)."""
        identifiers = [i for c in docref.get("contained", []) if c.get("resourceType") == "Organization"
                       for i in c.get("identifier", [])]
        custodian = docref.get("custodian", {}).get("reference", "")
        if custodian.startswith("Organization/"):
            found = self.current("Organization", custodian.split("/", 1)[1])
            identifiers += found.json().get("identifier", []) if found else []
        organizations = {f for f in (writes.finess(i.get("system", ""), i.get("value", "")) for i in identifiers) if f}
        return writes.Producers(frozenset(producer_ids(docref)), frozenset(organizations))

    def delete(self, stored: StoredResource) -> None:
        """Delete a resource: it leaves every search and read (410), its versions stay in the history."""
        key = {"key_type": stored.res_type, "key_id": stored.res_id}
        _, index_time = _now()
        archived = _archived(sql.PREVIOUS.execute(self.conn, key).fetchone())
        sql.ARCHIVE.executemany(self.conn, [archived])
        sql.UPDATE_RESOURCE.execute(self.conn, {**key, "version": archived["version"] + 1, "last_updated": index_time,
                                                "method": "DELETE", "deleted": True})
        self._delete_index_rows(stored.res_type, stored.res_id)
        self.changes.append(Change(stored.reference, stored.patient_id, False, "DELETE",
                                   stored.hidden_from_patient, stored.hidden_from_representatives))

    @staticmethod
    def _authors(docref: dict) -> str | None:
        """' idnatps idnatps ': the authors' national ids, so they keep seeing a masked document."""
        values = author_idnatps(docref)
        return (" " + " ".join(values) + " ")[:512] if values else None

    def _store(self, resource: dict, *, patient_id: str | None, method: str | None, columns: dict,
               new: bool, blob_sha256: str | None = None, based_on: int | None = None) -> StoredResource:
        res_type, res_id = resource["resourceType"], resource["id"]
        key = {"key_type": res_type, "key_id": res_id}
        previous = None if new else sql.PREVIOUS.execute(self.conn, key).fetchone()
        archived = _archived(previous) if previous else None
        kept = dict(zip(sql.KEPT, previous[len(sql.ARCHIVED):])) if previous else None
        if based_on is not None and (archived["version"] if archived else None) != based_on:
            raise ChangedMeanwhile(f"{res_type}/{res_id}")
        version = (archived["version"] + 1) if archived else 1
        if res_type == "DocumentReference":
            columns = {**columns, "masked_by_patient": self._masked_by_patient(resource, columns, kept)}
        instant, index_time = _now()
        resource.setdefault("meta", {})
        resource["meta"] = {**resource["meta"], "versionId": str(version), "lastUpdated": instant}
        body = dumps(resource)
        blob_sha256 = blob_sha256 or (kept["blob_sha256"] if kept else None)
        values = dict(version=version, last_updated=index_time, deleted=False, patient_id=patient_id,
                      blob_sha256=blob_sha256, body=body, method=method or ("PUT" if archived else "POST"), **columns)
        with pipelined(self.conn):
            if archived:
                # A new version: the row takes it and its index rows go; the version it replaces
                # goes to the history with the new index rows.
                sql.UPDATE_RESOURCE.execute(self.conn, {**key, **values})
                self._delete_index_rows(res_type, res_id)
            # A new resource has no index rows to delete (four DELETEs saved per resource), and its
            # row goes with its index rows.
            new_row = [] if archived else [{"res_type": res_type, "res_id": res_id, **values}]
            history = [archived] if archived else []
            sql.insert_together(self.conn, [(sql.INSERT_RESOURCE, new_row), (sql.ARCHIVE, history),
                                            *_index_parts(index_rows(resource))])
        return StoredResource(res_type, res_id, version, instant, body, False, blob_sha256, patient_id,
                              bool(columns.get("hidden_from_patient")), bool(columns.get("hidden_from_representatives")))

    def _masked_by_patient(self, docref: dict, columns: dict, previous: dict | None) -> bool:
        """Whether a document's MASQUE_PS is the patient's, which only they lift (require_labels):
        one they or their representative added, one the version before held as theirs, or one a new
        version took from a document it replaces (rules.with_replaced_masking) that held it so."""
        if not columns.get("masked"):
            return False
        if previous is not None:
            return bool(previous["masked_by_patient"]) if previous["masked"] else \
                self.repository.access.acts_for_patient
        return self.repository.access.acts_for_patient or self.masked_by_their_patient(related_ids(docref, "replaces"))

    def masked_by_their_patient(self, docref_ids: list[str]) -> bool:
        """Whether one of these documents holds a MASQUE_PS its patient set, which only they lift."""
        return bool(docref_ids and self.conn.execute(
            select(resources.c.res_id).where(resources.c.res_type == "DocumentReference",
                                             resources.c.res_id.in_(docref_ids), resources.c.masked_by_patient)
            .limit(1)).first())

    def _delete_index_rows(self, res_type: str, res_id: str) -> None:
        for statement in sql.DELETE_INDEX:
            statement.execute(self.conn, {"key_type": res_type, "key_id": res_id})

    def release_identifier(self, res_type: str, system: str, value: str) -> None:
        self.conn.execute(delete(unique_identifiers).where(
            unique_identifiers.c.res_type == res_type, unique_identifiers.c.system == system,
            unique_identifiers.c.value == value))
        self._identifiers[(res_type, system, value)] = None

    def move_identifiers(self, res_type: str, from_id: str, to_id: str) -> None:
        """Every identifier of one resource now names another (a patient merge)."""
        self.conn.execute(update(unique_identifiers).where(
            unique_identifiers.c.res_type == res_type, unique_identifiers.c.res_id == from_id).values(res_id=to_id))
        self._identifiers.clear()

    def live_patient_resources(self, patient_id: str) -> Iterator[list[StoredResource]]:
        """The current, not deleted, resources of a patient's compartment (documents, binaries,
        consents, lists), a page at a time, each locked until the unit commits: a merge writes each
        anew under the surviving patient. In the order of an index of their rows, from after the last
        one read: those moved meanwhile have left the patient, and the page's memory is all it takes."""
        after = None
        while True:
            query = select(resources).where(
                resources.c.patient_id == patient_id, resources.c.res_type.not_in(("Patient", "AuditEvent")),
                resources.c.deleted.is_(False))
            if after is not None:
                query = query.where(tuple_(resources.c.res_type, resources.c.last_updated, resources.c.res_id) > after)
            rows = self.conn.execute(query.order_by(resources.c.res_type, resources.c.last_updated, resources.c.res_id)
                                     .limit(PATIENT_PAGE).with_for_update()).all()
            if not rows:
                return
            after = (rows[-1].res_type, rows[-1].last_updated, rows[-1].res_id)
            yield [self.repository._row(r) for r in rows]

    def record_closed(self, patient_id: str) -> bool:
        return record_closed(self.conn, patient_id)

    def closures(self, patient_id: str) -> list[StoredResource]:
        """The active Consents that close the record: two after the merge of two closed records."""
        rows = sql.CLOSURES.execute(self.conn, {"key_patient": patient_id}).fetchall()
        return [self.current("Consent", consent_id) for consent_id, in rows]

    def reveal_audit_of(self, reference: str, hidden_from_patient: bool, hidden_from_representatives: bool) -> None:
        """AuditEvents about a document stop hiding it from those who may now see the document."""
        target_type, target_id = reference.split("/", 1)
        events = select(search_reference.c.res_id).where(
            search_reference.c.res_type == "AuditEvent", search_reference.c.param == "entity",
            search_reference.c.target_type == target_type, search_reference.c.target_id == target_id)
        values = {}
        if not hidden_from_patient:
            values["hidden_from_patient"] = False
        if not hidden_from_representatives:
            values["hidden_from_representatives"] = False
        if values:
            self.conn.execute(update(resources).where(resources.c.res_type == "AuditEvent",
                                                      resources.c.res_id.in_(events)).values(**values))

    def move_rest_of_record(self, from_id: str, to_id: str) -> None:
        """What of a merged patient's record the merge does not write anew now belongs to the
        survivor: its trail (an AuditEvent's JSON is never rewritten, its hash covers it), its deleted
        resources (deleted they stay, their versions as they were) and the patients merged into it
        before. Only the owner column moves: the survivor's rules read them, its destruction takes them.
        So do the announcements of its new documents not sent yet (the sender finds a record's
        accounts by its INS, which now names the survivor), and a destruction the merged patient
        requested, which would have lapsed when it came due (its record's closure, a Consent, moved
        to the survivor); where the survivor's own is pending too, the later date holds, so that
        neither record is destroyed before its time."""
        self.conn.execute(update(resources).where(resources.c.patient_id == from_id).values(patient_id=to_id))
        self.conn.execute(update(notifications).where(notifications.c.patient_id == from_id,
                                                      notifications.c.sent_at.is_(None)).values(patient_id=to_id))
        pending = (destruction_requests.c.carried_out_at.is_(None),)
        requested = self.conn.execute(select(destruction_requests.c.due_at).where(
            destruction_requests.c.patient_id == from_id, *pending)).scalar_one_or_none()
        if requested is None:
            return
        own = self.conn.execute(select(destruction_requests.c.due_at).where(
            destruction_requests.c.patient_id == to_id, *pending)).scalar_one_or_none()
        if own is None:
            self.conn.execute(delete(destruction_requests).where(destruction_requests.c.patient_id == to_id))
            self.conn.execute(update(destruction_requests).where(destruction_requests.c.patient_id == from_id)
                              .values(patient_id=to_id))
            return
        self.conn.execute(delete(destruction_requests).where(destruction_requests.c.patient_id == from_id, *pending))
        if requested > own:
            self.conn.execute(update(destruction_requests).where(destruction_requests.c.patient_id == to_id)
                              .values(due_at=requested))

    def request_destruction(self, patient_id: str, *, requested_at: str, requested_by: str, due_at: str) -> None:
        """The record is to be destroyed once `due_at` has come (`gateway retention run`); this
        request replaces the record's earlier one."""
        self.conn.execute(delete(destruction_requests).where(destruction_requests.c.patient_id == patient_id))
        self.conn.execute(insert(destruction_requests).values(
            patient_id=patient_id, requested_at=requested_at, requested_by=requested_by, due_at=due_at))

    def withdraw_destruction(self, patient_id: str) -> None:
        """The record's pending destruction request lapses (it was reopened)."""
        self.conn.execute(delete(destruction_requests).where(destruction_requests.c.patient_id == patient_id,
                                                             destruction_requests.c.carried_out_at.is_(None)))

    def store_raw(self, channel: str, body: bytes, content_type: str | None, sender: str | None, *,
                  message: dict | None = None, status: str = "received", outcome: dict | None = None,
                  ack: str | None = None, sha256: str | None = None, patient_identifiers: list[str] = ()) -> int:
        """Keep an input exactly as received (its body in blobs), with who submitted it (this unit's
        requester). `message` holds the HL7v2 keys (control_id, fingerprint, message_type)."""
        return sql.INSERT_RAW.execute(self.conn, dict(
            received_at=_now()[1], channel=channel, content_type=(content_type or "")[:128], sender=sender,
            requester=self.repository.access.serialized,
            sha256=self.store_blob(body, sha256), size=len(body), status=status,
            outcome=json.dumps(outcome, ensure_ascii=False) if outcome else None, ack=ack,
            patient_identifiers=json.dumps(patient_identifiers) if patient_identifiers else None, **(message or {}))
        ).fetchone()[0]

    def unanswered_copy(self, channel: str, body_sha256: str, sender: str | None) -> int | None:
        """An earlier copy of these bytes, sent by this sender and this unit's requester on this
        channel, never answered: its processing failed (the database went away, an internal error)
        or never ended (a crash, or another attempt still at work)."""
        row = sql.UNANSWERED_COPY.execute(self.conn, {
            "key_sha256": body_sha256, "key_channel": channel, "key_sender": sender,
            "key_requester": self.repository.access.serialized}).fetchone()
        return row[0] if row is not None else None

    def copy_raw(self, raw_id: int) -> int:
        """A new raw input, received now, with the same body, channel, sender and requester as `raw_id`."""
        return sql.COPY_RAW.execute(self.conn, {"key_raw": raw_id, "key_received_at": _now()[1]}).fetchone()[0]

    def earlier_inputs(self, sender: str | None, control_id: str) -> list:
        """Inputs already received from this sender under this control id, oldest first; no other
        transaction looks for them until this one ends (SQLite has one writer; PostgreSQL a lock)."""
        if self.conn.dialect.name == "postgresql":
            sql.LOCK_CONTROL_ID.execute(self.conn, {"key_sender": sender or "", "key_control": control_id}).close()
        return _earlier_inputs(self.conn, sender, control_id)

    def claim_raw(self, raw_id: int) -> bool:
        """Take a received (or failed) input for processing in this transaction. False when another
        process finished it first: its row lock, or SQLite's single writer, orders the two."""
        return sql.CLAIM_RAW.execute(self.conn, {"key_raw": raw_id}).rowcount == 1

    def record_outcome(self, raw_id: int, status: str, outcome: dict | None = None,
                       produced: list[str] | None = None, ack: str | None = None,
                       patient_identifiers: list[str] = ()) -> None:
        values = dict(status=status, outcome=json.dumps(outcome, ensure_ascii=False) if outcome else None,
                      resources=json.dumps(produced) if produced else None,
                      patient_identifiers=json.dumps(patient_identifiers) if patient_identifiers else None)
        if ack is not None:
            values["ack"] = ack
        sql.UPDATE_RAW.execute(self.conn, {"key_raw": raw_id, **values})


def _read_alike(columns: dict) -> dict:
    """What a DocumentReference's Binary (or a signature) shares of its row: its labels, and its
    authors, who still see it masked."""
    return {k: v for k, v in columns.items() if k in (*VISIBILITY_COLUMNS, "authors")}


def _archived(previous: tuple) -> dict:
    """The history's row of a resource's current version, from the row PREVIOUS read."""
    return dict(zip(sql.ARCHIVED, previous))


def _index_parts(rows_by_kind: dict[str, list[dict]]) -> list[tuple[sql.Prebuilt, list[dict]]]:
    return [(sql.INSERT_INDEX[kind], rows) for kind, rows in rows_by_kind.items()]


def _token_patient_state(engine: Engine, holder: AccessContext) -> tuple[str, str | None, bool] | None:
    """The Patient whose INS a token gives (a patient's, a representative's, an emergency's), their
    birth (search_date `low`) and whether they died (access.context.TOKEN_PATIENT_STATE)."""
    with read_connection(engine) as conn:
        found = conn.execute(text(TOKEN_PATIENT_STATE), {"reader_patient": holder.patient_ins or ""}).first()
    return (found[0], found[1], bool(found[2])) if found is not None else None


def blob_pieces(conn: Connection, sha256: str) -> Iterator[bytes]:
    """A blob's bytes in the parts it was stored in: its row's data, then its parts in order (a MiB
    each), each read alone, so that a caller writing them out holds one at a time; or a document's,
    decoded from the raw copy of the message that carried it. NotFound when there is no such blob."""
    row = conn.execute(select(blobs.c.size, blobs.c.data, blobs.c.base64_of, blobs.c.base64_at,
                              blobs.c.base64_length).where(blobs.c.sha256 == sha256)).first()
    if row is None:
        raise NotFound("document bytes are missing")
    size, first, base64_of, at, length = row
    del row   # each part let go once given
    if base64_of is not None:
        # A document read from the raw copy of its message (one row: under BLOB_PART bytes).
        carrier = conn.execute(select(blobs.c.data).where(blobs.c.sha256 == base64_of)).scalar_one_or_none()
        if carrier is None:
            raise NotFound("document bytes are missing")
        yield base64text.decode(memoryview(carrier)[at:at + length], padded=False)
        return
    complete = len(first) == size
    yield first
    del first
    if complete:
        return
    numbers = conn.execute(select(blob_parts.c.part).where(blob_parts.c.sha256 == sha256)
                           .order_by(blob_parts.c.part)).scalars().all()
    for number in numbers:
        yield conn.execute(select(blob_parts.c.data).where(
            blob_parts.c.sha256 == sha256, blob_parts.c.part == number)).scalar_one()


def blob_bytes(conn: Connection, sha256: str) -> bytes | None:
    """A blob's bytes, whole (None when there is no such blob)."""
    try:
        return b"".join(blob_pieces(conn, sha256))
    except NotFound:
        return None


def delete_blobs(conn: Connection, sha256s: list[str]) -> None:
    if sha256s:
        conn.execute(delete(blob_parts).where(blob_parts.c.sha256.in_(sha256s)))
        conn.execute(delete(blobs).where(blobs.c.sha256.in_(sha256s)))


def record_closed(conn: Connection, patient_id: str) -> bool:
    """Whether the patient closed the record (an active `record` Consent denies)."""
    return sql.RECORD_CLOSED.execute(conn, {"key_patient": patient_id}).fetchone() is not None


def new_id() -> str:
    """A new resource id: a UUID of version 7 (RFC 9562), which begins with its creation time. The
    index rows of resources created together then land on the same B-tree pages, at the end of
    each index; with random ids (version 4) every new row dirtied a page of its own, anywhere in
    the file: an ADT^A28 wrote 150–170 pages of 4 KB to SQLite's log, 110–130 with these."""
    return str(uuid7())


def earlier_messages(engine: Engine, sender: str, control_id: str) -> list:
    """Inputs already received from this sender under this control id, oldest first."""
    with read_connection(engine) as conn:
        return _earlier_inputs(conn, sender, control_id)


def _earlier_inputs(conn: Connection, sender: str | None, control_id: str) -> list:
    return conn.execute(sql.EARLIER_INPUTS, {"key_sender": sender, "key_control": control_id}).all()
