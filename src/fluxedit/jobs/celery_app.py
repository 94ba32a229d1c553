"""The cluster mode's dispatch: Celery on Redis, one queue per model, GPU workers.

The API enqueues a `fluxedit.run_job` task per job on its model's queue; a
`fluxedit worker` process loads its engines once, consumes only its models'
queues one job at a time, and runs the same worker step as the embedded mode.
The job row stays the state of record: a message is only a wake-up for its
model's queue, and the job table decides which job runs (JobStore.claim_next,
the fair order). A duplicate or stale message is harmless because claiming a
job is a conditional update, and a job whose worker died is found by its expired lease
and sent again (see `recover_and_requeue`).

Flower and the celery CLI find the app through this module's `app` attribute,
built from the environment's FLUXEDIT_* settings:
    celery -A fluxedit.jobs.celery_app:app flower
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial

from celery import Celery

from fluxedit.config import Settings
from fluxedit.engines.base import Engine
from fluxedit.errors import InvalidInput
from fluxedit.jobs.job import Job
from fluxedit.jobs.periodic import Periodic
from fluxedit.jobs.post import PostProcessor
from fluxedit.jobs.state import JobState
from fluxedit.jobs.store import JobStore
from fluxedit.jobs.worker import WorkerContext, execute_pipelined, log_end

log = logging.getLogger("fluxedit.cluster")

RUN_JOB_TASK = "fluxedit.run_job"


def queue_name(model_id: str) -> str:
    """A broker-safe, readable queue name for a model id, unique per id (a short hash)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", ".", model_id).strip(".")[:120]
    digest = hashlib.sha256(model_id.encode()).hexdigest()[:8]
    return f"fluxedit.{slug}.{digest}"


@dataclass
class WorkerProcess:
    """What the task needs in a `fluxedit worker` process: built once, before consuming."""

    context: WorkerContext
    engines: dict[str, Engine]  # model id -> loaded engine
    post: PostProcessor = field(default_factory=PostProcessor)  # stores a job's outputs while the next one runs
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")


