"""The group commit: units of work submitted together share one transaction; one that fails is
rolled back alone; each caller gets its answer only once its data is committed; the audit chain
verifies after concurrent batches."""
import fcntl
import logging
import os
import threading
import time

import pytest
from sqlalchemy import Connection, event, func, select, text
from sqlalchemy.exc import IntegrityError

from gateway import metrics
from gateway.access import AccessContext
from gateway.access.writes import Write
from gateway.access import audit
from gateway.access.audit import verify_chain
from gateway.refusal import Refused
from gateway.storage import statements as sql
from gateway.storage import commits
from gateway.storage.commits import group_commit
from gateway.storage.database import read_connection
from gateway.storage.repository import Repository
from gateway.storage.schema import resources

UNITS = 8


def organization(n: int) -> dict:
    return {"resourceType": "Organization", "id": f"org-{n}", "name": f"Organisation {n}"}


def stored_ids(engine) -> set[str]:
    with read_connection(engine) as conn:
        return set(conn.execute(select(resources.c.res_id).where(resources.c.res_type == "Organization")).scalars())


def test_units_submitted_together_share_a_transaction_and_a_failing_one_is_rolled_back_alone(database):
    engine = database[0]
    repo = Repository(engine, AccessContext.system("test"), "http://test")
    committer = group_commit(engine)
    commits = []
    event.listen(engine, "commit", lambda conn: commits.append(1))
    first_running, release = threading.Event(), threading.Event()
    answers: dict[int, object] = {}
    committed_when_answered: dict[int, bool] = {}

    def unit(n: int):
        def work(uow):
            if n == 0:
                # Hold the first batch open until every other unit waits for the next one.
                first_running.set()
                assert release.wait(30)
            uow.save(organization(n))
            if n == 5:
                raise Refused("this unit is refused", location="Organization.name")
            return n
        return work

    def submit(n: int) -> None:
        try:
            answers[n] = repo.write(unit(n), Write.FEED)
            committed_when_answered[n] = f"org-{n}" in stored_ids(engine)
        except Refused as refusal:
            answers[n] = refusal

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(UNITS)]
    threads[0].start()
    assert first_running.wait(30)
    for thread in threads[1:]:
        thread.start()
    deadline = time.monotonic() + 30
    while len(committer._waiting) < UNITS - 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(committer._waiting) == UNITS - 1
    commits.clear()
    release.set()
    for thread in threads:
        thread.join(60)
    # The first batch, then one for the seven that waited (the engine's commit events also count
    # the read transactions of the callers' checks).
    writing = len(commits) - len(committed_when_answered)

    assert isinstance(answers[5], Refused)
    assert {n: answers[n] for n in range(UNITS) if n != 5} == {n: n for n in range(UNITS) if n != 5}
    assert all(committed_when_answered.values()) and len(committed_when_answered) == UNITS - 1
    assert stored_ids(engine) == {f"org-{n}" for n in range(UNITS) if n != 5}
    assert writing == 2, writing
    report = verify_chain(engine)
    assert report.reason is None and report.entries == UNITS - 1


