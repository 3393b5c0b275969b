"""The logs carry no health data: a database error's text quotes the values it was given (the
statement's parameters, PostgreSQL's DETAIL of a refused key), and the formatter leaves them out
while keeping what an operator needs (the error, its SQLSTATE, constraint and table, the SQL)."""
import io
import json
import logging

import psycopg
import pysqlite3.dbapi2 as sqlite
from sqlalchemy.exc import DBAPIError

from gateway.logs import JsonFormatter

INS = "185067511204554"


def logged(failure: BaseException) -> dict:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("test_logs")
    log.addHandler(handler)
    try:
        try:
            raise failure
        except BaseException:
            log.exception("input failed")
    finally:
        log.removeHandler(handler)
    return json.loads(stream.getvalue())


def test_a_postgresql_error_is_logged_without_the_values_it_quotes():
    # What PostgreSQL answers an INSERT of a key that is there already: its DETAIL names the key.
    driver = psycopg.errors.UniqueViolation(
        'duplicate key value violates unique constraint "unique_identifiers_pkey"\n'
        f"DETAIL:  Key (system, value)=(urn:oid:1.2.250.1.213.1.4.10, {INS}) already exists.")
    try:
        raise driver
    except psycopg.Error as failure:
        wrapped = DBAPIError.instance("INSERT INTO unique_identifiers VALUES (%s, %s)",
                                      ("urn:oid:1.2.250.1.213.1.4.10", INS), failure, psycopg.Error)
        wrapped.__cause__ = failure
    text = logged(wrapped)["exception"]
    assert INS not in text
    assert "SQLSTATE 23505" in text and "INSERT INTO unique_identifiers" in text
    assert "The above exception was the direct cause" in text and "UniqueViolation" in text


def test_sqlite_errors_and_other_exceptions_keep_their_text():
    assert "database is locked" in logged(sqlite.OperationalError("database is locked"))["exception"]
    text = logged(RuntimeError("disk full"))["exception"]
    assert text.startswith("Traceback (most recent call last):") and text.endswith("\nRuntimeError: disk full")
