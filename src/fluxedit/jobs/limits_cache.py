"""A key's limits read once per few seconds in a process, not once per submit.

Every submit checks its key's limits (KeyQuota); reading the key_limits table for
each is a database round trip on the hot path. A key's limits are remembered for
`ttl_s` (Settings.key_cache_s, the key cache's time, 2 s by default), so a change
made with `fluxedit keys update` takes effect within `ttl_s` in every process: each
forgets on its own. Entries are bounded in number, like KeyCache's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from fluxedit.jobs.key_limits import KeyLimits

MAX_ENTRIES = 10_000


class LimitsCache:
    def __init__(
        self,
        read: Callable[[str], KeyLimits],
        *,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._ttl_s = ttl_s
        self._clock = clock
        self._known: dict[str, tuple[KeyLimits, float]] = {}  # key id -> (its limits, valid until)
        self._lock = threading.Lock()

    def limits_of(self, key_id: str) -> KeyLimits:
        """The limits set on `key_id` (as KeyStore.limits_of), at most `ttl_s` old."""
        if self._ttl_s <= 0:
            return self._read(key_id)
        now = self._clock()
        with self._lock:
            known = self._known.get(key_id)
        if known is not None and known[1] > now:
            return known[0]
        # Read outside the lock: a slow read holds up only the submits that missed, not every key's.
        limits = self._read(key_id)
        with self._lock:
            if len(self._known) >= MAX_ENTRIES and key_id not in self._known:
                self._known.clear()  # rare: more keys submitting than this in one process
            self._known[key_id] = (limits, now + self._ttl_s)
        return limits
