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
from typing import Protocol

from fluxedit.config import Settings
from fluxedit.engines.base import Engine
from fluxedit.jobs.periodic import Periodic
from fluxedit.jobs.store import Job, JobStore
from fluxedit.jobs.worker import ResolveLocal, execute
from fluxedit.storage.base import Storage

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
class _Group:
    """One worker thread: its engine, the model ids that alias that engine, its worker id."""

    engine: Engine
    model_ids: list[str]
    worker_id: str
    wake: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


class LocalDispatcher:
    """Worker threads in this process: one per distinct engine, one job at a time, FIFO per model.

    Several model ids may alias one engine object; they share its thread (and the
    one copy of its weights), jobs taken oldest first across those ids.

    Jobs are claimed from the store, so jobs queued before a restart run after
    `start`. A worker sleeps until `notify` wakes it or `poll_interval_s` passes.
    A housekeeping thread calls `JobStore.recover_expired` at start and every
    `recover_interval_s`: jobs of a process that died (kill -9) go back to the
    queue once their lease expires (the attempt they used counts). `stop`
    interrupts running jobs at their next step and gives them back to the queue
    without using up an attempt (or lets them finish, with interrupt=False).
    """

    def __init__(
        self,
        store: JobStore,
        engines: dict[str, Engine],
        storage: Storage,
        settings: Settings,
        *,
        resolve_local: ResolveLocal | None = None,
    ) -> None:
        self.store = store
        self.engines = dict(engines)
        self.storage = storage
        self.settings = settings
        self.resolve_local = resolve_local
        self._stopping = threading.Event()  # take no new jobs
        self._interrupt = threading.Event()  # stop running jobs at their next step
        self._periodic = [Periodic("fluxedit-recover", settings.recover_interval_s, self._recover)]
        self._started = False
        base = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        model_ids_of: dict[int, list[str]] = {}
        for model_id, engine in self.engines.items():
            model_ids_of.setdefault(id(engine), []).append(model_id)
        # One thread per engine (a GPU runs one job at a time); an engine that only
        # forwards jobs elsewhere (BFL) says how many it can have in flight.
        self._groups = [
            _Group(self.engines[ids[0]], ids, f"{base}:{n}:{slot}")
            for n, ids in enumerate(model_ids_of.values())
            for slot in range(max(1, getattr(self.engines[ids[0]], "concurrency", 1)))
        ]
        self._groups_of: dict[str, list[_Group]] = {}
        for group in self._groups:
            for model_id in group.model_ids:
                self._groups_of.setdefault(model_id, []).append(group)

    @property
    def model_ids(self) -> list[str]:
        return list(self.engines)

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        for task in self._periodic:
            task.start()
        for group in self._groups:
            group.thread = threading.Thread(
                target=self._work, args=(group,), name=f"fluxedit-worker-{group.model_ids[0]}", daemon=True
            )
            group.thread.start()

    def notify(self, job: Job) -> None:
        for group in self._groups_of.get(job.model_id, []):
            group.wake.set()

    def stop(self, *, interrupt: bool = True, timeout: float | None = None) -> None:
        if interrupt:
            self._interrupt.set()
        self._stopping.set()
        for group in self._groups:
            group.wake.set()
        deadline = None if timeout is None else time.monotonic() + timeout

        def remaining() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        for task in self._periodic:
            task.stop(remaining())
        for group in self._groups:
            if group.thread is not None:
                group.thread.join(remaining())

    # --- threads ---------------------------------------------------------------------

    def _work(self, group: _Group) -> None:
        self._load(group)
        while not self._stopping.is_set():
            # Clear before claiming: a notify() from here on makes the wait below return at once.
            group.wake.clear()
            try:
                job = self.store.claim_next(group.model_ids, group.worker_id, self.settings.lease_s)
                if job is not None:
                    log.info("job %s (%s): started, attempt %d", job.id, job.model_id, job.attempts)
                    state = execute(
                        job,
                        store=self.store,
                        engine=group.engine,
                        storage=self.storage,
                        settings=self.settings,
                        worker_id=group.worker_id,
                        resolve_local=self.resolve_local,
                        stop=self._interrupt,
                    )
                    log.info("job %s: %s", job.id, state.value if state else "returned to the queue")
                    continue
            except Exception:
                # e.g. the database is briefly unreachable: leases cover the running job; retry later.
                log.exception("worker for %s: error while taking or finishing a job", ", ".join(group.model_ids))
            group.wake.wait(self.settings.poll_interval_s)

    def _load(self, group: _Group) -> None:
        """Load weights before the first job, so that no user request pays for it.

        A model that cannot load is logged here; its jobs then fail with the engine's
        clear error (e.g. model_unavailable) instead of hanging in the queue.
        """
        try:
            group.engine.load()
        except Exception as exc:
            log.error("could not load the engine for %s: %s", ", ".join(group.model_ids), exc)

    def _recover(self) -> None:
        changed = self.store.recover_expired(self.settings.max_attempts)
        if changed:
            log.warning("recovered %d job(s) whose worker stopped responding: %s", len(changed), ", ".join(changed))
            for group in self._groups:
                group.wake.set()
