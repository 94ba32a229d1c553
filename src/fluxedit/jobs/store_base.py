"""The plumbing under both sides of the job store: write transactions that record webhook events.

Every state change a webhook reports (started, progress, completed, failed,
cancelled) writes its outbox event (fluxedit.jobs.outbox) in the same
transaction as the change; `on_event` listeners are called after such a
transaction commits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from fluxedit.jobs import outbox
from fluxedit.jobs.db import Database, utc_now
from fluxedit.jobs.job import job_snapshot
from fluxedit.jobs.state import JobState

# How often a conditional UPDATE that lost a race (the row changed state meanwhile) is tried again.
CLAIM_RETRIES = 20


class Events:
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


class StoreBase(Database):
    """A `Database` whose writes can record webhook events (`_write_events`)."""

    def __init__(self, database: str | sa.Engine, *, progress_interval_s: float = 1.0) -> None:
        super().__init__(database)
        self._progress_interval_s = progress_interval_s
        self._event_listeners: list[Callable[[], None]] = []

    def on_event(self, listener: Callable[[], None]) -> None:
        """Call `listener` (quickly; it must not raise) whenever this store has written webhook events."""
        self._event_listeners.append(listener)

    @contextmanager
    def _write_events(self) -> Iterator[Events]:
        with self._write() as conn:
            events = Events(conn, self._progress_interval_s)
            yield events
        if events.written:
            for listener in self._event_listeners:
                listener()
