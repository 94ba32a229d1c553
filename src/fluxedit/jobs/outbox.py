"""The webhook outbox: events to deliver, kept in the job database.

`write_event` adds an event inside the transaction of the job state change that
causes it (fluxedit.jobs.store), so a crash loses none: the event exists exactly
when the change does. `Outbox` is what delivering processes use:

- `claim_due` takes due events with one conditional UPDATE each, so two processes
  never send the same attempt; a claim lasts `lease_s`, after which an attempt
  whose process died is taken again (at least once; the event's id is the same on
  every try, for receivers to drop duplicates);
- an event is not claimed while an earlier event of its request is pending, so a
  request's events arrive in order;
- `record` ends the attempt: delivered, gone (410), refused (the address policy),
  failed after the last try, or pending again at the next time of the schedule.

A progress event is dropped rather than sent late once a newer event of its
request exists.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from fluxedit.jobs.db import Database, utc_now, webhook_attempts_table, webhook_outbox_table
from fluxedit.jobs.state import JobState

STARTED = "request.started"
PROGRESS = "request.progress"
COMPLETED = "request.completed"
FAILED = "request.failed"
CANCELLED = "request.cancelled"

# What a job in each state reports, and which `webhook_events_filter` entry asks for it.
EVENT_OF_STATE = {
    JobState.in_progress: STARTED,
    JobState.completed: COMPLETED,
    JobState.failed: FAILED,
    JobState.cancelled: CANCELLED,
}
FILTER_OF_EVENT = {
    STARTED: "start",
    PROGRESS: "progress",
    COMPLETED: "completed",
    FAILED: "completed",
    CANCELLED: "completed",
}
DEFAULT_FILTER = ("completed",)
NATIVE_FORMAT = "native"


@dataclass(frozen=True)
class Webhook:
    """What a request asked for: where its events go, which of them, in which face's form.

    `events` are filter names (start, progress, completed); `format` picks the body and
    signature (fluxedit.webhooks.formats); `secret` is one the request brought itself
    (BFL's `webhook_secret`), else the API key's signs.
    """

    url: str
    events: tuple[str, ...] = DEFAULT_FILTER
    format: str = NATIVE_FORMAT
    secret: str | None = None


EventState = Literal["pending", "delivered", "failed", "gone", "refused", "dropped"]
PENDING = "pending"

_O = webhook_outbox_table.c
_A = webhook_attempts_table.c
ABANDONED = "no answer was recorded: the process sending it stopped"


# --- writing, inside the job store's transactions -----------------------------------------


def write_event(
    conn: Connection, job: Mapping[str, Any], event_type: str, *, now: datetime, progress_interval_s: float
) -> bool:
    """Add `event_type` for `job` (its snapshot: see JobStore) if its webhook asks for it; True if added.

    A progress event is skipped when the request had one less than
    `progress_interval_s` ago; any new event drops the request's older progress
    events that no one is sending.
    """
    url = job.get("webhook_url")
    if not url or FILTER_OF_EVENT[event_type] not in (job.get("webhook_filter") or DEFAULT_FILTER):
        return False
    if event_type == PROGRESS and _progress_since(conn, job["id"], now - timedelta(seconds=progress_interval_s)):
        return False
    conn.execute(
        sa.update(webhook_outbox_table)
        .where(_O.job_id == job["id"], _O.type == PROGRESS, _O.state == PENDING, _unclaimed(now))
        .values(state="dropped", finished_at=now, next_attempt_at=None)
    )
    conn.execute(
        sa.insert(webhook_outbox_table).values(
            id=f"msg_{uuid.uuid4().hex}",
            job_id=job["id"],
            key_id=job["key_id"],
            url=url,
            format=job.get("webhook_format") or NATIVE_FORMAT,
            type=event_type,
            snapshot=dict(job),
            created_at=now,
            state=PENDING,
            attempts=0,
            next_attempt_at=now,
        )
    )
    return True


def _progress_since(conn: Connection, job_id: str, since: datetime) -> bool:
    query = sa.select(_O.seq).where(_O.job_id == job_id, _O.type == PROGRESS, _O.created_at > since).limit(1)
    return conn.execute(query).first() is not None


def _unclaimed(now: datetime) -> sa.ColumnElement[bool]:
    """No process is sending it now (never claimed, or its claim ran out)."""
    return sa.or_(_O.claim_token.is_(None), _O.claim_expires_at < now)


# --- what delivering processes see ------------------------------------------------------------


@dataclass(frozen=True)
class OutboxEvent:
    id: str
    seq: int
    job_id: str
    key_id: str
    url: str
    format: str
    type: str
    snapshot: dict
    created_at: datetime
    state: str
    attempts: int
    next_attempt_at: datetime | None = None
    claim_token: str | None = None
    claim_expires_at: datetime | None = None
    finished_at: datetime | None = None

    @classmethod
    def from_row(cls, row: sa.Row) -> OutboxEvent:
        return cls(**row._mapping)


@dataclass(frozen=True)
class Attempt:
    event_id: str
    number: int
    started_at: datetime
    finished_at: datetime | None = None
    status_code: int | None = None
    error: str | None = None
    next_attempt_at: datetime | None = None


@dataclass(frozen=True)
class Outcome:
    """How one attempt went. `kind`: delivered (2xx), gone (410), refused (address policy), failed."""

    kind: Literal["delivered", "gone", "refused", "failed"]
    status_code: int | None = None
    error: str | None = None


class Outbox(Database):
    """Claiming, recording and listing webhook events (see the module doc)."""

    def claim_due(self, limit: int, lease_s: float, now: datetime | None = None) -> list[OutboxEvent]:
        """Up to `limit` due events, each claimed for this caller alone for `lease_s` seconds."""
        now = now or utc_now()
        with self._read() as conn:
            ids = conn.execute(
                sa.select(_O.id).where(self._claimable(now)).order_by(_O.next_attempt_at, _O.seq).limit(limit)
            ).scalars()
            ids = list(ids)
        claimed = (self._claim(event_id, lease_s, now) for event_id in ids)
        return [event for event in claimed if event is not None]

    @staticmethod
    def _claimable(now: datetime) -> sa.ColumnElement[bool]:
        earlier = webhook_outbox_table.alias("earlier")
        blocked = sa.exists().where(earlier.c.job_id == _O.job_id, earlier.c.seq < _O.seq, earlier.c.state == PENDING)
        return sa.and_(_O.state == PENDING, _O.next_attempt_at <= now, _unclaimed(now), ~blocked)

    def _claim(self, event_id: str, lease_s: float, now: datetime) -> OutboxEvent | None:
        with self._write() as conn:
            row = conn.execute(
                sa.update(webhook_outbox_table)
                .where(_O.id == event_id, self._claimable(now))
                .values(
                    claim_token=uuid.uuid4().hex,
                    claim_expires_at=now + timedelta(seconds=lease_s),
                    attempts=_O.attempts + 1,
                )
                .returning(*webhook_outbox_table.c)
            ).one_or_none()
            if row is None:
                return None  # another process claimed it first, or it stopped being due
            conn.execute(
                sa.update(webhook_attempts_table)
                .where(_A.event_id == event_id, _A.finished_at.is_(None))
                .values(finished_at=now, error=ABANDONED)
            )
            conn.execute(
                sa.insert(webhook_attempts_table).values(event_id=event_id, number=row.attempts, started_at=now)
            )
        return OutboxEvent.from_row(row)

    def record(self, event: OutboxEvent, outcome: Outcome, retry_s: list[float]) -> str:
        """End the attempt `event` was claimed for; returns the event's state after it."""
        now = utc_now()
        with self._write() as conn:
            state, next_at = self._after(conn, event, outcome, retry_s, now)
            conn.execute(
                sa.update(webhook_outbox_table)
                .where(_O.id == event.id, _O.claim_token == event.claim_token, _O.state == PENDING)
                .values(
                    state=state,
                    next_attempt_at=next_at,
                    claim_token=None,
                    claim_expires_at=None,
                    finished_at=None if state == PENDING else now,
                )
            )
            conn.execute(
                sa.update(webhook_attempts_table)
                .where(_A.event_id == event.id, _A.number == event.attempts, _A.finished_at.is_(None))
                .values(finished_at=now, status_code=outcome.status_code, error=outcome.error, next_attempt_at=next_at)
            )
        return state

    @staticmethod
    def _after(
        conn: Connection, event: OutboxEvent, outcome: Outcome, retry_s: list[float], now: datetime
    ) -> tuple[str, datetime | None]:
        if outcome.kind != "failed":
            return outcome.kind, None
        if event.type == PROGRESS and _newer_event(conn, event):
            return "dropped", None
        if event.attempts <= len(retry_s):
            return PENDING, now + timedelta(seconds=retry_s[event.attempts - 1])
        return "failed", None

    def events_for(self, job_id: str) -> list[tuple[OutboxEvent, list[Attempt]]]:
        """A request's events, oldest first, each with its attempts."""
        with self._read() as conn:
            events = [
                OutboxEvent.from_row(r)
                for r in conn.execute(sa.select(webhook_outbox_table).where(_O.job_id == job_id).order_by(_O.seq))
            ]
            rows = conn.execute(
                sa.select(webhook_attempts_table)
                .where(_A.event_id.in_([e.id for e in events]))
                .order_by(_A.event_id, _A.number)
            ).all()
        attempts: dict[str, list[Attempt]] = {}
        for row in rows:
            attempts.setdefault(row.event_id, []).append(Attempt(**row._mapping))
        return [(event, attempts.get(event.id, [])) for event in events]


def _newer_event(conn: Connection, event: OutboxEvent) -> bool:
    query = sa.select(_O.seq).where(_O.job_id == event.job_id, _O.seq > event.seq).limit(1)
    return conn.execute(query).first() is not None
