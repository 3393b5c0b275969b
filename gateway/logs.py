"""Structured JSON logs, one object a line, carrying the request id.

Health data stays out: log calls pass ids and outcomes, never names, identifiers or content.
"""
from __future__ import annotations

import contextvars
import json
import logging
import sys
import traceback
from datetime import datetime, timezone

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = request_id.get()
        if rid:
            entry["request_id"] = rid
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)

    def formatException(self, exc_info) -> str:
        """The traceback as Python prints it, each exception of the chain with its frames, but a
        database error's text reduced to what names no value (`_database_error`)."""
        chain, seen, failure = [], set(), exc_info[1]
        while failure is not None and id(failure) not in seen:
            seen.add(id(failure))
            chain.append(failure)
            failure = failure.__cause__ or (None if failure.__suppress_context__ else failure.__context__)
        parts = []
        for position, failure in enumerate(reversed(chain)):
            if position:
                parts.append("\nThe above exception was the direct cause of the following exception:\n\n"
                             if failure.__cause__ is not None else
                             "\nDuring handling of the above exception, another exception occurred:\n\n")
            parts += ["Traceback (most recent call last):\n", *traceback.format_tb(failure.__traceback__)]
            kind = type(failure).__qualname__
            if type(failure).__module__ != "builtins":
                kind = f"{type(failure).__module__}.{kind}"
            text = _database_error(failure)
            parts.append(f"{kind}: {str(failure) if text is None else text}\n")
        return "".join(parts).rstrip("\n")


def _database_error(failure: BaseException) -> str | None:
    """A database error's text without the values it may quote, or None for any other exception.
    PostgreSQL quotes them (a unique index's DETAIL names the key it refused; a type's error the
    input it could not read): its SQLSTATE and the constraint and table are kept. SQLAlchemy adds
    the statement, whose parameters stay hidden (`make_engine`). SQLite's messages quote none.
    The drivers and SQLAlchemy are looked up, not imported: their errors exist only once a database
    was opened, and a command that opens none (`gateway token issue`, which a conformance run calls
    for each identity) would start 0.4 s later."""
    sqlalchemy_exc, sqlite, psycopg = (sys.modules.get(name)
                                       for name in ("sqlalchemy.exc", "pysqlite3.dbapi2", "psycopg"))
    if sqlalchemy_exc is not None and isinstance(failure, sqlalchemy_exc.StatementError):
        orig = failure.orig
        described = (_database_error(orig) or type(orig).__name__) if orig is not None else "statement error"
        return f"{described} [SQL: {failure.statement}]"
    if psycopg is not None and isinstance(failure, psycopg.Error):
        if failure.sqlstate is None:   # raised by the client: the connection, not the data
            return str(failure).split("\n", 1)[0]
        diag = failure.diag
        named = [f"{name} {value}" for name, value in (("constraint", diag.constraint_name),
                                                      ("table", diag.table_name)) if value]
        return ", ".join([f"SQLSTATE {failure.sqlstate}", *named])
    if sqlite is not None and isinstance(failure, sqlite.Error):
        return str(failure)
    return None


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
