"""The job state of record, on SQLAlchemy Core (SQLite or PostgreSQL).

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

import math
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from fluxedit.errors import InvalidInput, NotFound
from fluxedit.jobs import outbox
from fluxedit.jobs.db import Database, jobs_table, key_limits_table, utc_now
from fluxedit.jobs.errors import IdempotencyConflict, JobConflict, LeaseLost, QueueFull
from fluxedit.jobs.fairness import Queued, fair_order
from fluxedit.jobs.state import JobState
from fluxedit.storage.signing import without_signatures


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
    phase: str | None = None
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
    webhook_url: str | None = None
    webhook_filter: list[str] | None = None
    webhook_format: str | None = None
    webhook_secret: str | None = None
    base_url: str | None = None

    @classmethod
    def from_row(cls, row: sa.Row, **missing: Any) -> Job:
        values = {**missing, **row._mapping}
        values["state"] = JobState(values["state"])
        values["cancel_requested"] = bool(values["cancel_requested"])
        values["outputs"] = list(values.get("outputs") or [])
        return cls(**values)

    @classmethod
    def from_snapshot(cls, snapshot: dict, input: dict) -> Job:
        """The job as `job_snapshot` saw it (the input, which never changes, is not in a snapshot)."""
        values = {k: v for k, v in snapshot.items() if k in _FIELDS}
        for name in _TIME_FIELDS:
            if values.get(name) is not None:
                values[name] = datetime.fromisoformat(values[name])
        values["state"] = JobState(values["state"])
        values["outputs"] = list(values.get("outputs") or [])
        return cls(**values, input=input)


def job_snapshot(row: sa.Row) -> dict:
    """A JSON-ready copy of a job row without its input: what a webhook event reports."""
    values = {k: v for k, v in row._mapping.items() if k != "input"}
    values["cancel_requested"] = bool(values["cancel_requested"])
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in values.items()}


_FIELDS = {f.name for f in fields(Job)} - {"input"}
_TIME_FIELDS = ("created_at", "started_at", "finished_at", "lease_expires_at")


def _encode_cursor(seq: int) -> str:
    return f"s{seq}"


# What `_encode_cursor` writes (and schema.CURSOR_PATTERN documents): "s" and a seq without
# sign or leading zeros, short enough to be a BIGINT.
_CURSOR = re.compile(r"s(0|[1-9][0-9]{0,17})")


def _decode_cursor(cursor: str) -> int:
    """The seq in a cursor `_encode_cursor` made; InvalidInput (field "cursor") for anything else."""
    match = _CURSOR.fullmatch(cursor)
    if match is None:
        raise InvalidInput("cursor is not one this server issued; pass next_cursor as given.", field="cursor")
    return int(match.group(1))


_J = jobs_table.c
_L = key_limits_table.c
_STATUS_COLUMNS = [column for column in jobs_table.c if column.name not in ("input", "outputs", "timings")]
_CLAIM_RETRIES = 20
# Every column but the input, which can be large (data: URIs) and is not needed after a state change.
_NO_INPUT = [column for column in jobs_table.c if column.name != "input"]


class _Events:
    """The webhook events one write transaction adds to the outbox (fluxedit.jobs.outbox)."""

    def __init__(self, conn: sa.Connection, progress_interval_s: float) -> None:
        self.conn = conn
        self._progress_interval_s = progress_interval_s
        self.written = False

    def add(self, row: sa.Row, event_type: str | None = None) -> None:
        """Record the event of `row`'s state (or `event_type`) if its webhook asks for it."""
        event_type = event_type or outbox.EVENT_OF_STATE[JobState(row.state)]
        if outbox.write_event(
            self.conn, job_snapshot(row), event_type, now=utc_now(), progress_interval_s=self._progress_interval_s
        ):
            self.written = True


