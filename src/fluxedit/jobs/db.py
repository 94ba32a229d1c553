"""The database under the job and key stores: its tables, engine set-up and transactions."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url


class UTCDateTime(sa.TypeDecorator):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend.

    SQLite stores no offset, so values are stored as naive UTC there.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the job store; use an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData()

# `seq` is the primary key because it is the one portable auto-increment (an
# INTEGER PRIMARY KEY on SQLite, an identity column on PostgreSQL): it gives the
# FIFO order. `id` (uuid4 hex) is what clients see; it is unique and indexed.
jobs_table = sa.Table(
    "jobs",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(32), nullable=False, unique=True),
    sa.Column("key_id", sa.String(64), nullable=False),
    sa.Column("model_id", sa.String(200), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("input", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("started_at", UTCDateTime),
    sa.Column("finished_at", UTCDateTime),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("step", sa.Integer),
    sa.Column("total_steps", sa.Integer),
    sa.Column("phase", sa.String(16)),  # while in_progress: fetching | loading | denoising | encoding
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("worker_id", sa.String(200)),
    sa.Column("lease_expires_at", UTCDateTime),
    sa.Column("error_code", sa.String(64)),
    sa.Column("error_message", sa.Text),
    sa.Column("error_index", sa.Integer),
    sa.Column("outputs", sa.JSON),
    sa.Column("seed", sa.BigInteger),
    sa.Column("width", sa.Integer),
    sa.Column("height", sa.Integer),
    sa.Column("timings", sa.JSON),
    sa.Column("idempotency_key", sa.String(255)),
    # Where to send this job's webhooks: not model inputs, so not in `input`.
    sa.Column("webhook_url", sa.Text),
    sa.Column("webhook_filter", sa.JSON),
    sa.Column("webhook_format", sa.String(16)),  # whose body and signature: native (NULL), replicate, bfl
    sa.Column("webhook_secret", sa.Text),  # a secret the request brought (BFL's webhook_secret); NULL: the key's
    sa.Column("base_url", sa.Text),  # the base URL it was submitted under, for absolute URLs in webhooks
    # NULLs are distinct in a unique constraint on both backends: jobs without a key never clash.
    sa.UniqueConstraint("key_id", "idempotency_key", name="uq_jobs_key_idempotency"),
    sa.Index("ix_jobs_queue", "state", "model_id", "seq"),
    sa.Index("ix_jobs_key_seq", "key_id", "seq"),
    # Index-only counts for one job's queue position, and each key's last start (fairness.py).
    sa.Index("ix_jobs_queue_key", "state", "model_id", "key_id", "seq"),
    sa.Index("ix_jobs_key_started", "key_id", "model_id", "started_at"),
    sqlite_autoincrement=True,  # never reuse a seq, even after deletes
)

api_keys_table = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("prefix", sa.String(16), nullable=False, index=True),
    sa.Column("secret_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime),
    # Signs this key's webhooks; kept in clear because signing needs it (the key's own secret is hashed).
    sa.Column("webhook_secret", sa.String(64)),
)

# The webhook outbox: one row per event to deliver, written in the transaction of the
# job state change that causes it (fluxedit.jobs.outbox). `seq` orders a request's events.
webhook_outbox_table = sa.Table(
    "webhook_outbox",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(40), nullable=False, unique=True),  # the webhook-id header, the same on retries
    sa.Column("job_id", sa.String(32), nullable=False),
    sa.Column("key_id", sa.String(64), nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("format", sa.String(16), nullable=False),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("snapshot", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", UTCDateTime),
    sa.Column("claim_token", sa.String(64)),
    sa.Column("claim_expires_at", UTCDateTime),
    sa.Column("finished_at", UTCDateTime),
    sa.Index("ix_webhook_outbox_due", "state", "next_attempt_at"),
    sa.Index("ix_webhook_outbox_job", "job_id", "seq"),
    sqlite_autoincrement=True,
)

webhook_attempts_table = sa.Table(
    "webhook_attempts",
    metadata,
    sa.Column("event_id", sa.String(40), primary_key=True),
    sa.Column("number", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime),
    sa.Column("status_code", sa.Integer),
    sa.Column("error", sa.Text),
    sa.Column("next_attempt_at", UTCDateTime),
)

# Per-key limits in their own table: create_all adds a missing table to an existing SQLite file
# (it never adds columns). NULL: the Settings default.
key_limits_table = sa.Table(
    "key_limits",
    metadata,
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column("max_queued", sa.Integer),
    sa.Column("max_running", sa.Integer),
    sa.Column("requests_per_minute", sa.Integer),
    sa.Column("priority", sa.Integer),
)

# How many in_queue jobs each key has of each model, kept by triggers on `jobs`
# (fluxedit.jobs.queue_counts): a submit's queue check and a status poll read a few
# counters instead of counting a queue that may be 100k jobs long.
queue_counts_table = sa.Table(
    "queue_counts",
    metadata,
    sa.Column("model_id", sa.String(200), primary_key=True),
    sa.Column("key_id", sa.String(64), primary_key=True),
    sa.Column("queued", sa.Integer, nullable=False),
    sa.Index("ix_queue_counts_key", "key_id"),
)


_WRITERS = "fluxedit_writers"


def open_database(database_url: str) -> Engine:
    """A SQLAlchemy engine for `database_url`, set up for several threads and processes.

    SQLite: the file's folder is created, WAL journal, a busy timeout, and write
    transactions start with BEGIN IMMEDIATE (see `_write`) so that concurrent
    writers wait for each other instead of failing on a lock upgrade.
    """
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    if url.database and url.database != ":memory:":
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event, not the sqlite3 module, start transactions.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        _use_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A write takes the lock up front. A read sends no BEGIN: SQLite runs each statement
        # in a read transaction of its own, and SQLAlchemy's rollback at the end is then a no-op.
        if conn.get_execution_options().get("fluxedit_write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    # This process's writers take turns on a lock (carried as an execution option, so every
    # store on this engine shares it): a writer waiting there wakes the moment the last one
    # commits, where SQLite's busy handler sleeps 1 to 100 ms between tries; under concurrent
    # submits most of the time went to those sleeps. Other processes on the same file still
    # wait in the busy handler.
    return engine.execution_options(**{_WRITERS: threading.Lock()})


def _use_wal(cursor: Any) -> None:
    """PRAGMA journal_mode=WAL, tried again while another connection holds the new file.

    Switching a fresh file to WAL needs it alone, and SQLite answers "database is
    locked" at once, without its busy timeout, to the connections that race for it
    (several processes starting on a new data directory). Once set it stays set.
    """
    for attempt in range(100):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 99:
                raise
            time.sleep(0.05)


_SCHEMA_LOCK_ID = 0x666C7578  # "flux"


def lock_schema(conn: Connection) -> None:
    """PostgreSQL: wait for the lock that serialises schema changes across processes, held until commit.

    Taken by `create_schema` and `fluxedit.jobs.migrate.upgrade_database`, so that
    several processes starting at once against a new database take turns.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_SCHEMA_LOCK_ID)))


