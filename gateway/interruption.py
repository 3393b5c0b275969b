"""Ctrl-C that stops a command between two items of its run, wherever it lands."""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


class Interruption:
    """Ctrl-C during a command's run of many items (`gateway ingest`'s documents, `gateway send`'s
    messages): it stops between two of them. Python's own handler raised KeyboardInterrupt wherever
    the run was, and one raised in a callback whose exceptions Python ignores (a module lock's,
    during an import) was lost: `gateway ingest` went on to its end, and waited there on a pipe named
    last (about one run in ten, the machine loaded). The handler raises only while the run waits on
    something outside it (a file being opened or read, which a pipe or a network share may hold up;
    an ACK), where a Ctrl-C is for that wait."""

    def __init__(self):
        self.asked = False
        self.reading = False

    def __call__(self, _signum, _frame):
        self.asked = True
        if self.reading:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def handled(self) -> Iterator["Interruption"]:
        """In force during the block, where SIGINT has Python's own handler (in the main thread, and
        not ignored: a run started in the background keeps ignoring it)."""
        if (threading.current_thread() is not threading.main_thread()
                or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
            yield self
            return
        signal.signal(signal.SIGINT, self)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    @contextlib.contextmanager
    def while_reading(self) -> Iterator[None]:
        self.reading = True
        try:
            if self.asked:
                raise KeyboardInterrupt
            yield
        finally:
            self.reading = False
