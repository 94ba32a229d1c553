"""The job state of record and the API keys, on SQLAlchemy Core (SQLite or PostgreSQL).

Every state change is one conditional UPDATE (``... WHERE id = ? AND state = ?``)
whose row count says whether it happened, so several threads or processes can
share one database: a job is claimed by one worker only, and ends
``completed | failed | cancelled`` exactly once.

A running job holds a lease (``lease_expires_at``) that its worker renews with
`JobStore.heartbeat`; `JobStore.recover_expired` puts jobs whose worker died
back in the queue (or fails them with ``worker_lost`` after ``max_attempts``).
Lease times come from the clock of the process that writes them, so machines
sharing a database need synchronised clocks (NTP), and leases should be much
longer than any expected skew.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url

from fluxedit.errors import FluxeditError, InvalidInput
from fluxedit.schema import CURSOR_PATTERN, JobState
from fluxedit.storage.signing import without_signatures

# --- errors ------------------------------------------------------------------------


class QueueFull(FluxeditError):
    """The model's queue is at its limit; the caller should retry later."""

    code = "queue_full"
    status = 429

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class JobNotFound(FluxeditError):
    code = "not_found"
    status = 404


class JobConflict(FluxeditError):
    """The job is in a state that does not allow the operation (e.g. cancel after it finished)."""

    code = "already_finished"
    status = 409

    def __init__(self, message: str, *, state: JobState, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.state = state


class IdempotencyConflict(FluxeditError):
    """An idempotency key was reused for a different request."""

    code = "idempotency_key_reused"
    status = 409


class LeaseLost(FluxeditError):
    """This worker no longer owns the job (its lease expired and the job was recovered).

    The worker must stop and write nothing more for the job.
    """

    code = "lease_lost"
    status = 409


# --- schema ---------------------------------------------------------------------------


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
    # NULLs are distinct in a unique constraint on both backends: jobs without a key never clash.
    sa.UniqueConstraint("key_id", "idempotency_key", name="uq_jobs_key_idempotency"),
    sa.Index("ix_jobs_queue", "state", "model_id", "seq"),
    sa.Index("ix_jobs_key_seq", "key_id", "seq"),
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
)


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
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("fluxedit_write") else "BEGIN")

    return engine


_SCHEMA_LOCK_ID = 0x666C7578  # "flux"


