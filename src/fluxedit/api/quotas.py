"""Per-key limits at submit: queued jobs (from the job table) and requests per minute (per API process)."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

from fluxedit.errors import FluxeditError
from fluxedit.runtime import Runtime

WINDOW_S = 60.0
QUEUED_RETRY_S = 10  # a queued job takes seconds to minutes; a short hint, clients back off further


class KeyLimited(FluxeditError):
    code = "key_limit_reached"
    status = 429

    def __init__(self, message: str, *, retry_after_s: int, limit: str) -> None:
        super().__init__(message, field=limit)
        self.retry_after_s = retry_after_s


class KeyQuota:
    """Checks a key's submit against its limits (Runtime.key_limits, defaults from Settings).

    Only this key is refused: other keys' submits and jobs are untouched. Thread-safe.
    """

    def __init__(self, runtime: Runtime, clock: Callable[[], float] = time.monotonic) -> None:
        self._runtime = runtime
        self._clock = clock
        self._submits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def check_submit(self, key_id: str) -> None:
        limits = self._runtime.key_limits.limits_of(key_id).with_defaults(self._runtime.settings)
        if limits.requests_per_minute is not None:
            self._count_request(key_id, limits.requests_per_minute)
        if limits.max_queued is not None:
            queued = self._runtime.store.queued_count_for_key(key_id)
            if queued >= limits.max_queued:
                raise KeyLimited(
                    f"This API key already has {queued} queued jobs, its limit max_queued={limits.max_queued}; "
                    f"retry when some have started.",
                    retry_after_s=QUEUED_RETRY_S,
                    limit="max_queued",
                )

    def _count_request(self, key_id: str, per_minute: int) -> None:
        now = self._clock()
        with self._lock:
            recent = self._submits.setdefault(key_id, deque())
            while recent and now - recent[0] >= WINDOW_S:
                recent.popleft()
            if len(recent) >= per_minute:
                wait = math.ceil(WINDOW_S - (now - recent[0]))
                raise KeyLimited(
                    f"This API key made {per_minute} requests within a minute, its limit "
                    f"requests_per_minute={per_minute}; retry in {wait} s.",
                    retry_after_s=wait,
                    limit="requests_per_minute",
                )
            recent.append(now)
