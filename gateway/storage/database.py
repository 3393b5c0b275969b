"""Engine creation and transactions for SQLite (embedded) and PostgreSQL."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Iterator

import pysqlite3.dbapi2 as sqlite
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from . import in_use
from .schema import metadata

log = logging.getLogger(__name__)

_sqlite_write_lock = threading.Lock()

# The gateway brings its own SQLite (pysqlite3-binary) rather than the one the OS ships: Debian 12's
# 3.40.1 plans `res_id IN (subquery) ... ORDER BY ... LIMIT` wrongly once statistics exist, and a
# patient's AuditEvent search then missed most of its entries. Versions older than the oldest one
# the tests ran on are refused.
MIN_SQLITE = (3, 50, 0)
SQLITE_VERSION = sqlite.sqlite_version
# Prepared statements a SQLite connection keeps (pysqlite3's default: 100). That cache ranks its
# statements by use and makes room by evicting the last, the one it added last among the least
# used: once a connection has run as many distinct statements as it holds, the statements it meets
# afterwards evict one another, and each is prepared again at each run. The gateway's statements,
# the tests' own among them, are about 300. An ADT^A28 whose statements were all prepared again at
# each run spent 3.8–4.0 ms of CPU under SQLite's write lock instead of 3.2–3.3. A statement kept
# costs about 7 KB.
SQLITE_PREPARED_STATEMENTS = 512
# How long a SQLite connection serves before it is replaced: it reads the planner's statistics when
# it opens, and never again. A new one opens in about 0.4 ms and prepares its statements again as it
# meets them (0.6 ms more for an ADT^A28's).
SQLITE_CONNECTION_SECONDS = 600


class UnsupportedDatabase(RuntimeError):
    """A database the gateway does not run on, said in a line for the operator."""


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names; None for another database, or one kept in memory."""
    if not url.startswith("sqlite"):
        return None
    path = url.split("///", 1)[-1]
    return Path(path) if path and path != ":memory:" else None


def make_engine(url: str) -> Engine:
    """The engine of a database URL. Its errors' text leaves out their statements' parameters
    (`hide_parameters`, as `statements.Prebuilt`'s errors do): names, identifiers and documents,
    which must not reach the logs."""
    if url.startswith("sqlite"):
        if sqlite.sqlite_version_info < MIN_SQLITE:
            raise UnsupportedDatabase(f"SQLite {SQLITE_VERSION} is older than "
                                      f"{'.'.join(map(str, MIN_SQLITE))}, whose query plans the gateway was tested with")
        file = sqlite_file(url)
        if file is not None:
            try:
                file.parent.mkdir(parents=True, exist_ok=True)
            except OSError as failure:   # a traceback, for a GATEWAY_VAR_DIR mistyped or not writable
                raise UnsupportedDatabase(f"the SQLite database's folder {file.parent} cannot be made: "
                                          f"{failure.strerror}") from None
        # A connection plans with the statistics it read when it opened, whoever took newer ones
        # (analyse_grown_tables): each is replaced once SQLITE_CONNECTION_SECONDS old, a file's only
        # (an in-memory database would be lost with it).
        engine = create_engine(url, module=sqlite, hide_parameters=True,
                               pool_recycle=SQLITE_CONNECTION_SECONDS if file is not None else -1,
                               connect_args={"check_same_thread": False, "timeout": 30,
                                             "cached_statements": SQLITE_PREPARED_STATEMENTS})
        _configure_sqlite(engine)
        if file is not None:
            _hold_while_open(engine, file)
        return engine
    scheme = url.partition("://")[0] if "://" in url else ""
    if scheme not in ("postgresql", "postgresql+psycopg"):
        # The scheme alone: the URL may hold a password.
        raise UnsupportedDatabase(f"the database URL ({scheme or 'no scheme'}) is neither SQLite's (sqlite:///PATH) "
                                  "nor PostgreSQL's (postgresql://USER@HOST/DATABASE)")
    if scheme == "postgresql":
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    # psycopg prepares a statement run five times, and PostgreSQL may then plan it once for any
    # values: a search's plan depends on the reader's (how many patients their grants list), and the
    # generic one read every document of a type (2.5 s where a custom plan takes 40 ms).
    try:
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10, hide_parameters=True,
                             connect_args={"options": "-c plan_cache_mode=force_custom_plan"})
    except (ArgumentError, ValueError) as exc:   # a port that is no number, a URL SQLAlchemy cannot parse
        raise UnsupportedDatabase(f"the database URL cannot be read: {exc}") from None


