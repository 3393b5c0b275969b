"""Databases the benches may fill and throw away."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from gateway.storage.database import make_engine


@contextlib.contextmanager
def scratch_database(server_url: str | None, workdir: Path, name: str) -> Iterator[str]:
    """A new empty database for one bench: a SQLite file in the work directory, or, given a
    PostgreSQL URL, a database created beside the one it names and dropped afterwards."""
    if server_url is None:
        yield f"sqlite:///{workdir / (name + '.db')}"
        return
    admin = make_engine(server_url).execution_options(isolation_level="AUTOCOMMIT")
    database = f"{name}_{os.getpid()}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {database}")
    try:
        yield server_url.rsplit("/", 1)[0] + "/" + database
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        admin.dispose()
