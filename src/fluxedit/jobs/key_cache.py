"""API keys verified once per few seconds in a process, not once per request.

A client polling its status sends its key every time; reading the key table for each
request is a database round trip on the hot path. A good key is remembered for
`ttl_s` (Settings.key_cache_s, 2 s by default), so a revoked key stops working within
`ttl_s` in every process: each forgets on its own. Entries are keyed by the secret's
hash (no secret is kept) and bounded in number; bad keys are never remembered.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable

MAX_ENTRIES = 10_000


class KeyCache:
    def __init__(
        self,
        verify: Callable[[str], str | None],
        *,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._verify = verify
        self._ttl_s = ttl_s
        self._clock = clock
        self._known: dict[str, tuple[str, float]] = {}  # sha256 of the secret -> (key id, valid until)
        self._lock = threading.Lock()

    def cached(self, secret: str) -> str | None:
        """The key id `verify` would answer, when it is remembered and fresh; None: ask `verify`.
        Reads no database, so an async caller need not leave its event loop for it."""
        if self._ttl_s <= 0 or not secret or len(secret) > 512:
            return None
        with self._lock:
            known = self._known.get(_digest(secret))
        return known[0] if known is not None and known[1] > self._clock() else None

    def verify(self, secret: str) -> str | None:
        """The key id of an active key's secret, else None; at most `ttl_s` old."""
        if self._ttl_s <= 0 or not secret or len(secret) > 512:
            return self._verify(secret)  # (which refuses an empty or oversized secret)
        known = self.cached(secret)
        if known is not None:
            return known
        digest, now = _digest(secret), self._clock()
        key_id = self._verify(secret)
        with self._lock:
            if key_id is None:
                self._known.pop(digest, None)
            else:
                if len(self._known) >= MAX_ENTRIES:
                    self._known.clear()  # rare: more live keys than this in one process
                self._known[digest] = (key_id, now + self._ttl_s)
        return key_id


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
