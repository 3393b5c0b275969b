"""The statements every write runs, built once and run on the driver's own cursor.

Building a SQLAlchemy statement per call (select(...).where(...)) and deriving its cache key cost
about 0.2 ms each, more than running it: an ADT ran some sixty of them. Built once, a statement
still paid SQLAlchemy's per-execution work (cache lookup, parameter processing, result set-up):
56 of the 69 µs an INSERT took on SQLite, 113 of 298 µs on PostgreSQL. So each `Prebuilt` here is
compiled once per dialect and set of parameters, and run with the driver's execute or executemany
(on PostgreSQL, rows to insert go as one INSERT of a JSON array of rows).
CURRENT (and CURRENT_FOR_UPDATE), SIGNATURES_OF and EARLIER_INPUTS stay SQLAlchemy statements: their callers read rows by column name.
Bound parameters are named `key_*` (never a column's name, so an UPDATE takes its SET clause from
the other parameters).
"""
from __future__ import annotations

from operator import itemgetter
from typing import Any, Callable

import orjson
from sqlalchemy import Connection, String, bindparam, delete, insert, literal, or_, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement, Insert

from .schema import (
    EMERGENCY_ACCESS,
    INDEX_TABLE_BY_KIND,
    INDEX_TABLES,
    NEW_DOCUMENT,
    access_rules,
    awaited_parents,
    blob_parts,
    notifications,
    raw_inputs,
    resource_versions,
    resources,
    search_reference,
    unique_identifiers,
)


class Prebuilt:
    """A statement compiled once per (dialect, parameter names), run on the DBAPI cursor of the
    connection's transaction. What SQLAlchemy would add at execution is added once, at compile
    time: a column's scalar default, a value the statement carries (a literal in its WHERE); driver
    errors are raised as SQLAlchemy's (an IntegrityError stays one, for the group commit's retry)."""

    def __init__(self, statement: ClauseElement):
        self.statement = statement
        self._compiled: dict[tuple, tuple[str, tuple[str, ...] | None, dict[str, Any]]] = {}

    def _compile(self, conn: Connection, names: tuple[str, ...]):
        key = (conn.dialect.name, names)
        found = self._compiled.get(key)
        if found is None:
            compiled = self.statement.compile(dialect=conn.dialect, column_keys=list(names))
            table = getattr(self.statement, "table", None)
            defaults = {c.key: c.default.arg for c in (table.columns if table is not None else ())
                        if c.default is not None and c.default.is_scalar}
            fixed = {}
            for name, value in compiled.construct_params(_check=False).items():
                if name in names:
                    continue
                if name in defaults:
                    fixed[name] = defaults[name]
                elif compiled.binds[name].required:
                    raise TypeError(f"{self.statement} needs a value for {name}")
                else:
                    fixed[name] = value
            found = self._compiled[key] = (str(compiled), _picker(compiled.positiontup) if compiled.positional else None,
                                           fixed)
        return found

    @staticmethod
    def _arguments(pick, fixed: dict, params: dict):
        if fixed:
            params = {**fixed, **params}
        return pick(params) if pick is not None else params

    def execute(self, conn: Connection, params: dict):
        """Runs it once; returns the driver's cursor (rowcount, fetchone, fetchall)."""
        text, pick, fixed = self._compile(conn, tuple(sorted(params)))
        return self._run(conn, "execute", text, self._arguments(pick, fixed, params))

    def executemany(self, conn: Connection, rows: list[dict]) -> None:
        """Runs it for every row (all with the same parameter names) in one driver call."""
        if conn.dialect.name == "postgresql" and isinstance(self.statement, Insert):
            _insert_recordsets(conn, [(self, rows)])
            return
        text, pick, fixed = self._compile(conn, tuple(sorted(rows[0])))
        self._run(conn, "executemany", text, [self._arguments(pick, fixed, row) for row in rows]).close()

    def _compile_recordset(self, conn: Connection, names: tuple[str, ...]):
        """The INSERT of a JSON array of rows for these parameters (and the columns' defaults).
        PostgreSQL reads each value with its column's type. Rows are inserted in the array's order
        (ORDER BY ordinality), so a serial key numbers them as given: the audit chain's links are
        read back in that order."""
        key = ("recordset", conn.dialect.name, names)
        found = self._compiled.get(key)
        if found is None:
            _, _, fixed = self._compile(conn, names)
            table = self.statement.table
            columns = [c for c in table.columns if c.key in names or c.key in fixed]
            if any(c.key != c.name or c.type.python_type is bytes for c in columns):
                raise TypeError(f"{table.name}: rows go as JSON keyed by column name, without bytes")
            quote = conn.dialect.identifier_preparer.quote
            listed = ", ".join(quote(c.name) for c in columns)
            qualified = conn.dialect.identifier_preparer.format_table(table)
            text = (f"INSERT INTO {qualified} ({listed}) SELECT {listed} "
                    f"FROM json_populate_recordset(NULL::{qualified}, %s::json) WITH ORDINALITY AS given "
                    "ORDER BY ordinality")
            # SQLAlchemy names parameters with a str subclass, which orjson does not take as a key.
            found = self._compiled[key] = (text, {str(name): value for name, value in fixed.items()})
        return found

    @staticmethod
    def _run(conn: Connection, method: str, text: str, arguments):
        cursor = None
        try:
            # Opening the cursor fails too, on a connection the server closed.
            cursor = conn.connection.driver_connection.cursor()
            getattr(cursor, method)(text, arguments)
        except conn.dialect.loaded_dbapi.Error as failure:
            if cursor is not None:
                cursor.close()
            raise DBAPIError.instance(text, arguments, failure, conn.dialect.loaded_dbapi.Error,
                                      hide_parameters=True, dialect=conn.dialect) from failure
        return cursor