def test_units_that_arrive_while_a_batch_waits_for_the_write_lock_join_it(database, backend):
    """SQLite: while another process's transaction holds the write lock, the batch that waits for
    it takes in the units submitted meanwhile, and all of them share one commit."""
    if backend != "sqlite":
        pytest.skip("a PostgreSQL batch takes no lock to begin")
    engine = database[0]
    repo = Repository(engine, AccessContext.system("test"), "http://test")
    committer = group_commit(engine)
    commits = []
    event.listen(engine, "commit", lambda conn: commits.append(1))
    # The lock another process's writer holds (database._writer_between_processes).
    other_writer = os.open(engine.url.database + "-writer", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(other_writer, fcntl.LOCK_EX)
    threads = [threading.Thread(target=repo.write, args=(lambda uow, n=n: uow.save(organization(n)), Write.FEED))
               for n in range(3)]
    try:
        threads[0].start()
        deadline = time.monotonic() + 30
        while not (committer._running and not committer._waiting) and time.monotonic() < deadline:
            time.sleep(0.005)
        for thread in threads[1:]:
            thread.start()
        while len(committer._waiting) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert committer._running and len(committer._waiting) == 2
    finally:
        os.close(other_writer)
        for thread in threads:
            if thread.ident is not None:
                thread.join(60)
    assert stored_ids(engine) == {"org-0", "org-1", "org-2"}
    assert len(commits) == 2, commits   # the batch's, and stored_ids' read transaction


def _observed(name: str) -> tuple[float, float]:
    return (metrics.REGISTRY.get_sample_value(f"{name}_count") or 0.0,
            metrics.REGISTRY.get_sample_value(f"{name}_sum") or 0.0)


def test_each_batch_reports_its_wait_for_the_writer_and_how_long_it_held_it(database, backend):
    """The two histograms an operator reads SQLite's writer saturation from (/metrics). On SQLite a
    batch that waits for another process's writer reports at least the time it was seen waiting."""
    engine = database[0]
    repo = Repository(engine, AccessContext.system("test"), "http://test")
    committer = group_commit(engine)
    waits, held = _observed("gateway_write_wait_seconds"), _observed("gateway_write_transaction_seconds")
    repo.write(lambda uow: uow.save(organization(1)), Write.FEED)
    assert _observed("gateway_write_wait_seconds")[0] == waits[0] + 1
    assert _observed("gateway_write_transaction_seconds")[0] == held[0] + 1
    assert _observed("gateway_write_transaction_seconds")[1] > held[1]
    if backend != "sqlite":
        return
    waits = _observed("gateway_write_wait_seconds")
    other_writer = os.open(engine.url.database + "-writer", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(other_writer, fcntl.LOCK_EX)
    writer = threading.Thread(target=repo.write, args=(lambda uow: uow.save(organization(2)), Write.FEED))
    try:
        writer.start()
        deadline = time.monotonic() + 30
        while not committer._running and time.monotonic() < deadline:
            time.sleep(0.005)
        seen_waiting = time.perf_counter()
        while time.perf_counter() - seen_waiting < 0.05 and writer.is_alive():
            time.sleep(0.005)
        released = time.perf_counter()
    finally:
        os.close(other_writer)
        writer.join(60)
    assert stored_ids(engine) == {"org-1", "org-2"}
    count, total = _observed("gateway_write_wait_seconds")
    assert count == waits[0] + 1
    assert total - waits[1] >= released - seen_waiting >= 0.05


def test_a_unit_may_not_submit_another_from_inside_its_batch(database):
    engine = database[0]
    repo = Repository(engine, AccessContext.system("test"), "http://test")
    with pytest.raises(RuntimeError, match="inside its batch"):
        repo.write(lambda uow: repo.write(lambda inner: None, Write.RECORD), Write.RECORD)
    with read_connection(engine) as conn:
        assert conn.execute(select(func.count()).select_from(resources)).scalar_one() == 0


def test_reads_audit_events_are_written_together_before_the_next_unit_of_work_sees_the_trail(database, monkeypatch):
    """A read writes only its AuditEvents: those of reads that follow one another in a batch are
    inserted together, without savepoints, and before the next unit of work runs, which sees them
    (an announced document reveals its trail in the same way)."""
    engine = database[0]
    system = Repository(engine, AccessContext.system("test"), "http://test")
    committer = group_commit(engine)
    first_running, release = threading.Event(), threading.Event()
    seen: dict[str, int] = {}

    def blocking(uow):
        first_running.set()
        assert release.wait(30)

    def counting(uow):
        seen["audit events"] = uow.conn.execute(select(func.count()).select_from(resources).where(
            resources.c.res_type == "AuditEvent")).scalar_one()
        uow.save(organization(1))

    def read(n: int):
        system.record_audit([system._event("read", None, f"Organization/org-{n}")])

    submissions = [lambda: system.write(blocking, Write.FEED)] + [lambda n=n: read(n) for n in range(3)] + \
        [lambda: system.write(counting, Write.FEED)] + [lambda n=n: read(n) for n in range(3, 5)]
    threads = [threading.Thread(target=submit) for submit in submissions]
    threads[0].start()
    assert first_running.wait(30)
    for count, thread in enumerate(threads[1:], start=1):
        thread.start()   # one at a time, so that the batch holds them in this order
        deadline = time.monotonic() + 30
        while len(committer._waiting) < count and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(committer._waiting) == count
    savepoints = []
    take_savepoint = sql.SAVEPOINT.execute
    monkeypatch.setattr(sql.SAVEPOINT, "execute",
                        lambda conn, params: savepoints.append(1) or take_savepoint(conn, params))
    release.set()
    for thread in threads:
        thread.join(60)

    assert seen == {"audit events": 3}
    with read_connection(engine) as conn:
        entities = conn.execute(select(resources.c.body).where(resources.c.res_type == "AuditEvent")).scalars().all()
    assert len(entities) == 6   # five reads', and the Organization's creation
    assert len(savepoints) == 1   # in the second batch, the counting unit's: the reads took none
    report = verify_chain(engine)
    assert report.reason is None and report.entries == 6


def test_a_batch_whose_audit_fails_at_its_end_stores_nothing_and_the_next_batch_commits(database):
    """The reads' AuditEvents go to PostgreSQL in one pipeline, whose errors arrive only at its
    end: the batch must still fail whole, and leave its connection usable."""
    engine = database[0]
    repo = Repository(engine, AccessContext.system("test"), "http://test")
    first = repo._event("read", None, "Organization/org-1")
    twin = repo._event("read", None, "Organization/org-2")
    twin.event["id"] = first.event["id"]
    with pytest.raises(IntegrityError):
        repo.record_audit([first, twin])
    with read_connection(engine) as conn:
        assert conn.execute(select(func.count()).select_from(resources)).scalar_one() == 0
    for n in range(3):   # the pool's connections, each used again
        repo.record_audit([repo._event("read", None, f"Organization/org-{n}")])
    report = verify_chain(engine)
    assert report.reason is None and report.entries == 3


def test_when_every_chain_is_held_a_batch_waits_for_one_and_extends_it(database, backend, monkeypatch):
    """PostgreSQL: a batch that finds all the trail's chains taken waits for one, then links its
    AuditEvents after the holder's."""
    if backend == "sqlite":
        pytest.skip("SQLite has one chain and one writer")
    engine = database[0]
    monkeypatch.setattr(audit, "CHAINS", 1)
    repo = Repository(engine, AccessContext.system("test"), "http://test")
    repo.record_audit([repo._event("read", None, "Organization/org-0")])
    holder = engine.connect()
    holder.begin()
    holder.execute(text("SELECT pg_advisory_xact_lock(:key, 0)"), {"key": audit.AUDIT_LOCK})
    done = threading.Event()
    writer = threading.Thread(target=lambda: (repo.record_audit([repo._event("read", None, "Organization/org-1")]),
                                              done.set()))
    writer.start()
    try:
        deadline = time.monotonic() + 30
        waiting = 0
        while not waiting and time.monotonic() < deadline:
            with read_connection(engine) as conn:
                waiting = conn.execute(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                            "AND NOT granted")).scalar_one()
            time.sleep(0.01)
        assert waiting and not done.is_set()
    finally:
        holder.rollback()
        holder.close()
        writer.join(60)
    assert done.is_set()
    report = verify_chain(engine)
    assert report.reason is None and report.entries == 2



def test_a_caller_whose_unit_is_committed_returns_while_the_next_batch_runs(database):
    """Callers whose units a batch committed return at its end, even when the thread that ran it
    goes on at once with a unit that holds the next batch open. (Queued for the batches' turn, they
    waited for that next batch too: two gateways' audited writes were half what they are.)"""
    engine = database[0]
    repo = Repository(engine, AccessContext.system("test"), "http://test")
    committer = group_commit(engine)

    def wait_for_waiting(count: int) -> None:
        deadline = time.monotonic() + 30
        while len(committer._waiting) < count and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(committer._waiting) == count

    for round_ in range(5):
        first_running, release_first = threading.Event(), threading.Event()
        next_running, release_next = threading.Event(), threading.Event()
        answered = [threading.Event(), threading.Event()]

        def holding(n: int, running: threading.Event, release: threading.Event):
            def work(uow):
                running.set()
                assert release.wait(30)
                uow.save(organization(n))
            return work

        def two_units(k: int) -> None:
            # One unit, committed in the second batch; then at once one that holds its batch open.
            repo.write(lambda uow: uow.save(organization(10 * round_ + 1 + k)), Write.FEED)
            answered[k].set()
            repo.write(holding(10 * round_ + 3 + k, next_running, release_next), Write.FEED)

        first = threading.Thread(target=repo.write,
                                 args=(holding(10 * round_, first_running, release_first), Write.FEED))
        callers = [threading.Thread(target=two_units, args=(k,)) for k in range(2)]
        try:
            first.start()
            assert first_running.wait(30)
            for count, caller in enumerate(callers, start=1):
                caller.start()
                wait_for_waiting(count)
            release_first.set()
            # Both units of the second batch are answered, though a third batch is held open.
            assert all(event.wait(10) for event in answered), round_
            assert next_running.wait(30)
        finally:
            release_first.set()
            release_next.set()
            for thread in (first, *callers):
                if thread.ident is not None:
                    thread.join(60)
    assert len(stored_ids(engine)) == 25


def test_a_unit_that_runs_alone_has_a_batch_and_a_transaction_of_its_own_without_a_savepoint(database, monkeypatch):
    """A merge rewrites a whole record: in a savepoint, SQLite kept a copy of each page it changed in
    memory (150 MB for 5,900 documents). Such a unit takes no other into its batch, joins none, and
    runs in the transaction itself; the units around it still share theirs. A unit that happens to
    be alone in its batch runs without a savepoint too."""
    engine = database[0]
    repo = Repository(engine, AccessContext.system("test"), "http://test")
    committer = group_commit(engine)
    trace: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda conn, cursor, statement, *_: trace.append(statement))
    event.listen(engine, "commit", lambda conn: trace.append("COMMIT"))
    savepoint = commits._savepoint

    def traced_savepoint(conn):
        trace.append("SAVEPOINT")
        return savepoint(conn)

    monkeypatch.setattr(commits, "_savepoint", traced_savepoint)
    first_running, release = threading.Event(), threading.Event()

    def work(name: str, n: int):
        def saving(uow):
            if name == "first":
                first_running.set()
                assert release.wait(30)
            trace.append(f"work {name}")
            uow.save(organization(n))
        return saving

    units = [("a", 1, False), ("b", 2, False), ("merge", 3, True), ("c", 4, False)]
    first = threading.Thread(target=repo.write, args=(work("first", 0), Write.FEED))
    others = [threading.Thread(target=repo.write, args=(work(name, n), Write.FEED), kwargs={"alone": alone})
              for name, n, alone in units]
    try:
        first.start()
        assert first_running.wait(30)
        deadline = time.monotonic() + 30
        for count, thread in enumerate(others, start=1):
            thread.start()
            while len(committer._waiting) < count and time.monotonic() < deadline:
                time.sleep(0.005)
            assert len(committer._waiting) == count
    finally:
        release.set()
        for thread in (first, *others):
            if thread.ident is not None:
                thread.join(60)
    assert stored_ids(engine) == {f"org-{n}" for n in range(5)}
    transactions = [part.split("\n") for part in "\n".join(trace).split("COMMIT") if "work " in part]
    worked = [[line for line in part if line.startswith("work ")] for part in transactions]
    assert worked == [["work first"], ["work a", "work b"], ["work merge"], ["work c"]]
    savepoints = [sum(line.startswith("SAVEPOINT") for line in part) for part in transactions]
    assert savepoints == [0, 2, 0, 0]
    assert verify_chain(engine).broken_at is None


