"""Values remembered for a few seconds in one process: what the key and limits caches share."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """Thread-safe, bounded in entries; with `ttl_s <= 0` it remembers nothing.

    A value is stored with the clock reading taken *before* it was read (`stamp`), so that
    no answer is ever older than `ttl_s` counted from its read.
    """

    def __init__(self, *, ttl_s: float, clock: Callable[[], float] = time.monotonic, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._max_entries = max_entries
        self._known: dict[K, tuple[V, float]] = {}  # key -> (value, valid until)
        self._lock = threading.Lock()

    def stamp(self) -> float:
        return self._clock()

    def get(self, key: K) -> V | None:
        """The value remembered for `key`, while fresh; else None."""
        with self._lock:
            known = self._known.get(key)
        return known[0] if known is not None and known[1] > self._clock() else None

    def put(self, key: K, value: V, *, stamp: float) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            if len(self._known) >= self._max_entries and key not in self._known:
                self._known.clear()  # rare: more live entries than this in one process
            self._known[key] = (value, stamp + self.ttl_s)

    def forget(self, key: K) -> None:
        with self._lock:
            self._known.pop(key, None)
