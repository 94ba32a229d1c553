"""A request's progress as it happens: the SSE stream, and `Prefer: wait` on submit.

Both watch the job row, the state of record, so they work on whichever API process a
client reaches, whichever process or machine runs the job: every
`stream_poll_interval_s` the row is read and a change of state or step is an event.

Event ids are the job's position (`<state rank>.<step>`): a client that reconnects
with `Last-Event-ID` gets only what happened after what it saw.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

from fastapi import Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from fluxedit.errors import FluxeditError
from fluxedit.jobs.job import Job
from fluxedit.jobs.state import JobState
from fluxedit.runtime import Runtime

PING_S = 15  # a comment this often keeps proxies from closing an idle stream
MAX_WAIT_S = 60
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait(?:\s*=\s*(\d+))?(?:$|[,;\s])", re.IGNORECASE)
_RANK = {JobState.in_queue: 0, JobState.in_progress: 1}


class TooManyStreams(FluxeditError):
    code = "too_many_streams"
    status = 429


def position(job: Job) -> str:
    """Where the job is: its state's rank and its step. Grows as the job advances."""
    return f"{_RANK.get(job.state, 2)}.{job.step or 0}"


def _seen(last_event_id: str | None) -> tuple[int, int]:
    try:
        rank, step = (int(part) for part in (last_event_id or "").split("."))
        return rank, step
    except ValueError:
        return (-1, -1)


class StreamSlots:
    """How many streams each key has open in this process, bounded by `max_per_key`."""

    def __init__(self, max_per_key: int) -> None:
        self.max_per_key = max_per_key
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    def acquire(self, key_id: str) -> Callable[[], None]:
        """Take one of the key's slots (TooManyStreams when none is free); returns its release, safe to call twice."""
        with self._lock:
            if self._open[key_id] >= self.max_per_key:
                raise TooManyStreams(
                    f"This API key already has {self._open[key_id]} open streams, the limit; close one "
                    "or poll the status URL instead.",
                )
            self._open[key_id] += 1
        released = threading.Event()

        def release() -> None:
            with self._lock:
                if not released.is_set():
                    released.set()
                    self._open[key_id] -= 1

        return release


async def changes(runtime: Runtime, job: Job, *, since: str | None = None) -> AsyncIterator[Job]:
    """The job now (unless `since` is its position already), then each time its state or step changes, until it ends."""
    seen = _seen(since)
    interval = runtime.settings.stream_poll_interval_s
    while True:
        if _seen(position(job)) > seen:
            seen = _seen(position(job))
            yield job
        if job.state.finished:
            return
        await asyncio.sleep(interval)
        job = await run_in_threadpool(runtime.store.get, job.id) or job


def stream_response(request: Request, runtime: Runtime, job: Job, render, slots: StreamSlots) -> EventSourceResponse:
    """`text/event-stream` of the job's `render(job)` bodies: event `status` while it runs, `result` at its end."""
    release = slots.acquire(job.key_id)  # refused (429) here, before the response starts

    async def events() -> AsyncIterator[ServerSentEvent]:
        try:
            async for current in changes(runtime, job, since=request.headers.get("last-event-id")):
                body = render(current).model_dump(mode="json")
                kind = "result" if current.state.finished else "status"
                yield ServerSentEvent(json.dumps(body), event=kind, id=position(current))
        finally:
            release()

    # The background task also releases the slot when the client left before the first event.
    return EventSourceResponse(
        events(), ping=PING_S, headers={"Cache-Control": "no-store"}, background=BackgroundTask(release)
    )


def wait_seconds(prefer: str | None) -> int | None:
    """`Prefer: wait` -> MAX_WAIT_S; `Prefer: wait=N` -> N (at most MAX_WAIT_S); no wait asked -> None."""
    match = _PREFER_WAIT.search(prefer or "")
    if match is None:
        return None
    return min(int(match.group(1)), MAX_WAIT_S) if match.group(1) else MAX_WAIT_S


async def wait_until_finished(runtime: Runtime, job: Job, seconds: int) -> Job:
    """The job once it ended, or as it is after `seconds`."""
    deadline = time.monotonic() + seconds
    interval = runtime.settings.stream_poll_interval_s
    while not job.state.finished and time.monotonic() < deadline:
        await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        job = await run_in_threadpool(runtime.store.get, job.id) or job
    return job