def lock_schema(conn: Connection) -> None:
    """PostgreSQL: wait for the lock that serialises schema changes across processes, held until commit.

    Taken by `create_schema` and `fluxedit.jobs.migrate.upgrade_database`, so that
    several processes starting at once against a new database take turns.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_SCHEMA_LOCK_ID)))


def _now() -> datetime:
    return datetime.now(UTC)


class _Database:
    """Shared plumbing: an engine, read and write transactions."""

    def __init__(self, database: str | Engine) -> None:
        self.engine: Engine = open_database(database) if isinstance(database, str) else database

    def create_schema(self) -> None:
        """Create the tables that are missing (both jobs and api_keys)."""
        with self._write() as conn:
            lock_schema(conn)
            metadata.create_all(conn)

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn.execution_options(fluxedit_write=True)
            with conn.begin():
                yield conn

    def dispose(self) -> None:
        self.engine.dispose()


# --- jobs --------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    id: str
    seq: int
    key_id: str
    model_id: str
    state: JobState
    input: dict
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    step: int | None = None
    total_steps: int | None = None
    cancel_requested: bool = False
    worker_id: str | None = None
    lease_expires_at: datetime | None = None
    error_code: str | None = None
    error_message: str | None = None
    error_index: int | None = None
    outputs: list[str] = field(default_factory=list)
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    timings: dict | None = None
    idempotency_key: str | None = None

    @classmethod
    def from_row(cls, row: sa.Row, **missing: Any) -> Job:
        values = {**missing, **row._mapping}
        values["state"] = JobState(values["state"])
        values["cancel_requested"] = bool(values["cancel_requested"])
        values["outputs"] = list(values.get("outputs") or [])
        return cls(**values)


def _encode_cursor(seq: int) -> str:
    return f"s{seq}"


def _decode_cursor(cursor: str) -> int:
    # Exactly the strings schema.CURSOR_PATTERN documents (a plain, regular form).
    if re.fullmatch(CURSOR_PATTERN.removeprefix("^").removesuffix("$"), cursor) is None:
        raise InvalidInput("cursor is not one this server issued; pass next_cursor as given.", field="cursor")
    return int(cursor[1:])


_J = jobs_table.c
_STATUS_COLUMNS = [column for column in jobs_table.c if column.name not in ("input", "outputs", "timings")]
_CLAIM_RETRIES = 20


class JobStore(_Database):
    """Jobs in SQL: submit, claim, heartbeat, finish, cancel, recover.

    Methods that take `worker_id` only act on a job that is `in_progress` and
    owned by that worker; they return False (or raise `LeaseLost`, for
    `heartbeat`) when it is not, e.g. after the job was recovered from an
    expired lease.
    """

    # --- submitting and reading -----------------------------------------------------

    def submit(
        self,
        key_id: str,
        model_id: str,
        input: dict,
        *,
        max_queued: int,
        idempotency_key: str | None = None,
    ) -> Job:
        """Queue a job, or return the job this key already submitted with `idempotency_key`.

        Raises QueueFull when `model_id` already has `max_queued` jobs in_queue (a soft
        limit: simultaneous submits may overshoot it by a few), and IdempotencyConflict
        when the key was used for a different model or input.
        """
        if idempotency_key is not None:
            existing = self._by_idempotency_key(key_id, idempotency_key)
            if existing is not None:
                return self._same_request(existing, model_id, input)
        queued = self.queued_count(model_id)
        if queued >= max_queued:
            retry = self._retry_after_s(model_id)
            raise QueueFull(
                f"Model {model_id} already has {queued} queued jobs, its limit; retry in about {retry} s.",
                retry_after_s=retry,
            )
        values = dict(
            id=uuid.uuid4().hex,
            key_id=key_id,
            model_id=model_id,
            state=JobState.in_queue.value,
            input=input,
            created_at=_now(),
            attempts=0,
            cancel_requested=False,
            idempotency_key=idempotency_key,
        )
        try:
            with self._write() as conn:
                row = conn.execute(sa.insert(jobs_table).values(**values).returning(*jobs_table.c)).one()
        except sa.exc.IntegrityError:
            # Another request with the same idempotency key won the race.
            existing = self._by_idempotency_key(key_id, idempotency_key) if idempotency_key else None
            if existing is None:
                raise
            return self._same_request(existing, model_id, input)
        return Job.from_row(row)

    def _by_idempotency_key(self, key_id: str, idempotency_key: str) -> Job | None:
        with self._read() as conn:
            row = conn.execute(
                sa.select(jobs_table).where(_J.key_id == key_id, _J.idempotency_key == idempotency_key)
            ).one_or_none()
        return Job.from_row(row) if row else None

    @staticmethod
    def _same_request(job: Job, model_id: str, input: dict) -> Job:
        if job.model_id != model_id or without_signatures(job.input) != without_signatures(input):
            raise IdempotencyConflict(
                f"Idempotency key {job.idempotency_key!r} was already used for a different request "
                f"(job {job.id}); use a new key for a new request."
            )
        return job

    def _retry_after_s(self, model_id: str) -> int:
        """About one job's run time: when the next queue slot should free up."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(_J.started_at, _J.finished_at)
                .where(_J.model_id == model_id, _J.state == JobState.completed.value)
                .order_by(_J.seq.desc())
                .limit(20)
            ).all()
        runs = [(f - s).total_seconds() for s, f in rows if s and f]
        if not runs:
            return 10
        return max(1, min(600, math.ceil(sum(runs) / len(runs))))

    def get(self, job_id: str, key_id: str | None = None) -> Job | None:
        """The job, or None; with `key_id`, only if that key submitted it."""
        query = sa.select(jobs_table).where(_J.id == job_id)
        if key_id is not None:
            query = query.where(_J.key_id == key_id)
        with self._read() as conn:
            row = conn.execute(query).one_or_none()
        return Job.from_row(row) if row else None

    def get_status(self, job_id: str, key_id: str) -> Job | None:
        """This key's job as a status answer needs it: its input and outputs (which may be
        large) are not read, and are left empty."""
        query = sa.select(*_STATUS_COLUMNS).where(_J.id == job_id, _J.key_id == key_id)
        with self._read() as conn:
            row = conn.execute(query).one_or_none()
        return Job.from_row(row, input={}) if row else None

    def list_jobs(self, key_id: str, limit: int = 20, cursor: str | None = None) -> tuple[list[Job], str | None]:
        """This key's jobs, newest first; pass the returned cursor to get the next page (None: no more)."""
        query = sa.select(jobs_table).where(_J.key_id == key_id).order_by(_J.seq.desc()).limit(limit + 1)
        if cursor:
            query = query.where(_J.seq < _decode_cursor(cursor))
        with self._read() as conn:
            rows = conn.execute(query).all()
        jobs = [Job.from_row(r) for r in rows[:limit]]
        next_cursor = _encode_cursor(jobs[-1].seq) if len(rows) > limit and jobs else None
        return jobs, next_cursor

    def queue_position(self, job: Job) -> int:
        """How many in_queue jobs of the same model are ahead of `job` (0: next). Meant for in_queue jobs."""
        query = sa.select(sa.func.count()).where(
            _J.state == JobState.in_queue.value, _J.model_id == job.model_id, _J.seq < job.seq
        )
        with self._read() as conn:
            return int(conn.execute(query).scalar_one())

    def queued_count(self, model_id: str) -> int:
        query = sa.select(sa.func.count()).where(_J.state == JobState.in_queue.value, _J.model_id == model_id)
        with self._read() as conn:
            return int(conn.execute(query).scalar_one())

    # --- workers ----------------------------------------------------------------------

    def _claim(self, which: sa.ColumnElement[bool], worker_id: str, lease_s: float) -> Job | None:
        """Move the job `which` selects to in_progress for this worker, if it is still in_queue."""
        now = _now()
        with self._write() as conn:
            row = conn.execute(
                sa.update(jobs_table)
                .where(which, _J.state == JobState.in_queue.value)
                .values(
                    state=JobState.in_progress.value,
                    attempts=_J.attempts + 1,
                    started_at=now,
                    worker_id=worker_id,
                    lease_expires_at=now + timedelta(seconds=lease_s),
                    step=None,
                    total_steps=None,
                )
                .returning(*jobs_table.c)
            ).one_or_none()
        return Job.from_row(row) if row else None

    def claim_next(self, model_ids: Sequence[str], worker_id: str, lease_s: float) -> Job | None:
        """Move the oldest in_queue job of `model_ids` to in_progress for this worker; None if there is none."""
        if not model_ids:
            return None
        candidates = (
            sa.select(_J.seq)
            .where(_J.state == JobState.in_queue.value, _J.model_id.in_(list(model_ids)))
            .order_by(_J.seq)
            .limit(1)
            # PostgreSQL: claimers skip rows another claimer holds; SQLite ignores this
            # (its writers are serialised by BEGIN IMMEDIATE).
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        for _ in range(_CLAIM_RETRIES):
            job = self._claim(_J.seq == candidates, worker_id, lease_s)
            if job is not None:
                return job
            if not self._any_queued(model_ids):
                return None
            # Lost a race for the head of the queue (PostgreSQL): try the next one.
        return None

    def _any_queued(self, model_ids: Sequence[str]) -> bool:
        query = sa.select(_J.seq).where(_J.state == JobState.in_queue.value, _J.model_id.in_(list(model_ids))).limit(1)
        with self._read() as conn:
            return conn.execute(query).first() is not None

    def claim(self, job_id: str, worker_id: str, lease_s: float) -> Job | None:
        """Move this in_queue job to in_progress for this worker; None if it is not in_queue."""
        return self._claim(_J.id == job_id, worker_id, lease_s)

    def _owned(self, job_id: str, worker_id: str) -> sa.ColumnElement[bool]:
        return sa.and_(_J.id == job_id, _J.worker_id == worker_id, _J.state == JobState.in_progress.value)

    def heartbeat(
        self, job_id: str, worker_id: str, lease_s: float, step: int | None = None, total: int | None = None
    ) -> bool:
        """Extend the lease and record progress; True when a cancel was requested.

        Raises LeaseLost when this worker no longer owns the job: it must stop and
        write nothing more for it.
        """
        values: dict[str, Any] = {"lease_expires_at": _now() + timedelta(seconds=lease_s)}
        if step is not None:
            values["step"] = step
        if total is not None:
            values["total_steps"] = total
        with self._write() as conn:
            row = conn.execute(
                sa.update(jobs_table)
                .where(self._owned(job_id, worker_id))
                .values(**values)
                .returning(_J.cancel_requested)
            ).one_or_none()
        if row is None:
            raise LeaseLost(f"Job {job_id} is no longer owned by worker {worker_id}.")
        return bool(row.cancel_requested)

    def _finish(self, job_id: str, worker_id: str, state: JobState, **values: Any) -> bool:
        with self._write() as conn:
            result = conn.execute(
                sa.update(jobs_table)
                .where(self._owned(job_id, worker_id))
                .values(state=state.value, finished_at=_now(), lease_expires_at=None, **values)
            )
        return result.rowcount == 1

    def complete(
        self,
        job_id: str,
        worker_id: str,
        outputs: list[str],
        seed: int | None,
        width: int | None,
        height: int | None,
        timings: dict | None,
    ) -> bool:
        """in_progress (owned) -> completed with its outputs (storage keys). True only the one time it happens."""
        return self._finish(
            job_id,
            worker_id,
            JobState.completed,
            outputs=list(outputs),
            seed=seed,
            width=width,
            height=height,
            timings=timings,
        )

    def fail(self, job_id: str, worker_id: str, code: str, message: str, index: int | None = None) -> bool:
        """in_progress (owned) -> failed with a stable code and a sentence for people."""
        return self._finish(
            job_id, worker_id, JobState.failed, error_code=code, error_message=message, error_index=index
        )

    def finish_cancelled(self, job_id: str, worker_id: str) -> bool:
        """in_progress (owned) -> cancelled, once the worker stopped."""
        return self._finish(job_id, worker_id, JobState.cancelled)

    def release(self, job_id: str, worker_id: str) -> bool:
        """Give a running job back to the queue without using up an attempt (graceful shutdown).

        A job whose cancel was requested ends cancelled instead.
        """
        with self._write() as conn:
            cancelled = conn.execute(
                sa.update(jobs_table)
                .where(self._owned(job_id, worker_id), _J.cancel_requested.is_(True))
                .values(state=JobState.cancelled.value, finished_at=_now(), lease_expires_at=None)
            ).rowcount
            requeued = conn.execute(
                sa.update(jobs_table)
                .where(self._owned(job_id, worker_id))
                .values(
                    state=JobState.in_queue.value,
                    attempts=sa.case((_J.attempts > 0, _J.attempts - 1), else_=0),
                    started_at=None,
                    worker_id=None,
                    lease_expires_at=None,
                    step=None,
                    total_steps=None,
                )
            ).rowcount
        return cancelled + requeued == 1

    # --- clients ------------------------------------------------------------------------

    def cancel(self, job_id: str, key_id: str) -> Job:
        """Cancel a job of this key: a queued one at once, a running one at its worker's next step.

        Returns the job after the change. Raises JobNotFound when this key has no
        such job and JobConflict (code "already_finished", with `.state`) when it
        has already finished.
        """
        mine = sa.and_(_J.id == job_id, _J.key_id == key_id)
        for _ in range(_CLAIM_RETRIES):
            with self._write() as conn:
                row = conn.execute(
                    sa.update(jobs_table)
                    .where(mine, _J.state == JobState.in_queue.value)
                    .values(state=JobState.cancelled.value, finished_at=_now())
                    .returning(*jobs_table.c)
                ).one_or_none()
                if row is None:
                    row = conn.execute(
                        sa.update(jobs_table)
                        .where(mine, _J.state == JobState.in_progress.value)
                        .values(cancel_requested=True)
                        .returning(*jobs_table.c)
                    ).one_or_none()
            if row is not None:
                return Job.from_row(row)
            job = self.get(job_id, key_id)
            if job is None:
                raise JobNotFound(f"No request {job_id} was found for this API key.")
            if job.state.finished:
                raise JobConflict(
                    f"Request {job_id} has already finished ({job.state.value}); there is nothing to cancel.",
                    state=job.state,
                )
            # It changed state between our updates (e.g. it was just recovered): try again.
        raise JobConflict(f"Request {job_id} keeps changing state; try again.", state=job.state, code="conflict")

    # --- housekeeping -----------------------------------------------------------------

    def recover_expired(self, max_attempts: int, now: datetime | None = None) -> list[str]:
        """Deal with in_progress jobs whose lease expired (their worker died or hung).

        Back to in_queue while attempts < max_attempts, else failed with code
        "worker_lost"; a job whose cancel was requested becomes cancelled.
        Returns the ids of the jobs changed. Call at startup and every few seconds.
        """
        now = now or _now()
        expired = sa.and_(
            _J.state == JobState.in_progress.value, _J.lease_expires_at.is_not(None), _J.lease_expires_at < now
        )
        ended = dict(finished_at=now, lease_expires_at=None)
        changed: list[str] = []
        with self._write() as conn:
            for condition, values in (
                (_J.cancel_requested.is_(True), dict(state=JobState.cancelled.value, **ended)),
                (
                    _J.attempts >= max_attempts,
                    dict(
                        state=JobState.failed.value,
                        error_code="worker_lost",
                        error_message=(
                            "The worker running this request stopped responding "
                            f"{max_attempts} time(s); it was not retried again."
                        ),
                        **ended,
                    ),
                ),
                (
                    sa.true(),
                    dict(
                        state=JobState.in_queue.value,
                        started_at=None,
                        worker_id=None,
                        lease_expires_at=None,
                        step=None,
                        total_steps=None,
                    ),
                ),
            ):
                rows = conn.execute(
                    sa.update(jobs_table).where(expired, condition).values(**values).returning(_J.id)
                ).all()
                changed.extend(r.id for r in rows)
        return changed


# --- API keys ----------------------------------------------------------------------

SECRET_PREFIX = "fe_"
_DISPLAY_PREFIX_CHARS = len(SECRET_PREFIX) + 8


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    prefix: str  # the secret's first characters, to recognise it; not enough to use it
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


_K = api_keys_table.c


class KeyStore(_Database):
    """API keys: only the SHA-256 of each secret is stored; the secret is shown once, at creation."""

    def create(self, name: str) -> tuple[str, str]:
        """A new key: (key_id, secret). The secret cannot be recovered later."""
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        key_id = uuid.uuid4().hex
        with self._write() as conn:
            conn.execute(
                sa.insert(api_keys_table).values(
                    id=key_id,
                    name=name,
                    prefix=secret[:_DISPLAY_PREFIX_CHARS],
                    secret_sha256=_sha256(secret),
                    created_at=_now(),
                )
            )
        return key_id, secret

    def verify(self, secret: str) -> str | None:
        """The key id for an active key's secret, else None."""
        if not secret or len(secret) > 512:
            return None
        digest = _sha256(secret)
        with self._read() as conn:
            row = conn.execute(
                sa.select(_K.id, _K.secret_sha256).where(_K.secret_sha256 == digest, _K.revoked_at.is_(None))
            ).one_or_none()
        # The lookup is by hash, so timing reveals nothing about the secret; compare anyway.
        if row is None or not hmac.compare_digest(row.secret_sha256, digest):
            return None
        return row.id

    def list_keys(self) -> list[ApiKey]:
        with self._read() as conn:
            rows = conn.execute(
                sa.select(_K.id, _K.name, _K.prefix, _K.created_at, _K.revoked_at).order_by(_K.created_at)
            ).all()
        return [ApiKey(**r._mapping) for r in rows]

    def revoke(self, key_id_or_prefix: str) -> bool:
        """Revoke the key with this id or displayed prefix; False when no active key matches.

        Raises InvalidInput when a prefix matches several keys.
        """
        match = sa.or_(_K.id == key_id_or_prefix, _K.prefix == key_id_or_prefix)
        with self._write() as conn:
            ids = conn.execute(sa.select(_K.id).where(match, _K.revoked_at.is_(None))).scalars().all()
            if len(ids) > 1:
                raise InvalidInput(f"{key_id_or_prefix!r} matches {len(ids)} keys; give the key id instead.")
            if not ids:
                return False
            conn.execute(sa.update(api_keys_table).where(_K.id == ids[0]).values(revoked_at=_now()))
        return True

    def count_active(self) -> int:
        with self._read() as conn:
            return int(conn.execute(sa.select(sa.func.count()).where(_K.revoked_at.is_(None))).scalar_one())