@pytest.mark.parametrize("alone", [True, False], ids=["alone", "the only one that came"])
def test_a_unit_alone_whose_identifier_another_writer_claimed_runs_again_in_a_new_transaction(database, alone):
    """A unit in a batch runs again in its savepoint; one alone in its batch (a merge, or the only
    unit that came) has none, and its whole transaction, rolled back, runs again: nothing the failed
    attempt wrote is kept."""
    engine = database[0]
    repo = Repository(engine, AccessContext.system("test"), "http://test")
    attempts = []

    def work(uow):
        attempts.append(1)
        if len(attempts) == 1:
            uow.conn.execute(text("INSERT INTO unique_identifiers VALUES ('Organization', 's', 'taken', 'org-9')"))
            uow.conn.execute(text("INSERT INTO unique_identifiers VALUES ('Organization', 's', 'taken', 'org-9')"))
        uow.save(organization(9))
        return len(attempts)

    assert repo.write(work, Write.FEED, alone=alone) == 2
    assert stored_ids(engine) == {"org-9"}
    with read_connection(engine) as conn:
        assert conn.execute(text("SELECT count(*) FROM unique_identifiers WHERE value = 'taken'")).scalar_one() == 0
    assert verify_chain(engine).entries == 1


def test_a_unit_alone_in_its_batch_that_fails_leaves_nothing_and_the_next_one_commits(database, monkeypatch):
    """Without a savepoint, a unit alone in its batch that raises takes its whole transaction with
    it: nothing it wrote, and no AuditEvent of it, is kept."""
    engine = database[0]
    repo = Repository(engine, AccessContext.system("test"), "http://test")
    savepoints = []
    savepoint = commits._savepoint

    def traced_savepoint(conn):
        savepoints.append(conn)
        return savepoint(conn)

    monkeypatch.setattr(commits, "_savepoint", traced_savepoint)

    def refused(uow):
        uow.save(organization(1))
        raise Refused("this unit is refused", location="Organization.name")

    with pytest.raises(Refused, match="this unit is refused"):
        repo.write(refused, Write.FEED)
    assert repo.write(lambda uow: uow.save(organization(2)).res_id, Write.FEED) == "org-2"
    assert stored_ids(engine) == {"org-2"}
    assert savepoints == []
    report = verify_chain(engine)
    assert report.reason is None and report.entries == 1


