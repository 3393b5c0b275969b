"""`gateway backup FILE` and `gateway restore FILE`: a copy of the SQLite database taken while the
gateway runs, and put back in the database's place.

The database holds everything the gateway keeps: the inputs as received, the documents' bytes, the
resources, the audit trail, the accounts (keys and settings live outside it). Copying its file is
no backup: in WAL mode the last commits are in `gateway.db-wal`, and the two files copied while the
gateway writes may not make a database, or one with acknowledged messages missing. SQLite's online
backup reads the database in one read transaction, beside which WAL lets the writers go on: the
copy is the database as of one commit, every input acknowledged before it began in it.

PostgreSQL has its own tools for this (`pg_dump`, `pg_basebackup` with WAL archiving): both
commands say so, and do nothing."""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import pysqlite3.dbapi2 as sqlite

from . import in_use

POSTGRESQL_TOOLS = (
    "the database is PostgreSQL's: back it up with PostgreSQL's tools, `pg_dump -Fc` (put back by `pg_restore`), "
    "or `pg_basebackup` with WAL archiving for a recovery to any point in time; it holds everything the gateway "
    "keeps, the documents' bytes included")


class BackupRefused(Exception):
    """Why a backup or a restore was not made, in a line for the operator; nothing was changed."""


@dataclass(frozen=True)
class Copy:
    path: Path
    size: int
    seconds: float
    migration: str
    newest_input: str | None   # when the newest input it holds was received (UTC)


def database_path(database_url: str) -> Path:
    if not database_url.startswith("sqlite"):
        raise BackupRefused(POSTGRESQL_TOOLS)
    path = database_url.split("///", 1)[-1]
    if not path or path == ":memory:":
        raise BackupRefused("an in-memory database is not kept anywhere: there is nothing to back up")
    return Path(path)


def backup(database_url: str, destination: Path) -> Copy:
    """A consistent copy of the database at `destination`, a file that does not exist yet. The copy
    is written beside it first, checked, flushed to disk and only then given its name: a backup cut
    short leaves no file that looks like one."""
    source = database_path(database_url)
    if not source.is_file():
        raise BackupRefused(f"there is no database at {source}")
    _check_destination(destination)
    started = time.perf_counter()
    partial = destination.with_name(destination.name + ".partial")
    try:
        with contextlib.closing(_read_only(source)) as reader, contextlib.closing(sqlite.connect(partial)) as copy:
            # In one step: one read transaction, so that the copy is the database as of one commit.
            # Pages copied a few at a time would start again whenever a writer commits.
            reader.backup(copy)
            # One file, as a backup is handled: the database's WAL mode is set again by the
            # gateway when it opens it.
            copy.execute("PRAGMA journal_mode=DELETE")
        checked = _checked(partial, source)
        _flush(partial)
        os.replace(partial, destination)
        _flush(destination.parent)
    except sqlite.DatabaseError as failure:
        raise BackupRefused(f"{source} cannot be copied: {failure}") from None
    except OSError as failure:   # a full disk
        raise BackupRefused(f"{destination} cannot be written: {failure.strerror}") from None
    finally:
        partial.unlink(missing_ok=True)
    return Copy(destination, destination.stat().st_size, time.perf_counter() - started, *checked)


@dataclass(frozen=True)
class Restored:
    copy: Copy
    kept: Copy | None = None          # a backup of what the database held
    moved: Path | None = None         # or its files moved aside as they were, SQLite unable to copy it
    why_moved: str | None = None


def restore(database_url: str, copy_path: Path) -> Restored:
    """Put a copy `backup` made in the database's place, the gateway stopped. What the database held
    is first backed up beside it (`gateway.db.before-restore-<UTC time>`): a restore of the wrong
    copy loses nothing. A database SQLite cannot copy whole (a damaged one, the reason to restore)
    has its files moved there as they are instead. The copy is written into the database by
    SQLite's backup too, through the database's own connection: the database's WAL, which holds
    commits of the database replaced, is then SQLite's to handle, never applied to the copy's pages."""
    target = database_path(database_url)
    if not copy_path.is_file():
        raise BackupRefused(f"there is no file at {copy_path}")
    if target.exists() and copy_path.resolve() == target.resolve():
        raise BackupRefused(f"{copy_path} is the database itself")
    size, started = copy_path.stat().st_size, time.perf_counter()
    migration, newest = _checked(copy_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with in_use.held_alone(target):
            kept, moved, why_moved = _replace(database_url, target, copy_path)
    except in_use.DatabaseInUse as refused:
        raise BackupRefused(str(refused)) from None
    return Restored(Copy(copy_path, size, time.perf_counter() - started, migration, newest), kept, moved, why_moved)


def _replace(database_url: str, target: Path, copy_path: Path) -> tuple[Copy | None, Path | None, str | None]:
    """The database's content replaced by the copy's, what it held kept beside it: restore's work,
    no gateway process having the database open."""
    kept = moved = why_moved = None
    if target.is_file():
        aside = target.with_name(f"{target.name}.before-restore-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}")
        try:
            kept = backup(database_url, aside)
        except BackupRefused as refused:
            for suffix in ("", "-wal", "-shm"):
                if Path(f"{target}{suffix}").exists():
                    os.replace(f"{target}{suffix}", f"{aside}{suffix}")
            moved, why_moved = aside, str(refused)
    with contextlib.closing(_read_only(copy_path)) as reader, \
            contextlib.closing(sqlite.connect(target, timeout=30)) as database:
        reader.backup(database)
    return kept, moved, why_moved


def _check_destination(destination: Path) -> None:
    if destination.exists():
        raise BackupRefused(f"{destination} exists: a backup is never written over a file")
    if not destination.parent.is_dir():
        raise BackupRefused(f"the folder {destination.parent} does not exist")


def _read_only(path: Path) -> sqlite.Connection:
    return sqlite.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, timeout=30)


def _checked(path: Path, named: Path | None = None) -> tuple[str, str | None]:
    """The migration a copy is at and when its newest input was received, once SQLite finds its
    pages sound (`quick_check`: every page and record readable, without comparing each index with
    its table) and it holds a gateway's tables; BackupRefused otherwise, naming the file as `named`
    (the database a copy was taken of: its pages are the database's)."""
    shown = named or path
    try:
        with contextlib.closing(_read_only(path)) as copy:
            problems = [row[0] for row in copy.execute("PRAGMA quick_check(3)")]
    except sqlite.DatabaseError as failure:
        raise BackupRefused(f"{shown} cannot be read as a database ({failure})") from None
    if problems != ["ok"]:
        raise BackupRefused(f"{shown} is damaged: SQLite's quick_check says "
                            f"{'; '.join(' '.join(problem.split()) for problem in problems)}")
    try:
        with contextlib.closing(_read_only(path)) as copy:
            migration = copy.execute("SELECT version_num FROM alembic_version").fetchone()
            newest = copy.execute("SELECT max(received_at) FROM raw_inputs").fetchone()[0]
    except sqlite.DatabaseError as failure:
        raise BackupRefused(f"{shown} is not a gateway database ({failure})") from None
    if migration is None:
        raise BackupRefused(f"{shown} is not a gateway database (no migration was ever applied to it)")
    return migration[0], newest


def _flush(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
