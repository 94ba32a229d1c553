"""A key's limits read once per few seconds in a process, not once per submit.

Every submit checks its key's limits (KeyQuota); reading the key_limits table for
each is a database round trip on the hot path. A key's limits are remembered for
`ttl_s` (Settings.key_cache_s, the key cache's time, 2 s by default), so a change
made with `fluxedit keys update` takes effect within `ttl_s` in every process: each
forgets on its own. Entries are bounded in number (jobs/ttl_cache.py), like KeyCache's.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fluxedit.jobs.key_limits import KeyLimits
from fluxedit.jobs.ttl_cache import TtlCache


class LimitsCache:
    def __init__(
        self,
        read: Callable[[str], KeyLimits],
        *,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._known: TtlCache[str, KeyLimits] = TtlCache(ttl_s=ttl_s, clock=clock)  # key id -> its limits

    def limits_of(self, key_id: str) -> KeyLimits:
        """The limits set on `key_id` (as KeyStore.limits_of), at most `ttl_s` old."""
        known = self._known.get(key_id)
        if known is not None:
            return known
        stamp = self._known.stamp()
        limits = self._read(key_id)  # (outside any lock: a slow read holds up only the submits that missed)
        self._known.put(key_id, limits, stamp=stamp)
        return limits
