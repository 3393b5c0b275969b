"""What every ingest does around its own work: the raw input's final status, the ingest metric,
and one transaction retried when a concurrent writer claimed the same identifier first."""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator, TypeVar

from sqlalchemy.exc import IntegrityError

from gateway import metrics
from gateway.cda.errors import DocumentRefused
from gateway.storage.repository import Repository, UnitOfWork, mark_raw

T = TypeVar("T")
MAX_ATTEMPTS = 3


def in_one_transaction(repo: Repository, work: Callable[[UnitOfWork], T]) -> T:
    """Run `work` in one unit of work. If another writer inserted the same unique identifier between
    our read and our insert, the transaction fails as a whole: run it again, finding what it wrote."""
    for attempt in range(MAX_ATTEMPTS):
        try:
            with repo.unit_of_work() as uow:
                return work(uow)
        except IntegrityError:
            if attempt == MAX_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


@contextlib.contextmanager
def recorded(repo: Repository, channel: str, raw_id: int) -> Iterator[Callable[[str], None]]:
    """Mark the raw input refused or failed when the work raises; yields `done(outcome)` for success."""
    started = time.perf_counter()
    try:
        yield lambda outcome: metrics.observe_ingest(channel, outcome, started)
    except DocumentRefused as refusal:
        mark_raw(repo.engine, raw_id, "refused", {"reason": refusal.reason, "location": refusal.location})
        metrics.observe_ingest(channel, "refused", started)
        raise
    except Exception:
        mark_raw(repo.engine, raw_id, "failed", {"reason": "internal error"})
        metrics.observe_ingest(channel, "failed", started)
        raise
