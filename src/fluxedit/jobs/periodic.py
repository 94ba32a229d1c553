"""Housekeeping on a timer: recovering jobs with expired leases, sweeping old files."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Periodic:
    """Run `fn` at start and then every `interval_s` seconds on a daemon thread until stopped.

    An error is logged and the next run happens as usual.
    """

    def __init__(self, name: str, interval_s: float, fn: Callable[[], object]) -> None:
        self._stop = threading.Event()
        self._fn = fn
        self.interval_s = interval_s
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None) -> None:
        """Run `fn` no more; wait up to `timeout` seconds (None: no limit) for a run in progress."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            try:
                self._fn()
            except Exception:
                log.exception("%s failed; retrying in %s s", self._thread.name, self.interval_s)
            if self._stop.wait(self.interval_s):
                return
