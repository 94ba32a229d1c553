"""The job state of record, on SQLAlchemy Core (SQLite or PostgreSQL): `JobStore`.

Every state change is one conditional UPDATE (``... WHERE id = ? AND state = ?``)
whose row count says whether it happened, so several threads or processes can
share one database: a job is claimed by one worker only, and ends
``completed | failed | cancelled`` exactly once.

This module holds the API's side (submit, read, list, queue position, cancel);
the worker's side (claim, heartbeat, finish, release, recover) is
`fluxedit.jobs.leases.Leases`, which `JobStore` extends, and the job record is
`fluxedit.jobs.job.Job` (re-exported here).
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Sequence

import sqlalchemy as sa

from fluxedit.errors import InvalidInput, NotFound
from fluxedit.jobs import outbox
from fluxedit.jobs.db import jobs_table, queue_counts_table, utc_now
from fluxedit.jobs.errors import IdempotencyConflict, JobConflict, QueueFull
from fluxedit.jobs.fairness import Queued, fair_queue
from fluxedit.jobs.job import Job
from fluxedit.jobs.leases import Leases
from fluxedit.jobs.position import queue_position
from fluxedit.jobs.state import JobState
from fluxedit.jobs.store_base import CLAIM_RETRIES
from fluxedit.storage.signing import without_signatures

__all__ = ["Job", "JobStore"]


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
_QC = queue_counts_table.c
_STATUS_COLUMNS = [column for column in jobs_table.c if column.name not in ("input", "outputs", "timings")]
# Built once, for the hot paths: a status poll or a submit binds values instead of building
# (and coercing) a new statement each time.
_GET_STATUS = sa.select(*_STATUS_COLUMNS).where(_J.id == sa.bindparam("job_id"), _J.key_id == sa.bindparam("key_id"))
_INSERT_JOB = sa.insert(jobs_table).returning(*jobs_table.c)
_SUM_QUEUED = sa.select(sa.func.coalesce(sa.func.sum(_QC.queued), 0))
_QUEUED_OF_MODEL = _SUM_QUEUED.where(_QC.model_id == sa.bindparam("model_id"))
_QUEUED_OF_KEY = _SUM_QUEUED.where(_QC.key_id == sa.bindparam("key_id"))


class JobStore(Leases):
    """Jobs in SQL: submit, read, cancel here; claim, heartbeat, finish, recover in `Leases`.

    Every state change a webhook reports (started, progress, completed, failed,
    cancelled) writes its outbox event in the same transaction; `on_event`
    listeners are called after such a transaction commits.
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
                row = conn.execute(_INSERT_JOB, values).one()
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

    def get_status(self, job_id: str, key_id: str) -> tuple[Job, int | None] | None:
        """This key's job as a status answer needs it, and its queue position when in_queue (see
        `queue_position`), on one connection. Its input and outputs (which may be large) are not
        read, and are left empty."""
        with self._read() as conn:
            row = conn.execute(_GET_STATUS, {"job_id": job_id, "key_id": key_id}).one_or_none()
            if row is None:
                return None
            job = Job.from_row(row, input={})
            if job.state != JobState.in_queue:
                return job, None
            return job, queue_position(conn, job.seq, job.key_id, job.model_id)

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
        order of `fluxedit.jobs.fairness`, counted as `fluxedit.jobs.position` says. Meant for in_queue jobs."""
        with self._read() as conn:
            return queue_position(conn, job.seq, job.key_id, job.model_id)

    def queue_positions(self, jobs: Sequence[Job]) -> dict[str, int]:
        """queue_position of each job in `jobs` (meant for in_queue ones), reading each model's fair order once."""
        positions: dict[str, int] = {}
        for model_id in {job.model_id for job in jobs}:
            order = {entry.seq: n for n, entry in enumerate(self.fair_queue([model_id]))}
            for job in jobs:
                if job.model_id == model_id:
                    positions[job.id] = order.get(job.seq, len(order))
        return positions

    def fair_queue(self, model_ids: Sequence[str], *, default_max_running: int | None = None) -> list[Queued]:
        """The in_queue jobs of `model_ids` in the order they start (see fluxedit.jobs.fairness).

        With `default_max_running` (or any key's own max_running), the jobs of keys that
        have that many jobs in_progress already are left out: they wait for one to end.
        """
        with self._read() as conn:
            return fair_queue(conn, model_ids, default_max_running=default_max_running)

    # The counts below read `queue_counts`, which triggers keep (fluxedit.jobs.queue_counts):
    # a few rows per model or key, however long the queue.

    def queued_count(self, model_id: str) -> int:
        """`model_id`'s in_queue jobs."""
        with self._read() as conn:
            return int(conn.execute(_QUEUED_OF_MODEL, {"model_id": model_id}).scalar_one())

    def queued_counts(self) -> dict[str, int]:
        """Model id -> its in_queue jobs, for every model with any: one query."""
        query = sa.select(_QC.model_id, sa.func.sum(_QC.queued)).group_by(_QC.model_id)
        with self._read() as conn:
            return {model_id: int(count) for model_id, count in conn.execute(query) if count}

    def queued_count_for_key(self, key_id: str) -> int:
        """This key's in_queue jobs, all models together (its max_queued limit)."""
        with self._read() as conn:
            return int(conn.execute(_QUEUED_OF_KEY, {"key_id": key_id}).scalar_one())

    def queued_jobs(self) -> list[tuple[str, str]]:
        """(id, model_id) of every in_queue job, oldest first."""
        query = sa.select(_J.id, _J.model_id).where(_J.state == JobState.in_queue.value).order_by(_J.seq)
        with self._read() as conn:
            return [(row.id, row.model_id) for row in conn.execute(query)]

    # --- cancelling ---------------------------------------------------------------------

    def cancel(self, job_id: str, key_id: str) -> Job:
        """Cancel a job of this key: a queued one at once, a running one at its worker's next step.

        Returns the job after the change. Raises NotFound when this key has no
        such job and JobConflict (code "already_finished", with `.state`) when it
        has already finished.
        """
        mine = sa.and_(_J.id == job_id, _J.key_id == key_id)
        for _ in range(CLAIM_RETRIES):
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