class JobStore(Database):
    """Jobs in SQL: submit, claim, heartbeat, finish, cancel, recover.

    Methods that take `worker_id` only act on a job that is `in_progress` and
    owned by that worker; they return False (or raise `LeaseLost`, for
    `heartbeat`) when it is not, e.g. after the job was recovered from an
    expired lease.

    Every state change a webhook reports (started, progress, completed, failed,
    cancelled) writes its outbox event in the same transaction; `on_event`
    listeners are called after such a transaction commits.
    """

    def __init__(self, database: str | sa.Engine, *, progress_interval_s: float = 1.0) -> None:
        super().__init__(database)
        self._progress_interval_s = progress_interval_s
        self._event_listeners: list[Callable[[], None]] = []

    def on_event(self, listener: Callable[[], None]) -> None:
        """Call `listener` (quickly; it must not raise) whenever this store has written webhook events."""
        self._event_listeners.append(listener)

    @contextmanager
    def _write_events(self) -> Iterator[_Events]:
        with self._write() as conn:
            events = _Events(conn, self._progress_interval_s)
            yield events
        if events.written:
            for listener in self._event_listeners:
                listener()

    # --- submitting and reading -----------------------------------------------------

    def submit(
        self,
        key_id: str,
        model_id: str,
        input: dict,
        *,
        max_queued: int,
        idempotency_key: str | None = None,
        webhook: outbox.Webhook | None = None,
        base_url: str | None = None,
    ) -> Job:
        """Queue a job, or return the job this key already submitted with `idempotency_key`.

        `webhook` says where to send which events, in which form (fluxedit.jobs.outbox);
        `base_url` is the base of absolute URLs in them.

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
            created_at=utc_now(),
            attempts=0,
            cancel_requested=False,
            idempotency_key=idempotency_key,
            webhook_url=webhook.url if webhook else None,
            webhook_filter=list(webhook.events) if webhook else None,
            webhook_format=webhook.format if webhook else None,
            webhook_secret=webhook.secret if webhook else None,
            base_url=base_url,
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
        """How many in_queue jobs of the same model start before `job` (0: next), in the fair
        order of `fluxedit.jobs.fairness`. Meant for in_queue jobs."""
        order = [queued.seq for queued in self.fair_queue([job.model_id])]
        return order.index(job.seq) if job.seq in order else len(order)

    def fair_queue(self, model_ids: Sequence[str], *, default_max_running: int | None = None) -> list[Queued]:
        """The in_queue jobs of `model_ids` in the order they start (see fluxedit.jobs.fairness).

        With `default_max_running` (or any key's own max_running), the jobs of keys that
        have that many jobs in_progress already are left out: they wait for one to end.
        """
        ids = list(model_ids)
        with self._read() as conn:
            queued = [
                Queued(row.seq, row.key_id)
                for row in conn.execute(
                    sa.select(_J.seq, _J.key_id).where(_J.state == JobState.in_queue.value, _J.model_id.in_(ids))
                )
            ]
            keys = sorted({q.key_id for q in queued})
            if not keys:
                return []
            last_started = dict(
                conn.execute(
                    sa.select(_J.key_id, sa.func.max(_J.started_at))
                    .where(_J.key_id.in_(keys), _J.model_id.in_(ids), _J.started_at.is_not(None))
                    .group_by(_J.key_id)
                ).all()
            )
            limits = {r.key_id: r for r in conn.execute(sa.select(key_limits_table).where(_L.key_id.in_(keys)))}
            running = dict(
                conn.execute(
                    sa.select(_J.key_id, sa.func.count())
                    .where(_J.key_id.in_(keys), _J.state == JobState.in_progress.value)
                    .group_by(_J.key_id)
                ).all()
            )
        priority = {k: r.priority for k, r in limits.items() if r.priority is not None}
        full = set()
        for key in keys:
            own = limits[key].max_running if key in limits else None
            cap = own if own is not None else default_max_running
            if cap is not None and running.get(key, 0) >= cap:
                full.add(key)
        last = {k: v for k, v in last_started.items() if v is not None}
        return fair_order([q for q in queued if q.key_id not in full], last, priority)

    def queued_count(self, model_id: str) -> int:
        query = sa.select(sa.func.count()).where(_J.state == JobState.in_queue.value, _J.model_id == model_id)
        with self._read() as conn:
            return int(conn.execute(query).scalar_one())

    def queued_count_for_key(self, key_id: str) -> int:
        """This key's in_queue jobs, all models together (its max_queued limit)."""
        query = sa.select(sa.func.count()).where(_J.state == JobState.in_queue.value, _J.key_id == key_id)
        with self._read() as conn:
            return int(conn.execute(query).scalar_one())

    def queued_jobs(self) -> list[tuple[str, str]]:
        """(id, model_id) of every in_queue job, oldest first."""
        query = sa.select(_J.id, _J.model_id).where(_J.state == JobState.in_queue.value).order_by(_J.seq)
        with self._read() as conn:
            return [(row.id, row.model_id) for row in conn.execute(query)]

    # --- workers ----------------------------------------------------------------------

    def _claim(self, which: sa.ColumnElement[bool], worker_id: str, lease_s: float) -> Job | None:
        """Move the job `which` selects to in_progress for this worker, if it is still in_queue."""
        now = utc_now()
        with self._write_events() as events:
            row = events.conn.execute(
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
                    phase=None,
                )
                .returning(*jobs_table.c)
            ).one_or_none()
            if row is not None:
                events.add(row)
        return Job.from_row(row) if row else None

    def claim_next(
        self, model_ids: Sequence[str], worker_id: str, lease_s: float, *, default_max_running: int | None = None
    ) -> Job | None:
        """Move the next in_queue job of `model_ids` in the fair order (fluxedit.jobs.fairness) to
        in_progress for this worker; None if there is none (or every key waiting is at its max_running)."""
        if not model_ids:
            return None
        for _ in range(_CLAIM_RETRIES):
            order = self.fair_queue(model_ids, default_max_running=default_max_running)
            if not order:
                return None
            # The conditional UPDATE decides: a job another claimer took meanwhile is skipped.
            for candidate in order[:_CLAIM_RETRIES]:
                job = self._claim(_J.seq == candidate.seq, worker_id, lease_s)
                if job is not None:
                    return job
        return None

    def claim(self, job_id: str, worker_id: str, lease_s: float) -> Job | None:
        """Move this in_queue job to in_progress for this worker; None if it is not in_queue."""
        return self._claim(_J.id == job_id, worker_id, lease_s)

    def _owned(self, job_id: str, worker_id: str) -> sa.ColumnElement[bool]:
        return sa.and_(_J.id == job_id, _J.worker_id == worker_id, _J.state == JobState.in_progress.value)

    def heartbeat(
        self,
        job_id: str,
        worker_id: str,
        lease_s: float,
        step: int | None = None,
        total: int | None = None,
        *,
        phase: str | None = None,
    ) -> bool:
        """Extend the lease and record progress; True when a cancel was requested.

        A call with `step` (the worker's progress callback: a new step) is a
        progress event. Raises LeaseLost when this worker no longer owns the job:
        it must stop and write nothing more for it.
        """
        values: dict[str, Any] = {"lease_expires_at": utc_now() + timedelta(seconds=lease_s)}
        if step is not None:
            values["step"] = step
        if total is not None:
            values["total_steps"] = total
        if phase is not None:
            values["phase"] = phase
        with self._write_events() as events:
            row = events.conn.execute(
                sa.update(jobs_table).where(self._owned(job_id, worker_id)).values(**values).returning(*_NO_INPUT)
            ).one_or_none()
            if row is not None and step is not None:
                events.add(row, outbox.PROGRESS)
        if row is None:
            raise LeaseLost(f"Job {job_id} is no longer owned by worker {worker_id}.")
        return bool(row.cancel_requested)

    def _finish(self, job_id: str, worker_id: str, state: JobState, **values: Any) -> bool:
        with self._write_events() as events:
            row = events.conn.execute(
                sa.update(jobs_table)
                .where(self._owned(job_id, worker_id))
                .values(state=state.value, finished_at=utc_now(), lease_expires_at=None, phase=None, **values)
                .returning(*_NO_INPUT)
            ).one_or_none()
            if row is not None:
                events.add(row)
        return row is not None

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
        with self._write_events() as events:
            conn = events.conn
            cancelled = conn.execute(
                sa.update(jobs_table)
                .where(self._owned(job_id, worker_id), _J.cancel_requested.is_(True))
                .values(state=JobState.cancelled.value, finished_at=utc_now(), lease_expires_at=None)
                .returning(*_NO_INPUT)
            ).one_or_none()
            if cancelled is not None:
                events.add(cancelled)
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
                    phase=None,
                )
            ).rowcount
        return (cancelled is not None) + requeued == 1

    # --- clients ------------------------------------------------------------------------

    def cancel(self, job_id: str, key_id: str) -> Job:
        """Cancel a job of this key: a queued one at once, a running one at its worker's next step.

        Returns the job after the change. Raises NotFound when this key has no
        such job and JobConflict (code "already_finished", with `.state`) when it
        has already finished.
        """
        mine = sa.and_(_J.id == job_id, _J.key_id == key_id)
        for _ in range(_CLAIM_RETRIES):
            with self._write_events() as events:
                conn = events.conn
                row = conn.execute(
                    sa.update(jobs_table)
                    .where(mine, _J.state == JobState.in_queue.value)
                    .values(state=JobState.cancelled.value, finished_at=utc_now())
                    .returning(*jobs_table.c)
                ).one_or_none()
                if row is not None:
                    events.add(row)
                else:
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
                raise NotFound(f"No request {job_id} was found for this API key.")
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
        now = now or utc_now()
        expired = sa.and_(
            _J.state == JobState.in_progress.value, _J.lease_expires_at.is_not(None), _J.lease_expires_at < now
        )
        ended = dict(finished_at=now, lease_expires_at=None)
        changed: list[str] = []
        with self._write_events() as events:
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
                        phase=None,
                    ),
                ),
            ):
                rows = events.conn.execute(
                    sa.update(jobs_table).where(expired, condition).values(**values).returning(*_NO_INPUT)
                ).all()
                for row in rows:
                    if JobState(row.state).finished:
                        events.add(row)
                changed.extend(r.id for r in rows)
        return changed
