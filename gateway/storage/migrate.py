"""Apply Alembic migrations programmatically (`gateway serve` does it on start-up)."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine

from .database import UnsupportedDatabase, refresh_statistics

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine) -> None:
    config = alembic_config(engine)
    try:
        command.upgrade(config, "head")
    except CommandError:
        _refuse_a_newer_database(engine, config)   # when that is why, said in a line
        raise
    refresh_statistics(engine)
    # The migrations' connections go: on SQLite each keeps the migrations' statements prepared
    # (hundreds, each run once), and would prepare every statement of the work that follows again
    # at each run (`SQLITE_PREPARED_STATEMENTS`).
    engine.dispose()


def _refuse_a_newer_database(engine: Engine, config: Config) -> None:
    """A database a newer gateway migrated (a deployment rolled back) is told in a line: alembic's
    "Can't locate revision identified by '0026'" was a traceback at start-up. Read only once alembic
    has failed: each process's start-up and each test database would load the scripts twice."""
    scripts = ScriptDirectory.from_config(config)
    known = {script.revision for script in scripts.walk_revisions()}
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_heads()
    unknown = [revision for revision in current if revision not in known]
    if unknown:
        raise UnsupportedDatabase(
            f"the database is at migration {', '.join(unknown)}, which this gateway does not have (its newest is "
            f"{scripts.get_current_head()}): a newer version of the gateway migrated it; run that version, or a copy "
            "of the database from before its migration")
