"""Alembic environment: runs against the engine handed over by gateway.storage.migrate."""
from alembic import context

from gateway.storage.database import make_engine
from gateway.storage.schema import metadata

config = context.config
engine = config.attributes.get("engine")
if engine is None:  # invoked by the alembic command line
    engine = make_engine(config.get_main_option("sqlalchemy.url"))

with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