def resources_analysed(engine) -> tuple[int | None, int]:
    """How many rows SQLite's statistics say `resources` holds, as the planner reads them, and how
    many it holds."""
    with read_connection(engine) as conn:
        stat = conn.execute(text("SELECT stat FROM sqlite_stat1 WHERE idx = 'sqlite_autoindex_resources_1'")).scalar()
        rows = conn.execute(select(func.count()).select_from(resources)).scalar_one()
    return (int(stat.split()[0]) if stat else None), rows


def test_sqlite_s_statistics_are_taken_again_once_a_table_has_grown_tenfold(database, backend, monkeypatch, caplog):
    """A gateway started on a new database planned its searches with the statistics its start took
    of empty tables, for as long as it ran: at 100,000 documents a patient's search took 35–40 ms
    where 12–16 ms with fresh ones. Every UNITS_BETWEEN_STATISTICS units, the process looks."""
    if backend != "sqlite":
        pytest.skip("PostgreSQL's autovacuum analyses the tables that change")
    engine = database[0]
    monkeypatch.setattr(commits, "UNITS_BETWEEN_STATISTICS", 10)
    repo = Repository(engine, AccessContext.system("test"), "http://test")
    assert resources_analysed(engine) == (None, 0)   # empty when the migration analysed it
    for n in range(9):
        repo.write(lambda uow, n=n: uow.save(organization(n)), Write.FEED)
    assert resources_analysed(engine) == (None, 18)   # each Organization and its AuditEvent
    caplog.set_level(logging.INFO, logger="gateway.storage.database")
    repo.write(lambda uow: uow.save(organization(9)), Write.FEED)
    assert resources_analysed(engine) == (20, 20)
    [said] = [r for r in caplog.records if r.getMessage() == "statistics taken again of tables grown tenfold"]
    assert "resources" in said.tables.split(", ")   # the operator is told what the writers waited for
    caplog.clear()
    for n in range(10, 20):   # twice as many, not ten times: the statistics stand
        repo.write(lambda uow, n=n: uow.save(organization(n)), Write.FEED)
    assert resources_analysed(engine) == (20, 40)
    assert "statistics taken again" not in caplog.text


