"""Post-processing: a finished job's outputs are encoded and stored off the engine's thread.

A 4 MP PNG takes about a second to encode on a CPU core, longer than a [klein] 4B
edit on a GPU; done inline, the GPU would sit idle meanwhile. Each worker slot (one
engine thread) has one `PostProcessor`: its thread encodes, stores and completes job N
while the engine thread claims and runs job N+1.

At most one job's outputs wait here: handing over another blocks until the last one is
done, so a slow disk slows the engine down instead of filling memory with images.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from typing import TypeVar

T = TypeVar("T")


class PostProcessor:
    """One background thread taking one job's tail at a time."""

    def __init__(self, *, name: str = "fluxedit-post") -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._last: Future | None = None

    def submit(self, tail: Callable[[], T]) -> Future[T]:
        """Run `tail` on this processor's thread, once the previous tail has finished."""
        if self._last is not None:
            wait_for([self._last])
        self._last = self._pool.submit(tail)
        return self._last

    def close(self) -> None:
        """Finish what was handed over (outputs are never dropped at shutdown), then stop the thread."""
        self._pool.shutdown(wait=True)


def run_inline(tail: Callable[[], T]) -> Future[T]:
    """`tail` run now on this thread, as a finished Future (no post-processor)."""
    future: Future[T] = Future()
    try:
        future.set_result(tail())
    except BaseException as exc:
        future.set_exception(exc)
    return future
