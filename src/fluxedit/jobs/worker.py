"""The one worker step: run a claimed job to its end, whatever dispatched it.

Local worker threads (`LocalDispatcher`) and Celery tasks claim a job with
`JobStore.claim_next` and call `execute_pipelined`: the edit runs on the calling
thread, then the outputs are encoded and stored on a `PostProcessor`'s thread
while the caller takes the next job. `execute` does it all on one thread;
`run_job` claims a given job first. The edit itself is
`fluxedit.pipeline.run_edit`, the same as `fluxedit edit` runs.

While a job runs, a small thread renews its lease (so fetching, decoding and
loading weights never let it expire) and the engine's progress callback records
steps and asks the engine to stop when a cancel was requested, the dispatcher is
shutting down, or this worker lost the job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial

from pydantic import ValidationError

from fluxedit.config import Settings
from fluxedit.engines.base import Engine
from fluxedit.errors import EditCancelled, FluxeditError, InvalidInput
from fluxedit.images.decode import encode_image
from fluxedit.images.fetch import Fetcher
from fluxedit.images.formats import IMAGE_TYPES
from fluxedit.jobs.errors import LeaseLost
from fluxedit.jobs.job import Job
from fluxedit.jobs.post import PostProcessor, run_inline
from fluxedit.jobs.state import JobState
from fluxedit.jobs.store import JobStore
from fluxedit.metrics import Metrics
from fluxedit.pipeline import EditOutcome, run_edit
from fluxedit.schema import EditInput, invalid_input
from fluxedit.storage.base import Storage

log = logging.getLogger(__name__)

ResolveLocal = Callable[[str], bytes | None]

INTERNAL_ERROR_MESSAGE = "The edit failed because of an internal error; the server log has the details."
PROGRESS_WRITE_INTERVAL_S = 0.2  # at most this often from the progress callback (plus the last step)


@dataclass(frozen=True)
class WorkerContext:
    """What running a job needs besides its engine, the same for every job of a process."""

    store: JobStore
    storage: Storage
    settings: Settings
    resolve_local: ResolveLocal | None = None  # reads URLs this service issued straight from storage
    metrics: Metrics | None = None
    # One per process, so that jobs share its TLS context: data: and issued URLs never need one.
    fetcher: Fetcher = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fetcher", Fetcher(self.settings, resolve_local=self.resolve_local))

    def read_references(self, urls: list[str]) -> list[bytes]:
        return self.fetcher.fetch(urls)


def run_job(job_id: str, engine: Engine, context: WorkerContext, *, worker_id: str) -> JobState | None:
    """Claim the job by id and run it. Does nothing (returns None) when it is not in_queue
    (another worker has it, it was cancelled, or it already finished)."""
    job = context.store.claim(job_id, worker_id, context.settings.lease_s)
    if job is None:
        log.info("job %s is not in the queue any more; skipping it", job_id)
        return None
    return execute(job, engine, context, worker_id=worker_id)


def execute(
    job: Job, engine: Engine, context: WorkerContext, *, worker_id: str, stop: threading.Event | None = None
) -> JobState | None:
    """Run a job this worker has claimed and record how it ended, all on this thread.

    Returns the final state, or None when the job is not finished by this call:
    it went back to the queue because `stop` was set (shutdown; no attempt used),
    or this worker lost its lease (the job belongs to someone else now).
    """
    return _execute(job, engine, context, worker_id, stop, run_inline).result()


def execute_pipelined(
    job: Job,
    engine: Engine,
    context: WorkerContext,
    *,
    worker_id: str,
    post: PostProcessor,
    stop: threading.Event | None = None,
) -> Future[JobState | None]:
    """`execute`, with the outputs encoded and stored on `post`'s thread: this returns once the
    engine is done (and the previous job's outputs are stored), so the caller can run the next
    job meanwhile. The Future gives what `execute` returns; the job is `completed` only once
    its files are stored."""
    return _execute(job, engine, context, worker_id, stop, post.submit)


def _execute(
    job: Job,
    engine: Engine,
    context: WorkerContext,
    worker_id: str,
    stop: threading.Event | None,
    hand_over: Callable[[Callable[[], JobState | None]], Future[JobState | None]],
) -> Future[JobState | None]:
    lease = _Lease(context.store, job.id, worker_id, context.settings.lease_s, stop).start()
    try:
        inferred = _infer(job, engine, context, lease)
    except Exception as exc:
        return run_inline(partial(_end_early, job, context, lease, worker_id, exc))
    if inferred is None:  # lost the lease: the job is someone else's now
        lease.end()
        return run_inline(lambda: None)
    lease.enter_quietly("encoding")
    return hand_over(partial(_store_and_complete, job, inferred, context, lease, worker_id))


def log_end(job_id: str, ended: Future[JobState | None]) -> None:
    """One line per job run, when it ends; operators (and the cluster tests) read these."""
    if ended.exception() is not None:
        log.error("job %s: error while finishing it", job_id, exc_info=ended.exception())
    else:
        state = ended.result()
        log.info("job %s: %s", job_id, state.value if state else "not finished by this worker")


def _end_early(job: Job, context: WorkerContext, lease: _Lease, worker_id: str, exc: Exception) -> JobState | None:
    # No heartbeat may race the final write: it would find the job finished and warn of a lost lease.
    lease.end()
    state = _ended_early(job, lease, context.store, worker_id, exc)
    _count_finished(context, job, state, _error_code(exc))
    return state


def _store_and_complete(
    job: Job, inferred: _Inferred, context: WorkerContext, lease: _Lease, worker_id: str
) -> JobState | None:
    try:
        finished = _store(job, inferred, context.storage)
    except Exception as exc:
        return _end_early(job, context, lease, worker_id, exc)
    lease.end()
    state = _completed(job, finished, context, worker_id)
    _count_finished(context, job, state, None)
    if state is not None and context.metrics is not None:
        context.metrics.job_phases(job.model_id, finished.phases(job))
        context.metrics.denoise_steps(job.model_id, finished.outcome.inference_s, lease.total_steps)
    return state


def _error_code(exc: Exception) -> str | None:
    if isinstance(exc, EditCancelled):
        return None
    return exc.code if isinstance(exc, FluxeditError) else "internal_error"


def _count_finished(context: WorkerContext, job: Job, state: JobState | None, error_code: str | None) -> None:
    # None: back in the queue or someone else's now; that job is counted where it ends.
    if state is not None and context.metrics is not None:
        context.metrics.job_finished(job.model_id, state.value, error_code if state == JobState.failed else None)


def _ended_early(job: Job, lease: _Lease, store: JobStore, worker_id: str, exc: Exception) -> JobState | None:
    if isinstance(exc, EditCancelled):
        return _stopped(job, lease, store, worker_id)
    if isinstance(exc, FluxeditError):
        return _failed(job, lease, store, worker_id, exc.code, exc.message, exc.index)
    log.error("job %s (model %s) failed with an unexpected error", job.id, job.model_id, exc_info=exc)
    return _failed(job, lease, store, worker_id, "internal_error", INTERNAL_ERROR_MESSAGE, None)


def _validated(job: Job) -> EditInput:
    try:
        return EditInput.model_validate(job.input)
    except ValidationError as exc:
        problem = invalid_input(exc.errors())
        raise InvalidInput(f"The request's input is not valid: {problem.message}", field=problem.field) from None


@dataclass(frozen=True)
class _Inferred:
    params: EditInput
    outcome: EditOutcome
    started: float
    fetch_s: float  # reading the references (download, upload or data: URI)


@dataclass(frozen=True)
class _Finished:
    params: EditInput
    outcome: EditOutcome
    keys: list[str]
    started: float
    fetch_s: float
    store_s: float  # encoding and storing the outputs

    def phases(self, job: Job) -> dict[str, float | None]:
        """Seconds per phase, as the metrics' histograms take them."""
        queue_s = (job.started_at - job.created_at).total_seconds() if job.started_at else None
        return {
            "queue_wait": queue_s,
            "input_fetch": self.fetch_s,
            "inference": self.outcome.inference_s,
            "encode_store": self.store_s,
            "total": (queue_s or 0.0) + time.monotonic() - self.started,
        }


class _TimedReader:
    """context.read_references, remembering how long it took."""

    def __init__(self, read: Callable[[list[str]], list[bytes]]) -> None:
        self._read, self.seconds = read, 0.0

    def __call__(self, urls: list[str]) -> list[bytes]:
        started = time.monotonic()
        try:
            return self._read(urls)
        finally:
            self.seconds += time.monotonic() - started


def _infer(job: Job, engine: Engine, context: WorkerContext, lease: _Lease) -> _Inferred | None:
    started = time.monotonic()
    params = _validated(job)
    reader = _TimedReader(context.read_references)
    outcome = run_edit(
        params,
        engine,
        reader,
        settings=context.settings,
        progress=lease.progress,
        checkpoint=lease.enter,
    )
    return None if lease.lost else _Inferred(params, outcome, started, reader.seconds)


def _store(job: Job, inferred: _Inferred, storage: Storage) -> _Finished:
    started = time.monotonic()
    keys = _store_outputs(job.id, inferred.params.output_format, inferred.outcome, storage)
    return _Finished(
        inferred.params, inferred.outcome, keys, inferred.started, inferred.fetch_s, time.monotonic() - started
    )


def _store_outputs(job_id: str, output_format: str, outcome: EditOutcome, storage: Storage) -> list[str]:
    image_type = IMAGE_TYPES[output_format]
    keys = []
    for n, image in enumerate(outcome.images):
        key = f"outputs/{job_id}/{n}.{image_type.extension}"
        storage.put(key, encode_image(image, output_format), image_type.content_type)
        keys.append(key)
    return keys


def _completed(job: Job, finished: _Finished, context: WorkerContext, worker_id: str) -> JobState | None:
    outcome = finished.outcome
    phases = finished.phases(job)
    timings = {
        "queue_s": round(phases["queue_wait"], 3) if phases["queue_wait"] is not None else None,
        "inference_s": round(outcome.inference_s, 3),
        "total_s": round(phases["total"], 3),
    }
    out_w, out_h = outcome.images[0].size if outcome.images else (outcome.width, outcome.height)
    if context.store.complete(job.id, worker_id, finished.keys, finished.params.seed, out_w, out_h, timings):
        return JobState.completed
    log.warning("job %s was finished by someone else while this worker ran it; dropping its outputs", job.id)
    for key in finished.keys:
        _delete_quietly(context.storage, key)
    return None


def _stopped(job: Job, lease: _Lease, store: JobStore, worker_id: str) -> JobState | None:
    if lease.lost:
        return None
    if lease.stopping and not lease.cancel_requested:
        # Shutdown, not the client: back to the queue (or cancelled, if a cancel raced in).
        store.release(job.id, worker_id)
        log.info("job %s went back to the queue (worker stopping)", job.id)
        return None
    return JobState.cancelled if store.finish_cancelled(job.id, worker_id) else None


def _failed(
    job: Job, lease: _Lease, store: JobStore, worker_id: str, code: str, message: str, index: int | None
) -> JobState | None:
    if lease.lost:
        return None
    return JobState.failed if store.fail(job.id, worker_id, code, message, index) else None


def _delete_quietly(storage: Storage, key: str) -> None:
    try:
        storage.delete(key)
    except Exception:
        log.warning("could not delete %s", key, exc_info=True)


class _Lease:
    """Keeps a running job's lease alive and knows whether the job should stop.

    A background thread renews the lease every few seconds whatever the job is
    doing; `progress` (the engine's callback) records steps. Both learn of a
    requested cancel, and of a lost lease (`LeaseLost`).
    """

    def __init__(
        self, store: JobStore, job_id: str, worker_id: str, lease_s: float, stop: threading.Event | None
    ) -> None:
        self._store, self._job_id, self._worker_id, self._lease_s = store, job_id, worker_id, lease_s
        self._stop = stop
        self._interval = max(0.05, min(lease_s / 4, 1.0))
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"lease-{job_id[:8]}", daemon=True)
        self._last_write = 0.0
        self.cancel_requested = False
        self.lost = False
        self.total_steps = 0  # as the engine's progress callback last told it

    def start(self) -> _Lease:
        self._thread.start()
        return self

    def end(self) -> None:
        """Stop renewing (idempotent): called before the job's final write, which ends the lease."""
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    @property
    def should_stop(self) -> bool:
        return self.cancel_requested or self.lost or self.stopping

    def enter(self, phase: str) -> None:
        """Before each phase: stop here if the job should stop; else record the phase (status shows it)."""
        if self.should_stop:
            raise EditCancelled("The request was cancelled.")
        self._beat(phase=phase)

    def enter_quietly(self, phase: str) -> None:
        """Record a phase that runs whatever happens now (the denoising is done: its outputs are kept)."""
        self._beat(phase=phase)

    def progress(self, step: int, total: int) -> bool:
        self.total_steps = total
        now = time.monotonic()
        if step >= total or now - self._last_write >= PROGRESS_WRITE_INTERVAL_S:
            self._last_write = now
            self._beat(step, total)
        return self.should_stop

    def _renew(self) -> None:
        while not self._done.wait(self._interval):
            self._beat()

    def _beat(self, step: int | None = None, total: int | None = None, *, phase: str | None = None) -> None:
        if self.lost:
            return
        try:
            if self._store.heartbeat(self._job_id, self._worker_id, self._lease_s, step, total, phase=phase):
                self.cancel_requested = True
        except LeaseLost:
            log.warning("job %s: this worker lost its lease; stopping without writing", self._job_id)
            self.lost = True
        except Exception:
            # A passing database error: the lease is still good for a while; try again next beat.
            log.warning("job %s: heartbeat failed", self._job_id, exc_info=True)
