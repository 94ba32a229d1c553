"""The worker's side of the job store: claiming jobs, holding their leases, finishing them.

A running job holds a lease (``lease_expires_at``) that its worker renews with
`Leases.heartbeat`; `Leases.recover_expired` puts jobs whose worker died back
in the queue (or fails them with ``worker_lost`` after ``max_attempts``).
Lease times come from the clock of the process that writes them, so machines
sharing a database need synchronised clocks (NTP), and leases should be much
longer than any expected skew.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from fluxedit.jobs import outbox
from fluxedit.jobs.db import jobs_table, utc_now
from fluxedit.jobs.errors import LeaseLost
from fluxedit.jobs.fairness import fair_queue
from fluxedit.jobs.job import Job
from fluxedit.jobs.state import JobState
from fluxedit.jobs.store_base import CLAIM_RETRIES, StoreBase

_J = jobs_table.c
# Every column but the input, which can be large (data: URIs) and is not needed after a state change.
_NO_INPUT = [column for column in jobs_table.c if column.name != "input"]


class Leases(StoreBase):
    """Claim, heartbeat, complete, fail, cancel (once stopped), release and recover jobs.

    Methods that take `worker_id` only act on a job that is `in_progress` and
    owned by that worker; they return False (or raise `LeaseLost`, for
    `heartbeat`) when it is not, e.g. after the job was recovered from an
    expired lease.
    """

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
        for _ in range(CLAIM_RETRIES):
            with self._read() as conn:
                order = fair_queue(conn, model_ids, default_max_running=default_max_running)
            if not order:
                return None
            # The conditional UPDATE decides: a job another claimer took meanwhile is skipped.
            for candidate in order[:CLAIM_RETRIES]:
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
