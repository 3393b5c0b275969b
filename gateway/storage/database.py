"""Engine creation and transactions for SQLite (embedded) and PostgreSQL."""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Iterator

from sqlalchemy import Connection, Engine, create_engine, event, text

_sqlite_write_lock = threading.Lock()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        _configure_sqlite(engine)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


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
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Connection):
        # BEGIN IMMEDIATE for writers: a deferred transaction that reads then writes can fail
        # with SQLITE_BUSY instead of waiting for the other writer.
        if conn.get_execution_options().get("writer"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


@contextlib.contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """One transaction for one unit of work: everything of it is committed, or nothing."""
    lock = _sqlite_write_lock if is_sqlite(engine) else contextlib.nullcontext()
    with lock:
        with engine.connect().execution_options(writer=True) as conn:
            with conn.begin():
                yield conn


@contextlib.contextmanager
def read_connection(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as conn:
        with conn.begin():
            yield conn


def ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def refresh_statistics(engine: Engine) -> None:
    """Give SQLite's query planner row statistics. Without them it may probe a search index by its
    value range instead of by resource, turning a 10 ms search into seconds at 10,000 documents.
    PostgreSQL keeps its own (autovacuum): nothing to do there, and nothing added to its start-up."""
    if not is_sqlite(engine):
        return
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA analysis_limit=1000")  # sampled: quick even on large files
        conn.exec_driver_sql("ANALYZE")
        conn.commit()