def _add_missing_columns(conn: Connection) -> None:
    """ALTER TABLE ... ADD COLUMN for each column of `metadata` an existing table lacks.

    Columns added after a table's first release are nullable, which SQLite can add in place.
    """
    inspector = sa.inspect(conn)
    for table in metadata.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable:
                raise RuntimeError(f"cannot add the NOT NULL column {table.name}.{column.name} to an existing table")
            kind = column.type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}')


def _add_missing_indexes(conn: Connection) -> None:
    """CREATE INDEX for each index of `metadata` an existing table lacks (create_all adds none there)."""
    inspector = sa.inspect(conn)
    for table in metadata.sorted_tables:
        present = {index["name"] for index in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in present:
                index.create(conn)


def utc_now() -> datetime:
    """The current time, aware UTC: what every timestamp the stores write is."""
    return datetime.now(UTC)


class Database:
    """Shared plumbing: an engine, read and write transactions."""

    def __init__(self, database: str | Engine) -> None:
        self.engine: Engine = open_database(database) if isinstance(database, str) else database

    def create_schema(self) -> None:
        """Create the tables that are missing; on SQLite, add the columns and indexes that are missing too.

        (On PostgreSQL, Alembic's revisions change existing tables: see fluxedit.jobs.migrate.)
        """
        from fluxedit.jobs.queue_counts import install_queue_counts

        with self._write() as conn:
            lock_schema(conn)
            counted = sa.inspect(conn).has_table(queue_counts_table.name)
            metadata.create_all(conn)
            if conn.dialect.name == "sqlite":
                _add_missing_columns(conn)
                _add_missing_indexes(conn)
            if not counted:  # a new database, or one from before the counters: triggers, then a count
                install_queue_counts(conn)

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A connection for reads outside any transaction: no BEGIN and ROLLBACK round trips
        around a status poll. Each statement sees the latest commit; none of our reads needs
        two statements to agree."""
        with self.engine.connect() as conn:
            if conn.dialect.name != "sqlite":  # (SQLite: see open_database's "begin" hook)
                conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn.execution_options(fluxedit_write=True)
            with conn.get_execution_options().get(_WRITERS) or nullcontext(), conn.begin():
                yield conn

    def dispose(self) -> None:
        self.engine.dispose()
