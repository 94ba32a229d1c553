"""The FastAPI app factory: a Runtime in, an ASGI app out."""

from __future__ import annotations

from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from fluxedit import __version__
from fluxedit.api.docs import install_docs
from fluxedit.api.errors import install_error_handlers
from fluxedit.api.events import StreamSlots
from fluxedit.api.faces import bfl as bfl_face
from fluxedit.api.faces import replicate as replicate_face
from fluxedit.api.faces.fal import router as fal_router
from fluxedit.api.guesses import GuessLimit
from fluxedit.api.limits import BodySizeLimit
from fluxedit.api.metrics import router as metrics_router
from fluxedit.api.quotas import KeyQuota
from fluxedit.api.routes import router
from fluxedit.api.usage import router as usage_router
from fluxedit.api.webhooks import router as webhooks_router
from fluxedit.jobs.periodic import Periodic
from fluxedit.runtime import Runtime


def create_app(runtime: Runtime, *, allow_unauthenticated: bool = False) -> FastAPI:
    """The ASGI app over `runtime` (see fluxedit.runtime.open_runtime); it starts and stops the
    dispatcher and the webhook deliverer (API processes deliver webhooks).

    allow_unauthenticated: no API keys (the CLI allows it only on a loopback bind).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        sweeper = Periodic("fluxedit-sweep", runtime.settings.sweep_interval_s, runtime.sweep)
        if runtime.dispatcher is not None:
            runtime.dispatcher.start()
        if runtime.deliverer is not None:
            runtime.deliverer.start()
        sweeper.start()
        yield
        sweeper.stop(timeout=5)
        if runtime.dispatcher is not None:
            runtime.dispatcher.stop()
        if runtime.deliverer is not None:
            runtime.deliverer.stop()

    app = FastAPI(
        title="fluxedit",
        version=__version__,
        summary="Multi-reference image editing with FLUX.2: the hosted async model API, self-hosted.",
        lifespan=lifespan,
        docs_url=None,  # install_docs serves /docs from local assets instead
        redoc_url=None,  # ReDoc loads its logo from a CDN
    )
    app.state.runtime = runtime
    app.state.allow_unauthenticated = allow_unauthenticated
    app.state.stream_slots = StreamSlots(runtime.settings.max_streams_per_key)
    app.state.guesses = GuessLimit(runtime.settings.max_unknown_ids_per_minute)
    app.state.quota = KeyQuota(runtime)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=runtime.settings.max_request_bytes)
    app.include_router(router)
    app.include_router(replicate_face.router)
    app.include_router(bfl_face.router)
    app.include_router(metrics_router)
    app.include_router(usage_router)
    runtime.metrics.watch_queue(runtime.models, runtime.store.queued_count)
    install_docs(app)
    app.include_router(fal_router)  # fal's queue API under /fal (api/faces/fal.py)
    app.include_router(webhooks_router)
    playground = resources.files("fluxedit.api") / "playground"
    app.mount("/playground", StaticFiles(directory=str(playground)), name="playground")
    return app