def _picker(names) -> Callable[[dict], tuple]:
    """A positional statement's arguments from its named parameters, picked in C: a generator
    over the names took 1.70 ms of CPU an ADT^A28 under SQLite's write lock, this 1.63–1.66 (runs
    alternated, in-process)."""
    if len(names) == 1:
        name = names[0]
        return lambda params: (params[name],)
    return itemgetter(*names) if names else (lambda params: ())


def insert_together(conn: Connection, parts: list[tuple[Prebuilt, list[dict]]]) -> None:
    """Rows for several tables (a resource's row and its index rows): on PostgreSQL in one
    statement, elsewhere one executemany per table."""
    parts = [(statement, rows) for statement, rows in parts if rows]
    if conn.dialect.name != "postgresql":
        for statement, rows in parts:
            statement.executemany(conn, rows)
    elif parts:
        _insert_recordsets(conn, parts)


# The statement of each combination of tables and parameters _insert_recordsets has run.
_RECORDSETS: dict[tuple[str, ...], str] = {}


def _insert_recordsets(conn: Connection, parts: list[tuple[Prebuilt, list[dict]]]) -> None:
    """PostgreSQL: each table's rows in one INSERT … SELECT FROM json_populate_recordset(the rows
    as one JSON array), in their order; several tables' INSERTs as data-modifying WITH queries of
    one statement. psycopg's executemany runs each call in a pipeline of its own, one statement per
    row; a multi-row VALUES list is a new, long text for each number of rows, which psycopg parses
    again each time (it remembers only texts under 4 KB and 50 parameters). This text is the same
    for any number of rows: parsed once, and prepared by the server. Its parameters are one string
    a table, which orjson writes in C: an array per column went through psycopg's Python code for
    lists, about a third of a search's AuditEvent's CPU in the gateway. And each statement costs
    the driver and the server more than a few more rows do (an ADT^A28 ran 36 statements, 24 this
    way)."""
    compiled = [(statement._compile_recordset(conn, tuple(sorted(rows[0]))), rows) for statement, rows in parts]
    texts = tuple(part_text for (part_text, _), _ in compiled)
    text = _RECORDSETS.get(texts)
    if text is None:
        *earlier, last = texts
        withs = ", ".join(f"part{n} AS ({t})" for n, t in enumerate(earlier))
        text = _RECORDSETS[texts] = f"WITH {withs} {last}" if earlier else last
    Prebuilt._run(conn, "execute", text, tuple(_rows_json(fixed, rows) for (_, fixed), rows in compiled)).close()


