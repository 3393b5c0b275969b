"""Apply Alembic migrations programmatically (`gateway serve` does it on start-up)."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

from .database import refresh_statistics

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine) -> None:
    command.upgrade(alembic_config(engine), "head")
    refresh_statistics(engine)
    # The migrations' connections go: on SQLite each keeps the migrations' statements prepared
    # (hundreds, each run once), and would prepare every statement of the work that follows again
    # at each run (`SQLITE_PREPARED_STATEMENTS`).
    engine.dispose()
