"""Databases the benches may fill and throw away."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterator

from sqlalchemy import func, inspect, select

from gateway.storage.database import make_engine, sqlite
from gateway.storage.schema import resources


@contextlib.contextmanager
def scratch_database(server_url: str | None, workdir: Path, name: str, template: str | None = None) -> Iterator[str]:
    """A new database for one bench, empty or a copy of `template` (a kept_database's URL on the
    same backend): a SQLite file in the work directory, or, given a PostgreSQL URL, a database
    created beside the one it names and dropped afterwards."""
    if server_url is None:
        path = workdir / (name + ".db")
        if template is not None:
            with contextlib.closing(sqlite.connect(template.removeprefix("sqlite:///"))) as source, \
                    contextlib.closing(sqlite.connect(path)) as copy:
                source.backup(copy)
        yield f"sqlite:///{path}"
        return
    admin = make_engine(server_url).execution_options(isolation_level="AUTOCOMMIT")
    database = f"{name}_{os.getpid()}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {database}"
                             + (f" TEMPLATE {template.rsplit('/', 1)[1]}" if template is not None else ""))
    try:
        yield server_url.rsplit("/", 1)[0] + "/" + database
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        admin.dispose()


def kept_database(server_url: str | None, directory: Path, name: str, loaded: Callable[[str], bool]) -> tuple[str, bool]:
    """A database that outlives the bench, so that a later run only measures: a SQLite file in
    `directory`, or a database beside the one a PostgreSQL URL names. Returns its URL and whether it
    is already `loaded`; one that is not is made empty again (a load cut short is thrown away)."""
    if server_url is None:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / (name + ".db")
        url = f"sqlite:///{path}"
        if path.exists() and loaded(url):
            return url, True
        for stale in directory.glob(name + ".db*"):
            stale.unlink()
        return url, False
    url = server_url.rsplit("/", 1)[0] + "/" + name
    admin = make_engine(server_url).execution_options(isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.exec_driver_sql("SELECT 1 FROM pg_database WHERE datname = %(name)s",
                                          {"name": name}).scalar()
        if exists and loaded(url):
            return url, True
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        return url, False
    finally:
        admin.dispose()


def holds_documents(total: int) -> Callable[[str], bool]:
    """Whether a database holds `total` DocumentReferences: a kept database's load finished."""
    def loaded(url: str) -> bool:
        engine = make_engine(url)
        try:
            if not inspect(engine).has_table("resources"):
                return False
            with engine.connect() as conn:
                return conn.execute(select(func.count()).select_from(resources).where(
                    resources.c.res_type == "DocumentReference")).scalar_one() == total
        finally:
            engine.dispose()
    return loaded
