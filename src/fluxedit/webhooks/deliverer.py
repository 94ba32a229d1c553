"""The delivery loop of an API process: claim due outbox events, send them, record how it went.

A thread looks for due events every `webhook_poll_interval_s` (events other
processes wrote: cluster workers), and at once when woken (`wake`: this process
wrote an event, or a delivery ended and the request's next event may be due).
Sends run on a pool of `webhook_concurrency` threads, so a slow receiver holds
one thread, not the loop. Claims are atomic (fluxedit.jobs.outbox), so any
number of API processes can run this loop on one database.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from fluxedit.config import Settings
from fluxedit.jobs.db import utc_now
from fluxedit.jobs.outbox import Outbox, OutboxEvent, Outcome
from fluxedit.netpolicy import Resolver, system_resolver
from fluxedit.webhooks.sender import Delivery, post

log = logging.getLogger(__name__)

Render = Callable[[OutboxEvent, datetime], Delivery]


def claim_lease_s(timeout_s: float) -> float:
    """How long a claim lasts: past it, an attempt whose process died is taken again."""
    return 2 * timeout_s + 5


class Deliverer:
    def __init__(
        self,
        outbox: Outbox,
        render: Render,
        settings: Settings,
        *,
        resolver: Resolver = system_resolver,
        on_attempt: Callable[[str], None] | None = None,
    ) -> None:
        self._outbox, self._render, self._settings, self._resolver = outbox, render, settings, resolver
        self._on_attempt = on_attempt  # the event's state after each attempt (metrics)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._pool = ThreadPoolExecutor(self._settings.webhook_concurrency, thread_name_prefix="fluxedit-webhook")
        self._thread = threading.Thread(target=self._loop, name="fluxedit-webhooks", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look for due events now (e.g. this process just wrote one)."""
        self._wake.set()

    def stop(self, timeout: float | None = 5) -> None:
        """Claim nothing more; wait up to `timeout` s for the loop. Sends in flight finish or are re-sent later."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # --- the loop ---------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # before claiming: a wake from here on makes the wait return at once
            claimed = self._claim()
            if not claimed:
                self._wake.wait(self._settings.webhook_poll_interval_s)

    def _claim(self) -> int:
        with self._lock:
            free = self._settings.webhook_concurrency - self._in_flight
        if free <= 0:
            return 0
        try:
            events = self._outbox.claim_due(free, claim_lease_s(self._settings.webhook_timeout_s))
        except Exception:
            log.exception("could not claim webhook events; trying again")
            return 0
        for event in events:
            with self._lock:
                self._in_flight += 1
            self._pool.submit(self._deliver, event)
        return len(events)

    def _deliver(self, event: OutboxEvent) -> None:
        try:
            state = self._outbox.record(event, self._attempt(event), self._settings.webhook_retry_s)
            if self._on_attempt is not None:
                self._on_attempt(state)
            log.info(
                "webhook %s (%s, request %s) attempt %d: %s", event.id, event.type, event.job_id, event.attempts, state
            )
        except Exception:
            log.exception("webhook %s: could not record its attempt; it is tried again after its claim", event.id)
        finally:
            with self._lock:
                self._in_flight -= 1
            self._wake.set()  # the request's next event may be due now

    def _attempt(self, event: OutboxEvent) -> Outcome:
        try:
            delivery = self._render(event, utc_now())
        except Exception as exc:
            log.exception("webhook %s: could not render it", event.id)
            return Outcome("failed", error=f"the event could not be rendered ({type(exc).__name__})")
        return post(
            event.url,
            delivery,
            allow=self._settings.fetch_allow,
            timeout_s=self._settings.webhook_timeout_s,
            resolver=self._resolver,
        )