def _rows_json(fixed: dict, rows: list[dict]) -> str:
    """Rows as one JSON array, each with the columns' defaults its statement sends."""
    return orjson.dumps([{**fixed, **row} for row in rows] if fixed else rows).decode()


def _keyed(table):
    return (table.c.res_type == bindparam("key_type")) & (table.c.res_id == bindparam("key_id"))


CURRENT = select(resources).where(_keyed(resources))
# The current row of a resource a unit changes: locked until it commits (PostgreSQL; SQLite's
# writer is alone), so that a second writer of it reads the version the first one wrote. Two
# units that read the same version both wrote the next one, and the second failed (a 500).
CURRENT_FOR_UPDATE = CURRENT.with_for_update()
# The current row of a resource a new version replaces: what the history keeps of it (each of the
# history's columns, its row's column of that name), then what the new version keeps of it (its
# blob, and whose its mask is).
ARCHIVED = tuple(str(column.name) for column in resource_versions.columns)   # plain str: orjson keys
KEPT = ("blob_sha256", "masked", "masked_by_patient")
PREVIOUS = Prebuilt(select(*[resources.c[name] for name in (*ARCHIVED, *KEPT)]).where(_keyed(resources))
                    .with_for_update())
INSERT_RESOURCE = Prebuilt(insert(resources))
UPDATE_RESOURCE = Prebuilt(update(resources).where(_keyed(resources)))
# The current version goes to the history as a new one replaces it, inserted as the row PREVIOUS
# read. An INSERT … SELECT of it opens a statement journal, which SQLite, on closing it inside the
# unit's savepoint, truncates by walking the savepoint's journal from its start: a unit's time grew
# with the square of the resources it changed (a merge of 11,800 resources, 66 s; 12 s this way).
ARCHIVE = Prebuilt(insert(resource_versions))
INSERT_INDEX = {kind: Prebuilt(insert(table)) for kind, table in INDEX_TABLE_BY_KIND.items()}
DELETE_INDEX = tuple(Prebuilt(delete(table).where(_keyed(table))) for table in INDEX_TABLES)

FIND_IDENTIFIER = Prebuilt(select(unique_identifiers.c.res_id).where(
    unique_identifiers.c.res_type == bindparam("key_type"), unique_identifiers.c.system == bindparam("key_system"),
    unique_identifiers.c.value == bindparam("key_value")))
INSERT_IDENTIFIER = Prebuilt(insert(unique_identifiers))
# The statement that finds several identifiers at once (find_identifiers), for each number of them.
_FIND_IDENTIFIERS: dict[int, Prebuilt] = {}


def find_identifiers(count: int) -> Prebuilt:
    """The (res_type, system, value, res_id) of each of `count` identifiers a resource holds; the
    keys are bound as key_type0, key_system0, key_value0, key_type1…"""
    found = _FIND_IDENTIFIERS.get(count)
    if found is None:
        c = unique_identifiers.c
        found = _FIND_IDENTIFIERS[count] = Prebuilt(select(c.res_type, c.system, c.value, c.res_id).where(or_(*[
            (c.res_type == bindparam(f"key_type{n}")) & (c.system == bindparam(f"key_system{n}"))
            & (c.value == bindparam(f"key_value{n}")) for n in range(count)])))
    return found


