"""Alembic environment: runs against the engine handed over by gateway.storage.migrate.

Processes started together over one database (two `gateway serve` nodes, `gateway mllp` listeners
started by hand) each apply the pending migrations at start-up. Each does it in a write
transaction that first waits for the others': SQLite's writer (its lock file, then BEGIN
IMMEDIATE), and on PostgreSQL an advisory lock taken before Alembic reads the current version.
The second one then finds the database at head. Without it, the second failed (a duplicate key on
PostgreSQL, "database is locked" on SQLite), or could have applied a migration twice."""
from alembic import context
from sqlalchemy import text

from gateway.storage.database import make_engine, write_transaction
from gateway.storage.schema import metadata

# PostgreSQL advisory lock key of the migrations (beside the audit chains' 7_110_113 and the
# control ids' 7_110_114).
MIGRATION_LOCK = 7_110_115

config = context.config
engine = config.attributes.get("engine")
if engine is None:  # invoked by the alembic command line
    engine = make_engine(config.get_main_option("sqlalchemy.url"))

with write_transaction(engine) as connection:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
