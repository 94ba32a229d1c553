"""The composition root: what a fluxedit process runs on, built from Settings in one place.

`fluxedit serve`, `fluxedit worker`, `fluxedit edit`, the Celery task and the tests
all start from `open_runtime` (or, for a single engine, `served_models`): the
engines (one per distinct source, shared by the ids that alias it), the job and
key stores, the URL signer, the storage, the resolver of issued URLs, the
dispatcher and the webhook deliverer (started by API processes only). Nothing
else in the package assembles these.

A process that runs no jobs itself (the API of a cluster, or `serve --no-workers`)
builds no engine at all, so it never imports torch.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Literal

from fluxedit.config import Settings
from fluxedit.engines.base import Engine
from fluxedit.engines.registry import describe_source, make_engine, model_pairs
from fluxedit.jobs.dispatch import Dispatcher, LocalDispatcher
from fluxedit.jobs.key_cache import KeyCache
from fluxedit.jobs.keys import WEBHOOK_SECRET_PREFIX, KeyStore
from fluxedit.jobs.limits_cache import LimitsCache
from fluxedit.jobs.migrate import upgrade_database
from fluxedit.jobs.outbox import Outbox, OutboxEvent
from fluxedit.jobs.store import JobStore
from fluxedit.jobs.worker import WorkerContext
from fluxedit.metrics import Metrics
from fluxedit.storage import load_secret, open_storage, resolve_issued_url
from fluxedit.storage.base import Storage
from fluxedit.storage.signing import UrlSigner
from fluxedit.webhooks.deliverer import Deliverer
from fluxedit.webhooks.formats import render
from fluxedit.webhooks.sender import Delivery

log = logging.getLogger(__name__)

Dispatch = Literal["auto", "none"]


@dataclass(frozen=True)
class ServedModel:
    """A model id as clients see it, where it comes from, and (in a process that runs its jobs) its engine."""

    id: str
    source: str
    kind: str
    max_references: int
    engine: Engine | None = None

    @property
    def loaded(self) -> bool:
        return self.engine is not None and self.engine.loaded


def served_models(specs: list[str], settings: Settings, *, with_engines: bool = True) -> dict[str, ServedModel]:
    """`--model` specs ("ID=SOURCE", or "tiny" for the offline demo) -> the served models, by id.

    One engine per distinct source, shared by the ids that alias it; the BFL
    engines (one API key per process) share one bound of tasks in flight.
    """
    engines: dict[str, Engine] = {}
    bfl_slots = threading.BoundedSemaphore(settings.bfl_max_concurrent)
    models = {}
    for model_id, source in model_pairs(specs):
        if with_engines and source not in engines:
            engines[source] = make_engine(source, settings, bfl_slots=bfl_slots)
        kind, max_references = describe_source(source)
        models[model_id] = ServedModel(model_id, source, kind, max_references, engines.get(source))
    return models


def engine_for(source: str, settings: Settings) -> Engine:
    """The engine for one source, as `fluxedit edit` runs it (nothing loaded yet)."""
    return make_engine(source, settings)


@dataclass
class Runtime:
    """Everything a process uses, built once from Settings (see `open_runtime`)."""

    settings: Settings
    models: dict[str, ServedModel]
    store: JobStore
    keys: KeyStore
    key_cache: KeyCache
    key_limits: LimitsCache  # each key's limits as set, read at most Settings.key_cache_s ago
    signer: UrlSigner
    storage: Storage
    outbox: Outbox
    dispatcher: Dispatcher | None = None
    deliverer: Deliverer | None = None
    metrics: Metrics = field(default_factory=Metrics)  # this process's registry (GET /metrics, a worker's port)

    def resolve_local(self, url: str) -> bytes | None:
        """The bytes of a URL this service issued (uploads), read from storage; None for any other URL."""
        return resolve_issued_url(url, self.storage, self.signer)

    @cached_property
    def worker_context(self) -> WorkerContext:
        """The one WorkerContext (and so the one reference Fetcher) of this process."""
        return WorkerContext(self.store, self.storage, self.settings, self.resolve_local, self.metrics)

    @property
    def engines(self) -> dict[str, Engine]:
        """Model id -> engine, for the models whose jobs this process runs."""
        return {m.id: m.engine for m in self.models.values() if m.engine is not None}

    def sweep(self) -> None:
        """Remove output and upload files older than their URLs' life."""
        removed = self.storage.sweep(self.settings.url_expiry_s)
        if removed:
            log.info("swept %d expired files", removed)

    def webhook_secret(self, key_id: str) -> str:
        """The secret that signs `key_id`'s webhooks.

        A key id with no key row (the unauthenticated mode's) gets one derived from
        the URL-signing secret, the same in every process that shares that secret.
        """
        stored = self.keys.webhook_secret(key_id)
        if stored:
            return stored
        digest = hmac.new(load_secret(self.settings), f"webhook secret\n{key_id}".encode(), hashlib.sha256).digest()
        return WEBHOOK_SECRET_PREFIX + base64.b64encode(digest).decode("ascii")

    def render_webhook(self, event: OutboxEvent, now: datetime) -> Delivery:
        """One attempt's request for `event`, rendered and signed in its format."""
        return render(event, self, now)

    def close(self) -> None:
        if self.deliverer is not None:
            self.deliverer.stop()
        self.store.dispose()


def open_runtime(
    settings: Settings, model_specs: list[str], *, run_jobs: bool = True, dispatch: Dispatch = "auto"
) -> Runtime:
    """Open the stores and storage Settings name and build the engines and the dispatcher.

    run_jobs=False: this process only queues (no engines, no local workers).
    dispatch="auto": Celery when `settings.broker_url` is set, else in-process
    worker threads (when run_jobs); "none": no dispatcher (the Celery worker
    process brings its own consumer).
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = JobStore(settings.resolved_database_url, progress_interval_s=settings.webhook_progress_interval_s)
    upgrade_database(store.engine)  # Alembic on PostgreSQL, create_all on SQLite
    signer = UrlSigner.from_settings(settings)
    local_workers = run_jobs and not settings.broker_url and dispatch == "auto"
    keys = KeyStore(store.engine)  # the same database: one connection pool, not two
    runtime = Runtime(
        settings=settings,
        models=served_models(model_specs, settings, with_engines=local_workers or dispatch == "none"),
        store=store,
        keys=keys,
        key_cache=KeyCache(keys.verify, ttl_s=settings.key_cache_s),
        key_limits=LimitsCache(keys.limits_of, ttl_s=settings.key_cache_s),
        signer=signer,
        storage=open_storage(settings, signer),
        outbox=Outbox(store.engine),
    )
    runtime.dispatcher = _dispatcher(runtime, local_workers=local_workers, dispatch=dispatch)
    runtime.deliverer = Deliverer(
        runtime.outbox, runtime.render_webhook, settings, on_attempt=runtime.metrics.webhook_attempted
    )
    store.on_event(runtime.deliverer.wake)  # events this process writes go out at once, not at the next poll
    if runtime.engines:
        runtime.metrics.watch_engines(lambda: {m.id: m.loaded for m in runtime.models.values() if m.engine})
    return runtime


def _dispatcher(runtime: Runtime, *, local_workers: bool, dispatch: Dispatch) -> Dispatcher | None:
    if dispatch == "none":
        return None
    if runtime.settings.broker_url:
        from fluxedit.jobs.celery_app import CeleryDispatcher  # celery: imported only in the cluster mode

        return CeleryDispatcher(runtime.store, list(runtime.models), runtime.settings)
    if local_workers:
        return LocalDispatcher(runtime.worker_context, runtime.engines)
    return None