# The documents that replace one known to them only by its identifier (schema.awaited_parents).
AWAIT_PARENT = Prebuilt(insert(awaited_parents))
REPLACEMENTS_AWAITING = Prebuilt(select(awaited_parents.c.res_id).where(
    awaited_parents.c.system == bindparam("key_system"), awaited_parents.c.value == bindparam("key_value"),
    awaited_parents.c.res_type == "DocumentReference"))
# PostgreSQL: one transaction at a time looks for (and adds) the replacements of a document
# identifier (an advisory lock, key 7_110_115 and the identifier's hash), so that a version and its
# replacement stored at once by two processes do not both find the other absent.
LOCK_DOCUMENT_IDENTIFIER = Prebuilt(text(
    "SELECT pg_advisory_xact_lock(7110115, hashtext(:key_system || '|' || :key_value))"))
# A patient's record: a merge of it holds it alone, whatever is stored for the patient shares it.
LOCK_PATIENT_RECORD = Prebuilt(text("SELECT pg_advisory_xact_lock(7110116, hashtext(:key_patient))"))
SHARE_PATIENT_RECORD = Prebuilt(text("SELECT pg_advisory_xact_lock_shared(7110116, hashtext(:key_patient))"))
# The record a Patient belongs to: itself, or the survivor of a merge.
PATIENT_RECORD = Prebuilt(select(resources.c.patient_id).where(
    resources.c.res_type == "Patient", resources.c.res_id == bindparam("key_id")))

# A Consent's rules, replaced with each of its versions.
DELETE_RULES = Prebuilt(delete(access_rules).where(access_rules.c.consent_id == bindparam("key_consent")))
INSERT_RULES = Prebuilt(insert(access_rules))
# The Consents that close a record (an active `record` Consent denies): whether there is one, and
# each of them (two after the merge of two closed records).
_CLOSURES = select(access_rules.c.consent_id).where(
    access_rules.c.patient_id == bindparam("key_patient"), access_rules.c.kind == "record",
    access_rules.c.effect == "deny")
RECORD_CLOSED = Prebuilt(_CLOSURES.limit(1))
CLOSURES = Prebuilt(_CLOSURES)
# "A document was added to your record", queued once per document.
QUEUE_NOTIFICATION = Prebuilt(text("INSERT INTO notifications (about_id, kind, patient_id, queued_at) "
                                   f"VALUES (:docref_id, '{NEW_DOCUMENT}', :patient_id, :queued_at) "
                                   "ON CONFLICT (about_id) DO NOTHING"))
# "Your record was accessed in an emergency", queued with the first such access of the hour: a
# break-the-glass reading for twenty minutes is one notice. The patient is two parameters: PostgreSQL
# gives a parameter one type, and deduced text in the select list against varchar in the comparison.
QUEUE_EMERGENCY_NOTICE = Prebuilt(insert(notifications).from_select(
    ["about_id", "kind", "patient_id", "queued_at"],
    select(bindparam("event_id", type_=String), literal(EMERGENCY_ACCESS, String),
           bindparam("patient_id", type_=String), bindparam("queued_at", type_=String))
    .where(~select(notifications.c.id).where(
        notifications.c.patient_id == bindparam("key_patient"),
        notifications.c.kind == EMERGENCY_ACCESS, notifications.c.queued_at > bindparam("since")).exists())))

# A blob's first part, unless a blob of that digest is stored already: the row comes back only when
# inserted (one statement where a look-up and an insert were two; a concurrent writer of the same
# bytes waits for the first one's commit instead of failing on its key).
INSERT_BLOB = Prebuilt(text("INSERT INTO blobs (sha256, size, data) VALUES (:sha256, :size, :data) "
                            "ON CONFLICT (sha256) DO NOTHING RETURNING sha256"))
