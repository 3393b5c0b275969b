"""Which processes have a SQLite database open, so that `gateway restore` never writes under one.

A restore put under a running gateway went through: the messages it acknowledged between the
restore's backup of what the database held and its copy's writing were in neither, and those it
acknowledged afterwards went into the restored database, numbered again from the copy's last
input. Every engine on a SQLite database holds a shared lock on the file beside it
(`gateway.db-in-use`) from its creation until it is disposed of (and again from its next
connection); `gateway restore` takes it exclusively, or refuses. The system lets go of a process's
lock when it ends, killed or not: the file left behind blocks nothing. A lock of its own (flock),
never one on the database's files: SQLite's locks on those are POSIX locks, which a process loses
whenever it closes any descriptor of the file."""
from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from pathlib import Path
from typing import Iterator

import pysqlite3.dbapi2 as sqlite

LOCK_SUFFIX = "-in-use"


class DatabaseInUse(sqlite.OperationalError):
    """The lock is held the other way, said in a line for the operator. An OperationalError: a
    connection refused while a restore writes is the database's passing failure (ACK AE, 503)."""


def lock_path(database: Path) -> Path:
    return database.with_name(database.name + LOCK_SUFFIX)


class SharedHold:
    """An engine's share of its database's lock, taken again after the engine lets it go. Its
    connections are opened by any thread: two opening at once take it once."""

    def __init__(self, database: Path):
        self.database = database
        self.path = lock_path(database)
        self.descriptor: int | None = None
        self._guard = threading.Lock()

    def take(self) -> None:
        with self._guard:
            if self.descriptor is not None:
                return
            descriptor = _open(self.path)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
                raise DatabaseInUse(f"`gateway restore` is writing the database {self.database}: "
                                    "start again once it has ended") from None
            self.descriptor = descriptor

    def release(self) -> None:
        with self._guard:
            if self.descriptor is not None:
                os.close(self.descriptor)
                self.descriptor = None


@contextlib.contextmanager
def held_alone(database: Path) -> Iterator[None]:
    """The database's lock, held by this process alone for the block; DatabaseInUse, naming the
    processes that hold it, when a gateway process has the database open."""
    path = lock_path(database)
    descriptor = _open(path)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holders = _holders(path)
            raise DatabaseInUse(f"a gateway process has the database {database} open"
                                + (f" ({'; '.join(holders)})" if holders else "")
                                + ": stop every `gateway serve` and `gateway mllp`, and any command on it, first") from None
        yield
    finally:
        os.close(descriptor)


def _open(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _holders(path: Path) -> list[str]:
    """The processes holding a lock on `path`, as Linux lists them (/proc/locks): "process 4711,
    gateway mllp". None where the list cannot be read; a process is named as it was started, its
    first argument from `gateway` on (the command, never the environment)."""
    try:
        identity = path.stat()
        locks = Path("/proc/locks").read_text()
    except OSError:
        return []
    device = f"{os.major(identity.st_dev):02x}:{os.minor(identity.st_dev):02x}:{identity.st_ino}"
    pids = []
    for line in locks.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  READ  4711 08:01:5678 0 EOF"; a waiting lock's line has "->" second.
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == device and fields[4] not in pids:
            pids.append(fields[4])
    return [f"process {pid}{_command(pid)}" for pid in pids if pid != str(os.getpid())]


def _command(pid: str) -> str:
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return ""
    for start, argument in enumerate(arguments):
        if Path(argument).name == "gateway":
            return ", " + " ".join(["gateway", *arguments[start + 1:]]).strip()
    return ""