def test_a_sqlite_connection_is_replaced_once_ten_minutes_old_to_read_newer_statistics(database, backend, monkeypatch):
    """A connection reads the planner's statistics when it opens, never again: the pool's would have
    planned with the first ones for as long as the gateway ran."""
    if backend != "sqlite":
        pytest.skip("PostgreSQL's plans read the statistics as they are")
    from sqlalchemy.pool import base as pool_base

    engine = database[0]
    with engine.connect() as conn:
        first = conn.connection.dbapi_connection
    with engine.connect() as conn:
        assert conn.connection.dbapi_connection is first   # the pool's, for now

    class TenMinutesLater:
        @staticmethod
        def time():
            return time.time() + 601

    monkeypatch.setattr(pool_base, "time", TenMinutesLater)
    with engine.connect() as conn:
        assert conn.connection.dbapi_connection is not first


def test_statistics_that_fail_leave_the_committed_unit_s_answer_as_it_was(database, backend, monkeypatch, caplog):
    """The look at the statistics comes after the batch's commit: a failure there told the unit's
    caller of a failure (an ACK AE, a 500) for what was committed."""
    if backend != "sqlite":
        pytest.skip("PostgreSQL's statistics are autovacuum's")
    engine = database[0]
    monkeypatch.setattr(commits, "UNITS_BETWEEN_STATISTICS", 1)
    repo = Repository(engine, AccessContext.system("test"), "http://test")

    def failing(self, statement, *args, **kwargs):
        if "optimize" in statement:
            raise ValueError("a bug in the look")
        return original(self, statement, *args, **kwargs)

    def work(uow):
        uow.save(organization(1))
        return "committed"

    original = Connection.exec_driver_sql
    monkeypatch.setattr(Connection, "exec_driver_sql", failing)
    assert repo.write(work, Write.FEED) == "committed"
    assert stored_ids(engine) == {"org-1"}
    assert "the database's statistics were not refreshed" in caplog.text