INSERT_BLOB_PART = Prebuilt(insert(blob_parts))
# A document read from the raw copy of the message that carried it in base64, if that raw copy is
# stored as expected (its size, its bytes its own) and no blob of the document's digest is.
INSERT_BLOB_IN_RAW = Prebuilt(text(
    "INSERT INTO blobs (sha256, size, data, base64_of, base64_at, base64_length) "
    "SELECT :sha256, :size, :no_data, sha256, :at, :length FROM blobs "
    "WHERE sha256 = :raw_sha256 AND size = :raw_size AND base64_of IS NULL "
    "ON CONFLICT (sha256) DO NOTHING RETURNING sha256"))

# The signatures (DocumentReferences related by "signs") that name a document.
SIGNATURES_OF = select(resources.c.res_id, resources.c.body).where(
    resources.c.res_type == "DocumentReference", resources.c.res_id.in_(
        select(search_reference.c.res_id).where(
            search_reference.c.res_type == "DocumentReference", search_reference.c.param == "relatesto",
            search_reference.c.target_id == bindparam("key_id"))))

INSERT_RAW = Prebuilt(insert(raw_inputs).returning(raw_inputs.c.id))
# A raw input never answered: its processing failed, or has not ended. Only such an input is claimed
# for processing, so only such a copy is taken up by a document sent again.
_UNANSWERED = or_(raw_inputs.c.status == "received", raw_inputs.c.status == "failed")
CLAIM_RAW = Prebuilt(update(raw_inputs).where(raw_inputs.c.id == bindparam("key_raw"), _UNANSWERED)
                     .values(status="processing"))
UPDATE_RAW = Prebuilt(update(raw_inputs).where(raw_inputs.c.id == bindparam("key_raw")))
# The oldest copy of these bytes, from this sender and requester on this channel, that was never
# answered.
UNANSWERED_COPY = Prebuilt(select(raw_inputs.c.id).where(
    raw_inputs.c.sha256 == bindparam("key_sha256"), raw_inputs.c.channel == bindparam("key_channel"),
    raw_inputs.c.sender.is_not_distinct_from(bindparam("key_sender")),
    raw_inputs.c.requester == bindparam("key_requester"), _UNANSWERED
).order_by(raw_inputs.c.id).limit(1))
# Another raw input with the same body as an earlier one (its blob is already stored).
_COPIED = ("channel", "content_type", "sender", "requester", "sha256", "size")
COPY_RAW = Prebuilt(insert(raw_inputs).from_select(
    ["received_at", "status", *_COPIED],
    select(bindparam("key_received_at", type_=raw_inputs.c.received_at.type), literal("received"),
           *(raw_inputs.c[name] for name in _COPIED)).where(raw_inputs.c.id == bindparam("key_raw"))
).returning(raw_inputs.c.id))
# A sender's inputs under a control id, oldest first.
EARLIER_INPUTS = (select(raw_inputs.c.id, raw_inputs.c.fingerprint, raw_inputs.c.status, raw_inputs.c.outcome,
                         raw_inputs.c.ack)
                  .where(raw_inputs.c.sender == bindparam("key_sender"),
                         raw_inputs.c.control_id == bindparam("key_control"))
                  .order_by(raw_inputs.c.id))
# PostgreSQL: one sender's control id at a time (an advisory lock, key 7_110_114 and the pair's
# hash), so that two processes given the same message at once do not both find no copy of it.
LOCK_CONTROL_ID = Prebuilt(text("SELECT pg_advisory_xact_lock(7110114, hashtext(:key_sender || '|' || :key_control))"))

# A group commit's unit of work runs in a savepoint of the batch's transaction (units never nest).
SAVEPOINT = Prebuilt(text("SAVEPOINT unit_of_work"))
ROLLBACK_TO_SAVEPOINT = Prebuilt(text("ROLLBACK TO SAVEPOINT unit_of_work"))
RELEASE_SAVEPOINT = Prebuilt(text("RELEASE SAVEPOINT unit_of_work"))
