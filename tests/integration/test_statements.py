"""The write statements run on the driver's cursor (storage/statements.py) do what SQLAlchemy would
have done with them: a column's default is filled in, a literal the statement carries is sent, a
duplicate key is SQLAlchemy's IntegrityError (the group commit retries on it), and a missing
parameter is refused before anything runs."""
from collections import Counter

import pysqlite3.dbapi2 as sqlite
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from gateway.access import AccessContext
from gateway.access.audit import INSERT_LINK
from gateway.access.writes import Write
from gateway.storage import statements as sql
from gateway.storage.database import make_engine, read_connection, write_transaction
from gateway.storage.migrate import upgrade
from gateway.storage.repository import Repository
from gateway.storage.schema import audit_chain, raw_inputs, resources, search_date, search_token


def resource_row(res_id: str) -> dict:
    return {"res_type": "Organization", "res_id": res_id, "version": 1, "last_updated": "2026-01-01T00:00:00.000000",
            "deleted": False, "patient_id": None, "blob_sha256": None, "body": "{}"}


def test_a_column_left_out_takes_its_default_and_a_statement_s_literals_are_sent(database):
    engine = database[0]
    with write_transaction(engine) as conn:
        sql.INSERT_RESOURCE.executemany(conn, [resource_row("a"), resource_row("b")])
        raw_id = sql.INSERT_RAW.execute(conn, {"received_at": "2026-01-01T00:00:00", "channel": "test",
                                               "content_type": "", "sender": None, "sha256": "0" * 64,
                                               "size": 0, "status": "received"}).fetchone()[0]
        assert sql.CLAIM_RAW.execute(conn, {"key_raw": raw_id}).rowcount == 1
        assert sql.CLAIM_RAW.execute(conn, {"key_raw": raw_id}).rowcount == 0   # already processing
        assert tuple(sql.PREVIOUS.execute(conn, {"key_type": "Organization", "key_id": "a"}).fetchone()) == (
            "Organization", "a", 1, "2026-01-01T00:00:00.000000", "POST", False, "{}", None, False, False)
    with read_connection(engine) as conn:
        flags = conn.execute(select(resources.c.masked, resources.c.hidden_from_patient).where(
            resources.c.res_type == "Organization")).all()
        status = conn.execute(select(raw_inputs.c.status).where(raw_inputs.c.id == raw_id)).scalar_one()
    assert flags == [(False, False), (False, False)]
    assert status == "processing"


def test_a_duplicate_key_is_sqlalchemy_s_integrity_error_and_a_missing_key_runs_nothing(database):
    engine = database[0]
    with write_transaction(engine) as conn:
        sql.INSERT_RESOURCE.execute(conn, resource_row("a"))
    with pytest.raises(IntegrityError):
        with write_transaction(engine) as conn:
            sql.INSERT_RESOURCE.execute(conn, resource_row("a"))
    with pytest.raises(TypeError, match="key_raw"):
        with write_transaction(engine) as conn:
            sql.UPDATE_RAW.execute(conn, {"status": "processed"})


def test_many_rows_are_inserted_in_their_order(database):
    """PostgreSQL runs executemany as one INSERT of a JSON array of rows; the rows keep their
    order, which the audit chain's serial key records (each link follows the one before)."""
    engine = database[0]
    links = [{"chain": 3, "event_id": f"e{n:03d}", "previous_hash": f"h{n - 1}", "hash": f"h{n}"} for n in range(23)]
    with write_transaction(engine) as conn:
        INSERT_LINK.executemany(conn, links)
        sql.INSERT_RESOURCE.executemany(conn, [resource_row(f"r{n}") for n in range(9)])
    with read_connection(engine) as conn:
        stored = conn.execute(select(audit_chain.c.event_id, audit_chain.c.previous_hash, audit_chain.c.hash)
                              .where(audit_chain.c.chain == 3).order_by(audit_chain.c.seq)).all()
        count = conn.execute(select(func.count()).select_from(resources)).scalar_one()
    assert [tuple(row) for row in stored] == [(link["event_id"], link["previous_hash"], link["hash"]) for link in links]
    assert count == 9


def test_many_rows_keep_every_character_and_type_they_were_given(database):
    """The rows PostgreSQL receives as JSON come back as given: quotes, backslashes, escapes, text
    that looks like JSON or SQL, characters outside the BMP; booleans, integers and nulls."""
    engine = database[0]
    bodies = ['{"a":"quote \\" and backslash \\\\"}', "line\nbreak\ttab \u0001 control", "é ü 中文 😀 \u2028",
              "'); DROP TABLE resources; --", "\\u00e9 stays six characters", ""]
    rows = [{**resource_row(f"r{n}"), "body": body, "version": n + 1, "deleted": n % 2 == 1,
             "patient_id": None if n % 3 else f"p{n}"} for n, body in enumerate(bodies)]
    with write_transaction(engine) as conn:
        sql.INSERT_RESOURCE.executemany(conn, rows)
    with read_connection(engine) as conn:
        stored = conn.execute(select(resources.c.res_id, resources.c.body, resources.c.version, resources.c.deleted,
                                     resources.c.patient_id).order_by(resources.c.res_id)).all()
    assert [tuple(row) for row in stored] == [(row["res_id"], row["body"], row["version"], row["deleted"],
                                               row["patient_id"]) for row in rows]


