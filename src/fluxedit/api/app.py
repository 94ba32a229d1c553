"""The FastAPI app factory: Settings + served models in, an ASGI app out."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from fluxedit import __version__
from fluxedit.api.docs import install_docs
from fluxedit.api.errors import install_error_handlers
from fluxedit.api.limits import BodySizeLimit
from fluxedit.api.routes import router
from fluxedit.config import Settings
from fluxedit.engines.base import Engine
from fluxedit.jobs.dispatch import Dispatcher
from fluxedit.jobs.migrate import upgrade_database
from fluxedit.jobs.periodic import Periodic
from fluxedit.jobs.store import JobStore, KeyStore
from fluxedit.storage import open_storage
from fluxedit.storage.base import Storage
from fluxedit.storage.signing import UrlSigner

log = logging.getLogger("fluxedit.api")


@dataclass
class ServedModel:
    """A model id as clients see it, and the engine that serves it."""

    id: str
    source: str
    engine: Engine


@dataclass
class Services:
    """Everything a request handler needs, built once per app from Settings."""

    settings: Settings
    models: dict[str, ServedModel]
    store: JobStore
    keys: KeyStore
    storage: Storage
    signer: UrlSigner
    dispatcher: Dispatcher | None
    allow_unauthenticated: bool = False

    def sweep(self) -> None:
        """Remove output and upload files older than their URLs' life."""
        removed = self.storage.sweep(self.settings.url_expiry_s)
        if removed:
            log.info("swept %d expired files", removed)


def build_services(
    settings: Settings,
    models: list[ServedModel],
    dispatcher_factory=None,
    *,
    allow_unauthenticated: bool = False,
) -> Services:
    """Open the store, keys and storage named by Settings; the dispatcher comes from the caller."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = JobStore(settings.resolved_database_url)
    upgrade_database(store.engine)  # Alembic on PostgreSQL, create_all on SQLite
    signer = UrlSigner.from_settings(settings)
    storage = open_storage(settings, signer)
    served = {m.id: m for m in models}
    dispatcher = dispatcher_factory(store, served, storage, signer) if dispatcher_factory else None
    return Services(
        settings=settings,
        models=served,
        store=store,
        keys=KeyStore(store.engine),  # the same database: one connection pool, not two
        storage=storage,
        signer=signer,
        dispatcher=dispatcher,
        allow_unauthenticated=allow_unauthenticated,
    )


def create_app(services: Services) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        sweeper = Periodic("fluxedit-sweep", services.settings.sweep_interval_s, services.sweep)
        if services.dispatcher is not None:
            services.dispatcher.start()
        sweeper.start()
        yield
        sweeper.stop(timeout=5)
        if services.dispatcher is not None:
            services.dispatcher.stop()

    app = FastAPI(
        title="fluxedit",
        version=__version__,
        summary="Multi-reference image editing with FLUX.2: the hosted async model API, self-hosted.",
        lifespan=lifespan,
        docs_url=None,  # install_docs serves /docs from local assets instead
        redoc_url=None,  # ReDoc loads its logo from a CDN
    )
    app.state.services = services
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=services.settings.max_request_bytes)
    app.include_router(router)
    install_docs(app)
    playground = resources.files("fluxedit.api") / "playground"
    app.mount("/playground", StaticFiles(directory=str(playground)), name="playground")
    return app
