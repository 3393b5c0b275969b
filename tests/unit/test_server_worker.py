"""The HTTP worker quits once, however many quit signals reach it (gateway.server.Worker)."""
import pytest

from gateway.server import Worker


class SignalledPool:
    """A thread pool whose shutdown is interrupted by the master's SIGQUIT, as the terminal's SIGINT
    handler is shutting it down: the handler runs again, in the same thread."""

    def __init__(self, worker):
        self.worker = worker
        self.shutdowns = 0

    def shutdown(self, wait=True):
        self.shutdowns += 1
        if self.shutdowns == 1:
            self.worker.handle_quit(3, None)


class Config:
    def worker_int(self, worker):
        pass


def test_a_second_quit_signal_during_the_first_does_not_shut_the_pool_down_again(monkeypatch):
    monkeypatch.setattr("time.sleep", lambda seconds: None)
    worker = Worker.__new__(Worker)   # its attributes as gunicorn's arbiter gives them, for what quitting reads
    worker.cfg, worker.alive = Config(), True
    worker.tpool = SignalledPool(worker)
    with pytest.raises(SystemExit):
        worker.handle_quit(2, None)
    # gthread's pool holds a lock that is not re-entrant through its shutdown: a second one, in the
    # same thread, would wait on it for good.
    assert worker.tpool.shutdowns == 1
    assert not worker.alive
