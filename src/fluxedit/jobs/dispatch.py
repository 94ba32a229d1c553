"""Handing queued jobs to workers.

The job row is the state of record: a dispatcher only makes sure some worker
claims queued jobs soon. `LocalDispatcher` runs workers as threads of this
process (one machine, `pip install` only); the Celery dispatcher (cluster) sends
job ids to GPU workers that call `fluxedit.jobs.worker.run_job`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from fluxedit.engines.base import Engine
from fluxedit.jobs.job import Job
from fluxedit.jobs.periodic import Periodic
from fluxedit.jobs.post import PostProcessor
from fluxedit.jobs.worker import WorkerContext, execute_pipelined, log_end

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    @property
    def model_ids(self) -> list[str]:
        """The model ids whose jobs this dispatcher runs."""

    def start(self) -> None:
        """Start handing out jobs, including those queued before this process started."""

    def notify(self, job: Job) -> None:
        """A job was just queued: run it as soon as a worker for its model is free."""

    def stop(self, *, interrupt: bool = True, timeout: float | None = None) -> None:
        """Stop taking jobs. interrupt=True stops running jobs at their next step and puts them
        back in the queue; interrupt=False lets them finish."""


@dataclass
class WorkerSlot:
    """One worker thread: it runs one job at a time of the model ids it serves, while its
    post-processor stores the previous job's outputs."""

    model_ids: list[str]
    worker_id: str
    wake: threading.Event = field(default_factory=threading.Event)
    post: PostProcessor = field(default_factory=PostProcessor)
    thread: threading.Thread | None = None


class LocalDispatcher:
    """Worker threads in this process, taking jobs oldest first.

    Engines that share a capacity (`Engine.capacity_key`: one GPU pipeline, or
    the BFL models forwarded with one API key) share `concurrency` worker slots,
    so several model ids aliasing one engine run on its one thread (and its one
    copy of the weights), and BFL's per-key bound holds across its models.

    Jobs are claimed from the store, so jobs queued before a restart run after
    `start`. A worker sleeps until `notify` wakes it or `poll_interval_s` passes.
    A housekeeping thread calls `JobStore.recover_expired` at start and every
    `recover_interval_s`: jobs of a process that died (kill -9) go back to the
    queue once their lease expires (the attempt they used counts). `stop`
    interrupts running jobs at their next step and gives them back to the queue
    without using up an attempt (or lets them finish, with interrupt=False).
    """

    def __init__(self, context: WorkerContext, engines: dict[str, Engine]) -> None:
        self.context = context
        self.engines = dict(engines)
        self._stopping = threading.Event()  # take no new jobs
        self._interrupt = threading.Event()  # stop running jobs at their next step
        self._periodic = [Periodic("fluxedit-recover", context.settings.recover_interval_s, self._recover)]
        self._started = False
        self._slots = _worker_slots(self.engines)
        self._slots_of: dict[str, list[WorkerSlot]] = {}
        for slot in self._slots:
            for model_id in slot.model_ids:
                self._slots_of.setdefault(model_id, []).append(slot)

    @property
    def model_ids(self) -> list[str]:
        return list(self.engines)

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        for task in self._periodic:
            task.start()
        for slot in self._slots:
            slot.thread = threading.Thread(
                target=self._work, args=(slot,), name=f"fluxedit-worker-{slot.model_ids[0]}", daemon=True
            )
            slot.thread.start()

    def notify(self, job: Job) -> None:
        for slot in self._slots_of.get(job.model_id, []):
            slot.wake.set()

    def stop(self, *, interrupt: bool = True, timeout: float | None = None) -> None:
        if interrupt:
            self._interrupt.set()
        self._stopping.set()
        for slot in self._slots:
            slot.wake.set()
        deadline = None if timeout is None else time.monotonic() + timeout

        def remaining() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        for task in self._periodic:
            task.stop(remaining())
        for slot in self._slots:
            if slot.thread is not None:
                slot.thread.join(remaining())

    # --- threads ---------------------------------------------------------------------

    def _work(self, slot: WorkerSlot) -> None:
        try:
            self._load(slot)
            self._take_jobs(slot)
        finally:
            slot.post.close()  # the last job's outputs are stored before this thread ends

    def _take_jobs(self, slot: WorkerSlot) -> None:
        settings = self.context.settings
        lease_s = settings.lease_s
        while not self._stopping.is_set():
            # Clear before claiming: a notify() from here on makes the wait below return at once.
            slot.wake.clear()
            try:
                job = self.context.store.claim_next(
                    slot.model_ids, slot.worker_id, lease_s, default_max_running=settings.key_max_running
                )
                if job is not None:
                    log.info("job %s (%s): started, attempt %d", job.id, job.model_id, job.attempts)
                    engine = self.engines[job.model_id]
                    ended = execute_pipelined(
                        job, engine, self.context, worker_id=slot.worker_id, post=slot.post, stop=self._interrupt
                    )
                    ended.add_done_callback(partial(log_end, job.id))
                    continue
            except Exception:
                # e.g. the database is briefly unreachable: leases cover the running job; retry later.
                log.exception("worker for %s: error while taking or finishing a job", ", ".join(slot.model_ids))
            slot.wake.wait(self.context.settings.poll_interval_s)

    def _load(self, slot: WorkerSlot) -> None:
        """Load weights before the first job, so that no user request pays for it.

        A model that cannot load is logged here; its jobs then fail with the engine's
        clear error (e.g. model_unavailable) instead of hanging in the queue.
        """
        for engine in {id(self.engines[m]): self.engines[m] for m in slot.model_ids}.values():
            try:
                engine.load()
            except Exception as exc:
                log.error("could not load the engine for %s: %s", ", ".join(slot.model_ids), exc)

    def _recover(self) -> None:
        changed = self.context.store.recover_expired(self.context.settings.max_attempts)
        if changed:
            log.warning("recovered %d job(s) whose worker stopped responding: %s", len(changed), ", ".join(changed))
            for slot in self._slots:
                slot.wake.set()


def _worker_slots(engines: dict[str, Engine]) -> list[WorkerSlot]:
    """`concurrency` slots per capacity, each serving every model id of the engines sharing it."""
    model_ids_of: dict[str, list[str]] = {}
    for model_id, engine in engines.items():
        model_ids_of.setdefault(engine.capacity_key, []).append(model_id)
    base = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    return [
        WorkerSlot(ids, f"{base}:{n}:{slot}")
        for n, ids in enumerate(model_ids_of.values())
        for slot in range(max(1, engines[ids[0]].concurrency))
    ]
