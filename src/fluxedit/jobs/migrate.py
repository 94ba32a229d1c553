"""Bring the job database's schema up to date: Alembic on PostgreSQL, create_all on SQLite.

On SQLite, `Database.create_schema` also adds the columns later releases added, and
keys made before webhooks get their signing secret, as revision 0002 does on PostgreSQL.

Every `serve` and `worker` process calls `upgrade_database` at start; on
PostgreSQL an advisory lock makes concurrent starts take turns, so the
migrations run once and the others find the schema current.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from fluxedit.jobs.db import Database, lock_schema, open_database
from fluxedit.jobs.keys import KeyStore

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
BASELINE_REVISION = "0001"  # the schema create_all made before migrations existed


def _alembic_config(connection: Connection):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


@contextmanager
def _engine(database: str | Engine) -> Iterator[Engine]:
    """The engine given, or one opened for a URL and disposed of afterwards."""
    if not isinstance(database, str):
        yield database
        return
    engine = open_database(database)
    try:
        yield engine
    finally:
        engine.dispose()


def upgrade_database(database: str | Engine) -> None:
    """Create or migrate the jobs and api_keys tables to the current schema."""
    with _engine(database) as engine:
        if engine.dialect.name == "sqlite":
            Database(engine).create_schema()  # one file, one machine: no migration history kept
            KeyStore(engine).fill_webhook_secrets()
            return
        from alembic import command

        with engine.begin() as conn:
            lock_schema(conn)
            config = _alembic_config(conn)
            inspector = sa.inspect(conn)
            if inspector.has_table("jobs") and not inspector.has_table("alembic_version"):
                command.stamp(config, BASELINE_REVISION)  # tables from create_all: adopt them
            command.upgrade(config, "head")


def current_revision(database: str | Engine) -> str | None:
    """The revision the database is at (None: never migrated)."""
    from alembic.runtime.migration import MigrationContext

    with _engine(database) as engine, engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