def _hold_while_open(engine: Engine, database: Path) -> None:
    """The engine's share of the database's in-use lock (`in_use`), from now until it is disposed
    of, and again from its next connection: `gateway restore` refuses while it is held."""
    hold = in_use.SharedHold(database)
    try:
        hold.take()
    except in_use.DatabaseInUse as refused:
        engine.dispose()
        raise UnsupportedDatabase(str(refused)) from None
    event.listen(engine, "connect", lambda _connection, _record: hold.take())
    event.listen(engine, "engine_disposed", lambda _engine: hold.release())
    weakref.finalize(engine, hold.release)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record):
        # Let SQLAlchemy emit BEGIN itself, so write transactions can take the lock up front.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed transaction survives a power loss; an ACK promises exactly that.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        # An ANALYZE samples each index (quick on a large file) and gives plans as good as a full one.
        cursor.execute("PRAGMA analysis_limit=1000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Connection):
        # BEGIN IMMEDIATE for writers: a deferred transaction that reads then writes can fail
        # with SQLITE_BUSY instead of waiting for the other writer.
        if conn.get_execution_options().get("writer"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


# How long an HTTP client is asked to wait (Retry-After) when the database is unavailable: a
# restart or a failover takes seconds.
RETRY_AFTER_SECONDS = 5


class NotRun(Exception):
    """A unit of work the group commit did not run: the database failed the one before it in its
    sequence (GroupCommit.submit). It passes as that failure does."""

    def __str__(self) -> str:
        return "not run: the database failed the unit of work before it"


def unavailable(failure: BaseException) -> bool:
    """Whether a failure is the database's and passing: it could not be reached, was restarted
    under a connection, or stayed busy (SQLite's lock beyond its timeout). An input it stopped is
    asked again (ACK AE, HTTP 503), never refused for good. A driver's own error counts too:
    raised outside SQLAlchemy's calls, on a connection that broke, it may reach the caller unwrapped.
    psycopg's errors exist only once a PostgreSQL engine has loaded it: it is not imported for this
    (95 ms at the start of every process, SQLite's included)."""
    psycopg = sys.modules.get("psycopg")
    return (isinstance(failure, (OperationalError, sqlite.OperationalError, NotRun))
            or (psycopg is not None and isinstance(failure, psycopg.OperationalError)))


def failure_reason(failure: BaseException) -> str:
    """The database's own words for a failure, its first line ("database or disk is full",
    "connection refused…"), for the operator's log: an operator told "database unavailable" looked
    for a database down when its disk was full. The driver's message names no statement parameter;
    SQLAlchemy's wrapping, which adds the statement, is left out."""
    cause = getattr(failure, "orig", None) or failure
    lines = str(cause).strip().splitlines()
    return lines[0][:200] if lines else type(cause).__name__


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


@contextlib.contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """One transaction for one unit of work: everything of it is committed, or nothing."""
    if not is_sqlite(engine):
        with engine.connect().execution_options(writer=True) as conn:
            with conn.begin():
                # A writer's statements find their rows by key, and one plan serves every value:
                # re-planning each of them (the sessions' force_custom_plan, which searches need)
                # cost PostgreSQL about a millisecond of CPU an ADT^A28.
                conn.exec_driver_sql("SET LOCAL plan_cache_mode = auto")
                yield conn
        return
    with _sqlite_write_lock, _writer_between_processes(engine):
        with engine.connect().execution_options(writer=True) as conn:
            with conn.begin():
                yield conn


@contextlib.contextmanager
def pipelined(conn: Connection) -> Iterator[None]:
    """PostgreSQL: the statements run in this block are sent without waiting for each one's
    answer (psycopg's pipeline mode), and their errors are raised at the end of the block at the
    latest, as SQLAlchemy's (an IntegrityError stays one). Only the driver's statements
    (`statements.Prebuilt`) belong in it: SQLAlchemy's own find no rows in pipeline mode. SQLite:
    as usual."""
    if is_sqlite(conn.engine):
        yield
        return
    try:
        with conn.connection.driver_connection.pipeline():
            yield
    except conn.dialect.loaded_dbapi.Error as failure:
        raise DBAPIError.instance(None, None, failure, conn.dialect.loaded_dbapi.Error,
                                  dialect=conn.dialect) from failure


@contextlib.contextmanager
def _writer_between_processes(engine: Engine) -> Iterator[None]:
    """SQLite's own write lock, waited for by another process (two MLLP listeners, the HTTP
    workers), is polled by its busy handler with sleeps of up to 100 ms: the second process's
    writers slept while the first's were done. An exclusive flock on a file beside the database is
    handed over by the kernel the moment it is released. Held only around write transactions (the
    thread lock above orders this process's own); BEGIN IMMEDIATE still guards against any other
    writer of the file. The file is opened for each transaction (microseconds beside a commit), so
    no descriptor outlives it or is shared with a forked process."""
    path = engine.url.database
    if not path or path == ":memory:":
        yield
        return
    descriptor = os.open(path + "-writer", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)   # releases the lock


@contextlib.contextmanager
def read_connection(engine: Engine, seconds: float | None = None) -> Iterator[Connection]:
    """A read transaction whose statements all see one snapshot: SQLite's read transaction gives
    that; PostgreSQL's READ COMMITTED would take a new one per statement, so it reads REPEATABLE READ
    (a page's rows are then read by id, as the filtered query chose them). With `seconds`, a
    statement still running after them is stopped (`timed_out` tells that failure): on PostgreSQL
    each statement gets that long (statement_timeout), on SQLite all of them together."""
    with engine.connect() as conn:
        if not is_sqlite(engine):
            conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            if seconds is None:
                yield conn
            elif is_sqlite(engine):
                deadline = time.monotonic() + seconds
                raw = conn.connection.driver_connection
                # Asked every SQLITE_STEPS virtual machine instructions; true stops the statement.
                raw.set_progress_handler(lambda: time.monotonic() > deadline, SQLITE_STEPS)
                try:
                    yield conn
                finally:
                    raw.set_progress_handler(None, 0)   # the connection goes back to the pool
            else:
                conn.execute(text(f"SET LOCAL statement_timeout = {max(1, round(seconds * 1000))}"))
                yield conn


# How often SQLite's progress handler looks at the clock: about every 0.1 ms of a statement's work.
SQLITE_STEPS = 10_000


def timed_out(failure: BaseException) -> bool:
    """Whether a failure is a statement stopped by read_connection's time limit (PostgreSQL's
    query_canceled, SQLite's interrupt), rather than the database being unavailable."""
    cause = getattr(failure, "orig", failure)
    return getattr(cause, "sqlstate", None) == "57014" or (
        isinstance(cause, sqlite.OperationalError) and str(cause) == "interrupted")


def ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def accepts_writes(engine: Engine, seconds: float = 2.0) -> None:
    """Raise unless a writer could start now: SQLite's write lock within `seconds`, or a PostgreSQL
    transaction id (a read-only server or a stalled one fails). Nothing is written."""
    if is_sqlite(engine):
        raw = engine.raw_connection()   # the driver's own connection: no transaction begun for us
        try:
            cursor = raw.cursor()
            cursor.execute(f"PRAGMA busy_timeout={int(seconds * 1000)}")
            try:
                cursor.execute("BEGIN IMMEDIATE")
                cursor.execute("ROLLBACK")
            finally:
                cursor.execute("PRAGMA busy_timeout=30000")
        finally:
            raw.close()
        return
    with engine.connect() as conn:
        with conn.begin():
            conn.execute(text(f"SET LOCAL statement_timeout = {int(seconds * 1000)}"))
            conn.execute(text("SELECT txid_current()"))


def disk_room(database: str | Path) -> int:
    """The bytes free on the disk of a SQLite database's file."""
    return shutil.disk_usage(Path(database).resolve().parent).free


def no_room(failure: BaseException) -> bool:
    """Whether a file's write failed for want of room: its disk is full (ENOSPC), or the account's
    quota on it is reached (EDQUOT). A temporary file's (TMPDIR) is a refusal to try again later."""
    return isinstance(failure, OSError) and failure.errno in (errno.ENOSPC, errno.EDQUOT)


def version(engine: Engine) -> str:
    """The database engine and its version, as /health and the logs say it."""
    if is_sqlite(engine):
        return f"SQLite {SQLITE_VERSION}"
    with engine.connect() as conn:
        return "PostgreSQL " + conn.execute(text("SHOW server_version")).scalar()


# The tables a search reads. PostgreSQL without their statistics planned the bench's searches of
# 100,000 documents 25 to 90 times slower: a patient's documents in 467 ms instead of 18, a month's
# page of a type in 2.2 s instead of 26 ms.
SEARCHED_TABLES = ("resources", "access_rules", "unique_identifiers", "search_token", "search_reference",
                   "search_date", "search_string")


def refresh_statistics(engine: Engine) -> None:
    """Give SQLite's query planner row statistics. Without them it may probe a search index by its
    value range instead of by resource, turning a 10 ms search into seconds at 10,000 documents.
    PostgreSQL keeps its own (autovacuum), except where none were ever taken or they were left
    behind: a database `pg_restore` or `pg_upgrade` made (which carry none), or one a first
    `gateway ingest` loaded. Its searched tables are analysed when one holds rows and has no
    statistics (all of the gateway's tables then): a look at its catalogue otherwise, at each start.
    Statistics that cannot be written are said and done without: on a full disk, the MLLP listener
    stopped at its start there, where it answers each message AE."""
    try:
        if not is_sqlite(engine):
            _analyse_if_never_analysed(engine)
            return
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
    except OperationalError as failure:
        log.warning("the database's statistics were not refreshed", extra={"reason": failure_reason(failure)})


def analyse_grown_tables(engine: Engine) -> None:
    """SQLite: the statistics of each table whose size changed tenfold since they were taken, or
    that was empty then, taken again (`PRAGMA optimize`). A gateway started on a new database kept
    the statistics of its start, its tables empty or holding the demo, for as long as it ran: at
    100,000 documents a patient's search planned with them took 35–40 ms, 12–16 ms with fresh ones.
    When nothing grew, the check costs about 0.1 ms. PostgreSQL's autovacuum analyses the tables
    that changed. The units whose commit led here are committed, and their callers answered as such:
    a failure is logged, never raised to them."""
    if not is_sqlite(engine):
        return
    try:
        with write_transaction(engine) as conn:
            # 0x10000: every table, not only those this connection read; 0x1: only say which it would
            # analyse (`ANALYZE "main"."resources"`), for the operator who sees the writers wait.
            # Even that takes SQLite's write lock: in a read transaction beside a writer it waited
            # on SQLite's busy handler (30 s, then failed), where here it queues as every writer does.
            grown = [statement.rpartition(".")[2].strip('"') for (statement,) in
                     conn.exec_driver_sql("PRAGMA optimize(0x10003)")]
            if not grown:
                return
            started = time.perf_counter()
            conn.exec_driver_sql("PRAGMA optimize=0x10002")
    except (DBAPIError, sqlite.Error, OSError) as failure:   # busy, a full disk, the writer's lock file
        log.warning("the database's statistics were not refreshed", extra={"reason": failure_reason(failure)})
        return
    except Exception:
        log.exception("the database's statistics were not refreshed")
        return
    log.info("statistics taken again of tables grown tenfold", extra={
        "tables": ", ".join(grown), "seconds": round(time.perf_counter() - started, 3)})


def _analyse_if_never_analysed(engine: Engine) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        analysed = set(conn.exec_driver_sql(
            "SELECT DISTINCT tablename FROM pg_stats WHERE schemaname = current_schema() "
            "AND tablename = ANY(%(tables)s)", {"tables": list(SEARCHED_TABLES)}).scalars())
        unanalysed = [table for table in SEARCHED_TABLES if table not in analysed
                      and conn.exec_driver_sql(f"SELECT EXISTS (SELECT 1 FROM {table})").scalar()]
        if not unanalysed:
            return
        started = time.perf_counter()
        conn.exec_driver_sql("ANALYZE " + ", ".join(table.name for table in metadata.sorted_tables))
    log.warning("PostgreSQL had no statistics on tables that hold rows (%s): a database restored by pg_restore, "
                "upgraded by pg_upgrade, or loaded for the first time; analysed in %.1f s",
                ", ".join(unanalysed), time.perf_counter() - started)