def create_celery(settings: Settings, process: WorkerProcess | None = None) -> Celery:
    """The Celery app for `settings.broker_url`; with `process`, able to run jobs."""
    if not settings.broker_url:
        raise InvalidInput("The cluster mode needs a broker: set FLUXEDIT_BROKER_URL (e.g. redis://host:6379/0).")
    app = Celery("fluxedit", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # results live in the job row and the object store
        # One job at a time per worker, acknowledged only once it is done: a worker
        # that dies mid-job leaves its message to be delivered again.
        worker_prefetch_multiplier=1,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        broker_transport_options={"visibility_timeout": settings.broker_visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        worker_send_task_events=True,  # for Flower
        task_send_sent_event=True,
        task_default_queue="fluxedit.default",
    )

    @app.task(name=RUN_JOB_TASK)
    def run_job_task(job_id: str) -> None:
        if process is None:
            raise RuntimeError("this process has no engines; only `fluxedit worker` runs jobs")
        run_claimed_message(job_id, process)

    return app


def run_claimed_message(job_id: str, process: WorkerProcess) -> None:
    """A message is a wake-up for its model's queue: run the next job of that model in the fair
    order (JobStore.claim_next), which may be another key's job than the message's own.

    Each queued job has a message, so every job gets a worker; a message that finds its
    model's queue empty (its job was cancelled, or ran on an earlier message) does nothing.
    """
    job = process.context.store.get(job_id)
    if job is None:
        log.warning("message for unknown job %s dropped", job_id)
        return
    if job.model_id not in process.engines:
        log.error("job %s is for %s, which this worker does not serve; dropped", job_id, job.model_id)
        return
    settings = process.context.settings
    claimed = process.context.store.claim_next(
        [job.model_id], process.worker_id, settings.lease_s, default_max_running=settings.key_max_running
    )
    if claimed is None:
        log.info("message for job %s: no job of %s is waiting; nothing to run", job_id, job.model_id)
        return
    engine = process.engines[claimed.model_id]
    ended = execute_pipelined(claimed, engine, process.context, worker_id=process.worker_id, post=process.post)
    ended.add_done_callback(partial(log_end, claimed.id))


def recover_and_requeue(store: JobStore, send: Callable[[Job], None], settings: Settings) -> list[str]:
    """Put jobs whose lease expired back in the queue (store.recover_expired) and send their messages.

    Only the process whose update re-queued a job sends it, so each recovery
    sends one message, whichever API processes and workers run this loop.
    """
    requeued = []
    for job_id in store.recover_expired(settings.max_attempts):
        job = store.get(job_id)
        if job is not None and job.state is JobState.in_queue:
            send(job)
            requeued.append(job_id)
    if requeued:
        log.warning("re-queued %d job(s) whose worker stopped: %s", len(requeued), ", ".join(requeued))
    return requeued


def resend_queued(settings: Settings, app: Celery | None = None) -> int:
    """Send a message for every in_queue job; returns how many. For after a broker lost its messages.

    Duplicates are harmless: a job runs once whatever the number of its messages.
    """
    store = JobStore(settings.resolved_database_url)
    app = app or create_celery(settings)
    try:
        queued = store.queued_jobs()
        for job_id, model_id in queued:
            app.send_task(RUN_JOB_TASK, args=[job_id], queue=queue_name(model_id))
        return len(queued)
    finally:
        store.dispose()


class CeleryDispatcher:
    """The API side of the cluster mode: one Celery message per job, on its model's queue.

    Also recovers jobs whose worker died (lease expiry) and re-sends messages
    that could not be sent while the broker was down; `fluxedit worker` runs
    one for that recovery loop alone.
    """

    def __init__(self, store: JobStore, model_ids: Iterable[str], settings: Settings, app: Celery | None = None):
        self.store = store
        self.model_ids = list(model_ids)
        self.settings = settings
        self.app = app or create_celery(settings)
        self._unsent: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._recovery = Periodic("fluxedit-recover", settings.recover_interval_s, self._housekeeping)

    def start(self) -> None:
        self._recovery.start()

    def stop(self, *, interrupt: bool = True, timeout: float | None = None) -> None:
        """Stop the housekeeping loop. Running jobs belong to the workers: they are not touched."""
        self._recovery.stop(timeout=self._recovery.interval_s + 5)
        self.app.close()

    def notify(self, job: Job) -> None:
        """Send job's message; if the broker is unreachable, keep it and retry from the housekeeping loop."""
        try:
            self.send(job)
        except Exception as exc:
            log.error("could not enqueue job %s (%s); will retry", job.id, exc)
            with self._lock:
                self._unsent[job.id] = job

    def send(self, job: Job) -> None:
        self.app.send_task(RUN_JOB_TASK, args=[job.id], queue=queue_name(job.model_id))

    def _housekeeping(self) -> None:
        with self._lock:
            unsent, self._unsent = self._unsent, {}
        for job in unsent.values():
            self.notify(job)
        recover_and_requeue(self.store, self.notify, self.settings)


# --------------------------------------------------------------------------- the worker process


def run_worker(settings: Settings, model_specs: list[str]) -> int:
    """`fluxedit worker`: load the engines, then consume their queues one job at a time until stopped."""
    from fluxedit.runtime import open_runtime

    if not model_specs:
        raise InvalidInput("A worker needs at least one --model ID=SOURCE.", field="model")
    runtime = open_runtime(settings, model_specs, dispatch="none")
    engines = runtime.engines
    for engine in {id(e): e for e in engines.values()}.values():
        engine.load()
    if settings.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, addr=settings.metrics_bind, registry=runtime.metrics.registry)
    process = WorkerProcess(runtime.worker_context, engines)
    app = create_celery(settings, process)
    queues = sorted({queue_name(model_id) for model_id in engines})

    recovery = CeleryDispatcher(runtime.store, engines, settings, app)
    recovery.start()
    print(f"fluxedit worker {process.worker_id} serving {', '.join(engines)} on queues {', '.join(queues)}", flush=True)
    worker = app.Worker(
        queues=queues,
        pool_cls="threads",  # the engine stays in this process; the main thread answers Flower and control
        concurrency=1,  # one job at a time per GPU
        hostname=f"fluxedit-{os.getpid()}@{socket.gethostname()}",
        send_events=True,
        loglevel="INFO",
    )
    try:
        worker.start()
    finally:
        process.post.close()  # the last job's outputs are stored before the process ends
        recovery.stop()
        runtime.close()
    return worker.exitcode or 0


def __getattr__(name: str) -> Celery:
    # `celery -A fluxedit.jobs.celery_app:app ...` (Flower, inspect): an app built from the environment,
    # made on access rather than at import so that importing this module has no side effects.
    if name == "app":
        return create_celery(Settings())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
