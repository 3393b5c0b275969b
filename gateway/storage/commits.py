"""Group commit: units of work that threads submit at the same time share one transaction, one
audit chain extension and one flush to disk.

The first thread to find no batch running takes every unit waiting (its own included) and those that
come while it waits for the write lock, runs each in a savepoint of one transaction, and commits;
the others wait for that commit and find their result. A unit that raises is rolled back to its
savepoint alone and its caller gets the exception; the others still commit. A unit alone in its
batch needs no savepoint: its transaction is rolled back instead. The AuditEvents of reads
(searches, reads, refusals), which are all such a request writes, need no savepoint either: those
that follow one another in a batch are inserted together. A caller's `result()` returns only once
the commit that made its data durable is done, so an ACK or a 201 sent after it promises what it
says.

A caller with several units to run in order (the messages of an HL7 batch, the documents of
`gateway ingest`) submits them all at once (`submit`), and they share transactions too: each one
`after` the one before, so that none runs once the database failed an earlier one
(services.ingest.run_together).
"""
from __future__ import annotations

import contextlib
import threading
import time
import weakref
from typing import Callable, Generic, Iterator, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError

from gateway import metrics
from gateway.access import audit

from . import statements as sql
from .database import NotRun, analyse_grown_tables, unavailable, write_transaction

T = TypeVar("T")
# A unit whose unique identifier another writer claimed first (IntegrityError) runs again, and
# finds what that writer stored.
MAX_ATTEMPTS = 3
# Units per transaction: a batch holds SQLite's write lock, and its callers wait, for all of them.
MAX_BATCH = 64
# Units committed by this process between two looks at the database's statistics (SQLite's, kept as
# its tables grow: database.analyse_grown_tables).
UNITS_BETWEEN_STATISTICS = 1000
_batch_thread = threading.local()


class _Unit:
    def __init__(self, unit_of_work: Callable[[Connection], object], work: Callable | None,
                 events: list | None = None, alone: bool = False, after: "_Unit | None" = None):
        self.unit_of_work = unit_of_work
        self.work = work
        self.events = events      # a read's AuditEvents (PendingAudit), which are all it writes
        self.alone = alone        # a batch of its own, without a savepoint (GroupCommit.submit)
        self.after = after        # the unit submitted before it in the same sequence (GroupCommit.submit)
        self.value = None
        self.error: BaseException | None = None
        self.settled = False

    def result(self):
        if self.error is not None:
            raise self.error
        return self.value

    def stopped(self) -> bool:
        """Whether the database failed this unit (or one before it in its sequence): the units after it
        are not run, as they would be committed ahead of it."""
        return self.error is not None and unavailable(self.error)


class Pending(Generic[T]):
    """A unit submitted without waiting for it (GroupCommit.submit)."""

    def __init__(self, committer: "GroupCommit", unit: _Unit):
        self._committer = committer
        self.unit = unit

    def result(self) -> T:
        """Its value once committed, or its error; waiting for (or running) the batch it is in."""
        return self._committer._wait(self.unit)


