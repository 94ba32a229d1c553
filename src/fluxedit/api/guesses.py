"""A bound on guessing request ids: lookups of ids a key does not have, per key and minute."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

from fluxedit.errors import FluxeditError

WINDOW_S = 60.0


class TooManyGuesses(FluxeditError):
    code = "rate_limited"
    status = 429

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class GuessLimit:
    """At most `per_minute` lookups of unknown ids per key in any 60 seconds.

    Only misses are counted and limited: a key polling the ids it owns is never slowed
    by this, however often it polls. Thread-safe (handlers run in a thread pool).
    """

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._misses: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def miss(self, key_id: str, request_id: str) -> None:
        """Count a lookup of an id this key does not have; TooManyGuesses once over the limit."""
        now = self._clock()
        with self._lock:
            recent = self._misses.setdefault(key_id, deque(maxlen=self.per_minute))
            if len(recent) == self.per_minute and now - recent[0] < WINDOW_S:
                wait = math.ceil(WINDOW_S - (now - recent[0]))
                raise TooManyGuesses(
                    f"This API key looked up {self.per_minute} unknown request ids within a minute; "
                    f"{request_id!r} is not looked up. Retry in {wait} s.",
                    retry_after_s=wait,
                )
            recent.append(now)