def test_units_submitted_in_a_sequence_share_a_transaction_and_none_runs_after_one_the_database_failed(database):
    """An HL7 batch's messages submit their units at once, each after the one before (submit): they
    fill one transaction in their order. One refused for its content does not stop those after it;
    once the database failed one, the rest of its sequence is not run (NotRun, which passes as that
    failure does), while a unit of no sequence submitted with them still is."""
    from sqlalchemy.exc import OperationalError

    from gateway.storage.database import NotRun, unavailable

    engine = database[0]
    repo = Repository(engine, AccessContext.system("test"), "http://test")
    trace: list = []
    event.listen(engine, "commit", lambda conn: trace.append("COMMIT"))

    def work(n: int, failure: Exception | None = None):
        def saving(uow):
            trace.append(n)
            if failure is not None:
                raise failure
            uow.save(organization(n))
            return n
        return saving

    failures = {2: Refused("refused for its content"), 4: OperationalError("SELECT 1", {}, Exception("server closed"))}
    pending, previous = [], None
    for n in range(1, 7):
        previous = repo.submit(work(n, failures.get(n)), Write.FEED, after=previous)
        pending.append(previous)
    pending.append(repo.submit(work(7), Write.FEED))
    answers = []
    for unit in pending:
        try:
            answers.append(unit.result())
        except Exception as failure:
            answers.append(failure)
    assert [a if isinstance(a, int) else type(a).__name__ for a in answers] \
        == [1, "Refused", 3, "OperationalError", "NotRun", "NotRun", 7]
    assert trace == [1, 2, 3, 4, 7, "COMMIT"]
    assert unavailable(answers[4]) and isinstance(answers[5], NotRun)
    assert stored_ids(engine) == {"org-1", "org-3", "org-7"}
    assert verify_chain(engine).broken_at is None