class GroupCommit:
    def __init__(self, engine: Engine):
        self._engine = engine
        self._waiting: list[_Unit] = []
        self._running = False                   # one batch at a time in this process
        self._changed = threading.Condition()   # guards both; notified when a batch ends
        self._units_since_statistics = 0       # guarded by _changed too

    def submit(self, unit_of_work: Callable[[Connection], object], work: Callable[..., T], *, alone: bool = False,
               after: Pending | None = None) -> Pending[T]:
        """Queue `work(unit_of_work(connection))` for the next batch; its `result()` is its value once
        that batch is committed. Units submitted one after the other run in that order, in as few
        batches as they fill. A work must not write through another unit: its batch would wait for
        itself. `alone`: a work that changes a whole record (a merge) runs in a batch of its own,
        without the savepoint that lets a batch roll back one unit. SQLite keeps a savepoint's undo
        in memory (this build's TEMP_STORE=3), a copy of each page the unit changes: a merge of 5,900
        documents took 150 MB more that way. `after`: the unit submitted before it in the same
        sequence; this one is not run (its error NotRun) if the database failed that one."""
        return Pending(self, self._enqueue(_Unit(unit_of_work, work, alone=alone,
                                                 after=after.unit if after is not None else None)))

    def record(self, unit_of_work: Callable[[Connection], object], events: list) -> None:
        """Write a read's AuditEvents in the next batch; return once that batch is committed. They
        are inserted with the other reads' of the batch, one statement per table."""
        self._wait(self._enqueue(_Unit(unit_of_work, None, events)))

    def _enqueue(self, unit: _Unit) -> _Unit:
        if getattr(_batch_thread, "running", False):
            raise RuntimeError("a unit of work submitted another one from inside its batch")
        with self._changed:
            self._waiting.append(unit)
        return unit

    def _wait(self, unit: _Unit):
        while True:
            # A caller whose unit a batch committed returns as soon as that batch ends. (Callers
            # queued on one lock for the batches' turn, which the thread that had just run a batch
            # took again at once for its next unit: they waited for that batch too. Two gateways on
            # one PostgreSQL wrote 1,143–1,267 AuditEvents a second that way, 2,149–2,182 this way.)
            with self._changed:
                while not unit.settled and (self._running or not self._waiting):
                    self._changed.wait()
                if unit.settled:
                    return unit.result()
                batch: list[_Unit] = []
                _take(self._waiting, batch)
                self._running = True
            try:
                for _ in range(MAX_ATTEMPTS):
                    # A unit alone in its batch has no savepoint to run again in: its transaction does.
                    self._commit(batch)
                    if len(batch) > 1 or not isinstance(batch[0].error, IntegrityError):
                        break
            finally:
                with self._changed:
                    for done in batch:
                        done.settled = True
                    self._running = False
                    self._changed.notify_all()
                    self._units_since_statistics += len(batch)
                    statistics_due = self._units_since_statistics >= UNITS_BETWEEN_STATISTICS
                    if statistics_due:
                        self._units_since_statistics = 0
            if statistics_due:
                # By the thread that ran the batch, before its caller's answer: a look costs 0.1 ms,
                # an analysis (a table grown tenfold) 0.3 s at 100,000 documents, which every
                # writer waits for.
                analyse_grown_tables(self._engine)

    def _commit(self, batch: list[_Unit]) -> None:
        _batch_thread.running = True
        asked = time.perf_counter()
        began = None
        try:
            with write_transaction(self._engine) as conn:
                began = time.perf_counter()
                with self._changed:
                    # Those that came while the batch waited for the write lock (another process's
                    # batch held it) join it: they share its flush instead of waiting for another.
                    _take(self._waiting, batch)
                entries: list = []
                reads: list[_Unit] = []

                def write_reads():
                    # Before the next unit of work, which may read or change stored AuditEvents
                    # (a document announced reveals its audit trail), and outside its savepoint.
                    if reads:
                        uow = reads[0].unit_of_work(conn)
                        for read in reads:
                            uow.audit.extend(read.events)
                        entries.extend(uow.store_audit())
                        reads.clear()

                for unit in batch:
                    if unit.events is not None:
                        reads.append(unit)
                        continue
                    if unit.after is not None and unit.after.stopped():
                        unit.error = NotRun()
                        continue
                    if len(batch) == 1:
                        # The transaction's only work (a unit `alone`, or the only one that came):
                        # rolling the transaction back undoes it as a savepoint would, without the
                        # savepoint's two statements (two round trips on PostgreSQL).
                        unit.error = None
                        uow = unit.unit_of_work(conn)
                        unit.value = unit.work(uow)
                        entries += uow.store_audit()
                        continue
                    write_reads()
                    for _ in range(MAX_ATTEMPTS):
                        uow = unit.unit_of_work(conn)
                        try:
                            with _savepoint(conn):
                                unit.value = unit.work(uow)
                                entries += uow.store_audit()
                            unit.error = None
                            break
                        except IntegrityError as failure:
                            unit.error = failure
                        except Exception as failure:
                            unit.error = failure
                            break
                write_reads()
                audit.extend_chain(conn, entries)
            metrics.GROUP_COMMIT_UNITS.observe(len(batch))
        except BaseException as failure:
            # Nothing of the batch was committed: every unit that had succeeded fails with it.
            for unit in batch:
                if unit.error is None:
                    unit.error = failure
            if not isinstance(failure, Exception):
                raise
        finally:
            ended = time.perf_counter()
            _batch_thread.running = False
        # Observed once the write lock is let go.
        if began is not None:
            metrics.WRITE_HELD.observe(ended - began)
            metrics.WRITE_WAIT.observe(began - asked)


def _take(waiting: list[_Unit], batch: list[_Unit]) -> None:
    """Move into `batch` the waiting units it takes, in their order: up to MAX_BATCH, and a unit
    that runs alone only into an empty batch, which then takes no other."""
    while waiting and len(batch) < MAX_BATCH and not (batch and (batch[0].alone or waiting[0].alone)):
        batch.append(waiting.pop(0))


@contextlib.contextmanager
def _savepoint(conn: Connection) -> Iterator[None]:
    """A unit's savepoint, its statements on the driver's cursor: SQLAlchemy's `begin_nested` cost
    83 µs of CPU a unit, under the write lock, where these cost 4."""
    sql.SAVEPOINT.execute(conn, {}).close()
    try:
        yield
    except BaseException:
        sql.ROLLBACK_TO_SAVEPOINT.execute(conn, {}).close()
        raise
    sql.RELEASE_SAVEPOINT.execute(conn, {}).close()


_committers: "weakref.WeakKeyDictionary[Engine, GroupCommit]" = weakref.WeakKeyDictionary()
_committers_lock = threading.Lock()


def group_commit(engine: Engine) -> GroupCommit:
    """The group commit of this process for this database."""
    with _committers_lock:
        committer = _committers.get(engine)
        if committer is None:
            committer = _committers[engine] = GroupCommit(engine)
        return committer
