"""The one worker step: run a claimed job to its end, whatever dispatched it.

Local threads (`LocalDispatcher`) claim with `JobStore.claim_next` and call
`execute`; a Celery task calls `run_job`, which claims the job by id first.

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

from pydantic import ValidationError

from fluxedit.config import Settings
from fluxedit.engines.base import EditRequest, Engine
from fluxedit.errors import EditCancelled, FluxeditError, InvalidInput
from fluxedit.images.decode import decode_reference, encode_image
from fluxedit.images.fetch import fetch_references
from fluxedit.jobs.errors import LeaseLost
from fluxedit.jobs.state import JobState
from fluxedit.jobs.store import Job, JobStore
from fluxedit.schema import EditInput
from fluxedit.storage.base import Storage

log = logging.getLogger(__name__)

ResolveLocal = Callable[[str], bytes | None]

# Output format -> (file extension, content type).
OUTPUT_TYPES = {"jpeg": ("jpg", "image/jpeg"), "png": ("png", "image/png")}
INTERNAL_ERROR_MESSAGE = "The edit failed because of an internal error; the server log has the details."
PROGRESS_WRITE_INTERVAL_S = 0.2  # at most this often from the progress callback (plus the last step)


def run_job(
    job_id: str,
    *,
    store: JobStore,
    engine: Engine,
    storage: Storage,
    settings: Settings,
    worker_id: str,
    resolve_local: ResolveLocal | None = None,
) -> JobState | None:
    """Claim the job by id and run it. Does nothing (returns None) when it is not in_queue
    (another worker has it, it was cancelled, or it already finished)."""
    job = store.claim(job_id, worker_id, settings.lease_s)
    if job is None:
        log.info("job %s is not in the queue any more; skipping it", job_id)
        return None
    return execute(
        job,
        store=store,
        engine=engine,
        storage=storage,
        settings=settings,
        worker_id=worker_id,
        resolve_local=resolve_local,
    )


def execute(
    job: Job,
    *,
    store: JobStore,
    engine: Engine,
    storage: Storage,
    settings: Settings,
    worker_id: str,
    resolve_local: ResolveLocal | None = None,
    stop: threading.Event | None = None,
) -> JobState | None:
    """Run a job this worker has claimed and record how it ended.

    Returns the final state, or None when the job is not finished by this call:
    it went back to the queue because `stop` was set (shutdown; no attempt used),
    or this worker lost its lease (the job belongs to someone else now).
    """
    lease = _Lease(store, job.id, worker_id, settings.lease_s, stop)
    with lease:
        try:
            return _run(job, lease, store, engine, storage, settings, worker_id, resolve_local)
        except EditCancelled:
            return _stopped(job, lease, store, worker_id)
        except FluxeditError as exc:
            return _failed(job, lease, store, worker_id, exc.code, exc.message, exc.index)
        except Exception:
            log.exception("job %s (model %s) failed with an unexpected error", job.id, job.model_id)
            return _failed(job, lease, store, worker_id, "internal_error", INTERNAL_ERROR_MESSAGE, None)


def _run(
    job: Job,
    lease: _Lease,
    store: JobStore,
    engine: Engine,
    storage: Storage,
    settings: Settings,
    worker_id: str,
    resolve_local: ResolveLocal | None,
) -> JobState | None:
    started = time.monotonic()
    try:
        params = EditInput.model_validate(job.input)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "input"
        raise InvalidInput(f"The request's input is not valid: {where}: {first['msg']}.", field=where) from None
    if len(params.image_urls) > engine.max_references:
        raise InvalidInput(
            f"{job.model_id} accepts at most {engine.max_references} reference images; "
            f"{len(params.image_urls)} were given.",
            field="image_urls",
        )

    datas = fetch_references(params.image_urls, settings, resolve_local=resolve_local)
    lease.check()
    references = [decode_reference(data, index=i, max_pixels=settings.max_image_pixels) for i, data in enumerate(datas)]
    del datas
    # "auto" follows the first reference as people see it, not its 16-px crop.
    width, height = params.output_size(references[0].info.get("source_size", references[0].size))
    lease.check()
    engine.load()  # idempotent; may take long the first time, the lease thread covers it
    lease.check()

    request = EditRequest(
        prompt=params.prompt,
        images=references,
        width=width,
        height=height,
        seed=params.seed,
        steps=params.num_inference_steps or settings.default_steps,
        guidance=params.guidance_scale if params.guidance_scale is not None else settings.guidance_scale,
        output_format=params.output_format,
        extra={"safety_tolerance": params.safety_tolerance} if params.safety_tolerance is not None else {},
    )
    inference_start = time.monotonic()
    images = engine.edit(request, lease.progress)
    inference_s = time.monotonic() - inference_start
    if lease.lost:
        return None

    ext, content_type = OUTPUT_TYPES[params.output_format]
    keys = []
    for n, image in enumerate(images):
        key = f"outputs/{job.id}/{n}.{ext}"
        storage.put(key, encode_image(image, params.output_format), content_type)
        keys.append(key)

    queue_s = (job.started_at - job.created_at).total_seconds() if job.started_at else None
    run_s = time.monotonic() - started
    timings = {
        "queue_s": round(queue_s, 3) if queue_s is not None else None,
        "inference_s": round(inference_s, 3),
        "total_s": round((queue_s or 0.0) + run_s, 3),
    }
    out_w, out_h = images[0].size if images else (width, height)
    if store.complete(job.id, worker_id, keys, params.seed, out_w, out_h, timings):
        return JobState.completed
    log.warning("job %s was finished by someone else while this worker ran it; dropping its outputs", job.id)
    for key in keys:
        _delete_quietly(storage, key)
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

    def __enter__(self) -> _Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    @property
    def stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    @property
    def should_stop(self) -> bool:
        return self.cancel_requested or self.lost or self.stopping

    def check(self) -> None:
        """Between phases: stop here if the job should stop."""
        if self.should_stop:
            raise EditCancelled("The request was cancelled.")

    def progress(self, step: int, total: int) -> bool:
        now = time.monotonic()
        if step >= total or now - self._last_write >= PROGRESS_WRITE_INTERVAL_S:
            self._last_write = now
            self._beat(step, total)
        return self.should_stop

    def _renew(self) -> None:
        while not self._done.wait(self._interval):
            self._beat()

    def _beat(self, step: int | None = None, total: int | None = None) -> None:
        if self.lost:
            return
        try:
            if self._store.heartbeat(self._job_id, self._worker_id, self._lease_s, step, total):
                self.cancel_requested = True
        except LeaseLost:
            log.warning("job %s: this worker lost its lease; stopping without writing", self._job_id)
            self.lost = True
        except Exception:
            # A passing database error: the lease is still good for a while; try again next beat.
            log.warning("job %s: heartbeat failed", self._job_id, exc_info=True)
