"""API keys verified once per few seconds in a process, not once per request.

A client polling its status sends its key every time; reading the key table for each
request is a database round trip on the hot path. A good key is remembered for
`ttl_s` (Settings.key_cache_s, 2 s by default), so a revoked key stops working within
`ttl_s` in every process: each forgets on its own. Entries are keyed by the secret's
hash (no secret is kept) and bounded in number; bad keys are never remembered.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from fluxedit.jobs.ttl_cache import TtlCache


class KeyCache:
    def __init__(
        self,
        verify: Callable[[str], str | None],
        *,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._verify = verify
        self._known: TtlCache[str, str] = TtlCache(ttl_s=ttl_s, clock=clock)  # sha256 of the secret -> key id

    def cached(self, secret: str) -> str | None:
        """The key id `verify` would answer, when it is remembered and fresh; None: ask `verify`.
        Reads no database, so an async caller need not leave its event loop for it."""
        if not secret or len(secret) > 512:
            return None
        return self._known.get(_digest(secret))

    def verify(self, secret: str) -> str | None:
        """The key id of an active key's secret, else None; at most `ttl_s` old."""
        known = self.cached(secret)
        if known is not None:
            return known
        stamp = self._known.stamp()
        key_id = self._verify(secret)  # (which refuses an empty or oversized secret)
        if key_id is None:  # bad keys are never remembered
            self._known.forget(_digest(secret))
        elif len(secret) <= 512:
            self._known.put(_digest(secret), key_id, stamp=stamp)
        return key_id


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
