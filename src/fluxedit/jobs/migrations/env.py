"""Alembic environment: always run from fluxedit.jobs.migrate with a live connection."""

from alembic import context

from fluxedit.jobs.db import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through fluxedit.jobs.migrate.upgrade_database(), not the alembic CLI")

context.configure(connection=connection, target_metadata=metadata, compare_type=True)
with context.begin_transaction():
    context.run_migrations()