def test_rows_of_bytes_are_not_sent_as_json(database, backend):
    """PostgreSQL: JSON has no bytes, so a table with a binary column is refused before anything
    runs rather than stored as text."""
    if backend == "sqlite":
        pytest.skip("SQLite runs executemany row by row")
    engine = database[0]
    with pytest.raises(TypeError, match="without bytes"):
        with write_transaction(engine) as conn:
            sql.INSERT_BLOB_PART.executemany(conn, [{"sha256": "0" * 64, "part": 1, "data": b"x"}])


def test_rows_for_several_tables_go_together_and_fail_together(database, backend, monkeypatch):
    """A resource's row and its index rows: one statement on PostgreSQL; rows keep their order in
    each table, and a duplicate key in any table stores nothing of the others."""
    engine = database[0]
    runs = []
    run = sql.Prebuilt._run
    monkeypatch.setattr(sql.Prebuilt, "_run", staticmethod(lambda *args: runs.append(1) or run(*args)))
    token = [{"res_type": "Organization", "res_id": "a", "param": "identifier", "system": "s", "code": f"c{n}"}
             for n in range(5)]
    date = [{"res_type": "Organization", "res_id": "a", "param": "date", "low": "2026", "high": "2027"}]
    with write_transaction(engine) as conn:
        sql.insert_together(conn, [(sql.INSERT_RESOURCE, [resource_row("a")]), (sql.INSERT_INDEX["token"], token),
                                   (sql.INSERT_INDEX["string"], []), (sql.INSERT_INDEX["date"], date)])
    assert len(runs) == (1 if backend == "postgresql" else 3)
    with pytest.raises(IntegrityError):
        with write_transaction(engine) as conn:
            sql.insert_together(conn, [(sql.INSERT_RESOURCE, [resource_row("b")]), (sql.INSERT_INDEX["token"], token),
                                       (sql.INSERT_RESOURCE, [resource_row("a")])])
    with read_connection(engine) as conn:
        ids = conn.execute(select(resources.c.res_id).order_by(resources.c.res_id)).scalars().all()
        codes = conn.execute(select(search_token.c.code).order_by(search_token.c.code)).scalars().all()
        dates = conn.execute(select(func.count()).select_from(search_date)).scalar_one()
    assert ids == ["a"] and codes == [f"c{n}" for n in range(5)] and dates == 1


def test_postgresql_plans_a_search_for_its_values_and_a_writer_s_statements_once(database, backend):
    """A search's best plan depends on its values (the patients a reader's grants list): PostgreSQL
    plans each run of it. A writer's statements find their rows by key: one plan serves them all.
    The writer's setting ends with its transaction, on a connection a search may take next."""
    if backend != "postgresql":
        pytest.skip("PostgreSQL's plan cache")
    engine = database[0]
    engine.dispose()     # one connection in the pool: the reader below takes the writer's
    mode = "SHOW plan_cache_mode"
    with read_connection(engine) as conn:
        assert conn.exec_driver_sql(mode).scalar() == "force_custom_plan"
    with write_transaction(engine) as conn:
        assert conn.exec_driver_sql(mode).scalar() == "auto"
    with read_connection(engine) as conn:
        assert conn.exec_driver_sql(mode).scalar() == "force_custom_plan"


def test_sqlite_prepares_the_statements_of_a_write_once(tmp_path, monkeypatch):
    """pysqlite3 keeps a connection's prepared statements in a cache that holds on to those it met
    first: once it is full, each statement met afterwards is prepared again at each run. The
    migrations' connections are closed, and a connection keeps more statements than the gateway
    runs, so a write after many reads prepares its statements once."""
    prepared = Counter()

    class Counting(sqlite.Connection):
        def __call__(self, statement):   # what the cache asks for a statement it does not hold
            prepared[statement] += 1
            return super().__call__(statement)

    connect = sqlite.connect
    monkeypatch.setattr(sqlite, "connect", lambda *args, **kwargs: connect(*args, factory=Counting, **kwargs))
    engine = make_engine(f"sqlite:///{tmp_path / 'gateway.db'}")
    upgrade(engine)
    assert engine.pool.checkedin() == 0
    with read_connection(engine) as conn:
        # More distinct statements than pysqlite3's default cache holds (100), as a worker's
        # searches, reads and writes of every kind are.
        for n in range(150):
            conn.exec_driver_sql(f"SELECT {n}").all()
    repo = Repository(engine, AccessContext.system("test"), "http://test")

    def write(n: int) -> None:
        repo.write(lambda uow: uow.save({"resourceType": "Organization", "id": f"org-{n}", "name": f"Org {n}"}),
                   Write.FEED)

    write(0)
    prepared.clear()
    for n in range(1, 4):
        write(n)
    assert engine.pool.checkedin() == 1     # every statement above ran on one connection
    assert not prepared, sorted(prepared)
    engine.dispose()
