"""Replicate's predictions API under /replicate, over the one native queue.

A client sets `base_url=<server>/replicate` and `api_token=<fluxedit key>`; it
speaks to the same queue, store and renderers as the native routes (queue_job,
the JobStore, events.changes) and owns no state. Errors are problem+json.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from fluxedit.api.auth import require_key
from fluxedit.api.deps import RuntimeDep
from fluxedit.api.events import PING_S, changes, position, wait_seconds, wait_until_finished
from fluxedit.api.faces.errors import face_route
from fluxedit.api.faces.replicate_input import (
    edit_input,
    model_table,
    replicate_name,
    served_id,
    version_id,
)
from fluxedit.api.faces.replicate_prediction import PREFIX, prediction, problem
from fluxedit.api.faces.replicate_webhook import requested
from fluxedit.api.routes import base_url, queue_job
from fluxedit.errors import InvalidInput, NotFound
from fluxedit.jobs.errors import JobConflict
from fluxedit.jobs.job import Job
from fluxedit.runtime import Runtime

router = APIRouter(prefix=PREFIX, tags=["replicate"], route_class=face_route(problem))
KeyId = Annotated[str, Depends(require_key)]
Prefer = Annotated[str | None, Header(max_length=200)]


class PredictionRequest(BaseModel):
    """The body of Replicate's prediction create: `input` is the model's inputs."""

    input: dict[str, Any]
    version: str | None = None
    webhook: str | None = None
    webhook_events_filter: list[str] | None = None
    stream: bool | None = None


@router.post("/v1/models/{owner}/{name}/predictions", status_code=201)
async def create_for_model(
    request: Request,
    runtime: RuntimeDep,
    owner: str,
    name: str,
    body: PredictionRequest,
    key_id: KeyId,
    prefer: Prefer = None,
) -> JSONResponse:
    model_id = served_id(_table(runtime), set(runtime.models), owner, name)
    return await _create(request, runtime, model_id, body, key_id, prefer)


@router.post("/v1/predictions", status_code=201)
async def create(
    request: Request, runtime: RuntimeDep, body: PredictionRequest, key_id: KeyId, prefer: Prefer = None
) -> JSONResponse:
    """`version` is a version id from this server, or `owner/name[:version]`."""
    return await _create(request, runtime, _model_of_version(runtime, body.version), body, key_id, prefer)


@router.get("/v1/predictions")
def list_predictions(
    request: Request, runtime: RuntimeDep, key_id: KeyId, cursor: Annotated[str | None, Query(max_length=200)] = None
) -> dict:
    """This key's predictions, newest first, 100 a page."""
    jobs, next_cursor = runtime.store.list_jobs(key_id, limit=100, cursor=cursor)
    root = f"{base_url(request)}{PREFIX}/v1/predictions"
    return {
        "next": f"{root}?cursor={next_cursor}" if next_cursor else None,
        "previous": None,
        "results": [prediction(base_url(request), runtime, job) for job in jobs],
    }


@router.get("/v1/predictions/{prediction_id}")
def get_prediction(request: Request, runtime: RuntimeDep, prediction_id: str, key_id: KeyId) -> dict:
    return prediction(base_url(request), runtime, _own(request, runtime, prediction_id, key_id))


@router.post("/v1/predictions/{prediction_id}/cancel")
def cancel_prediction(request: Request, runtime: RuntimeDep, prediction_id: str, key_id: KeyId) -> dict:
    """Queued: canceled at once; running: at its next step; finished: answered as it is, as Replicate does."""
    try:
        job = runtime.store.cancel(prediction_id, key_id)
    except NotFound:
        request.app.state.guesses.miss(key_id, prediction_id)
        raise
    except JobConflict:
        job = _own(request, runtime, prediction_id, key_id)
    return prediction(base_url(request), runtime, job)


@router.get("/v1/predictions/{prediction_id}/stream", response_class=EventSourceResponse)
def stream_prediction(request: Request, runtime: RuntimeDep, prediction_id: str, key_id: KeyId) -> EventSourceResponse:
    """Replicate's stream events: `logs` as the job advances, `output` with its URL(s), `error`, then `done`."""
    job = _own(request, runtime, prediction_id, key_id)
    release = request.app.state.stream_slots.acquire(job.key_id)
    # The background task also releases the slot when the client left before the first event.
    return EventSourceResponse(
        _events(request, runtime, job, release),
        ping=PING_S,
        headers={"Cache-Control": "no-store"},
        background=BackgroundTask(release),
    )


@router.get("/v1/models/{owner}/{name}")
def get_model(request: Request, runtime: RuntimeDep, owner: str, name: str, key_id: KeyId) -> dict:
    model_id = served_id(_table(runtime), set(runtime.models), owner, name)
    return _model(request, runtime, model_id)


@router.get("/v1/models")
def list_models(request: Request, runtime: RuntimeDep, key_id: KeyId) -> dict:
    """The Replicate names this server answers to, one per served model."""
    served = {replicate_name(_table(runtime), model_id): model_id for model_id in runtime.models}
    return {"next": None, "previous": None, "results": [_model(request, runtime, m) for m in served.values()]}


@router.get("/v1/webhooks/default/secret")
def webhook_secret(runtime: RuntimeDep, key_id: KeyId) -> dict:
    """The `whsec_...` secret this key's webhooks are signed with (the native API's, one per key)."""
    return {"key": runtime.webhook_secret(key_id)}


# --- helpers ---------------------------------------------------------------------------------


async def _create(
    request: Request, runtime: Runtime, model_id: str, body: PredictionRequest, key_id: str, prefer: str | None
) -> JSONResponse:
    edit = edit_input(body.input)
    webhook = requested(body.webhook, body.webhook_events_filter, allow=runtime.settings.fetch_allow)
    idempotency_key = request.headers.get("idempotency-key")
    job = await run_in_threadpool(queue_job, request, model_id, edit, key_id, idempotency_key, webhook)
    seconds = wait_seconds(prefer)
    headers = {}
    if seconds is not None:
        job = await wait_until_finished(runtime, job, seconds)
        headers["Preference-Applied"] = f"wait={seconds}"
    body_out = await run_in_threadpool(prediction, base_url(request), runtime, job, waited=seconds is not None)
    headers["Location"] = body_out["urls"]["get"]
    return JSONResponse(body_out, status_code=201, headers=headers)


def _table(runtime: Runtime) -> dict[str, str]:
    return model_table(runtime.settings.replicate_models)


def _model_of_version(runtime: Runtime, version: str | None) -> str:
    if not version:
        raise InvalidInput("version is required: a version id, or owner/name.", field="version")
    name, _, _ = version.partition(":")
    if "/" in name:
        owner, _, model = name.partition("/")
        return served_id(_table(runtime), set(runtime.models), owner, model)
    for model_id in runtime.models:
        if version_id(model_id) == version:
            return model_id
    raise NotFound(f"Version {version!r} is not served here; GET /v1/models lists the models.", field="version")


def _own(request: Request, runtime: Runtime, prediction_id: str, key_id: str) -> Job:
    job = runtime.store.get(prediction_id, key_id=key_id)
    if job is None:
        request.app.state.guesses.miss(key_id, prediction_id)
        raise NotFound(f"No prediction {prediction_id!r} for this API key.")
    return job


def _model(request: Request, runtime: Runtime, model_id: str) -> dict:
    owner, _, name = replicate_name(_table(runtime), model_id).partition("/")
    served = runtime.models[model_id]
    return {
        "url": f"{base_url(request)}{PREFIX}/v1/models/{owner}/{name}",
        "owner": owner,
        "name": name,
        "description": f"{model_id} on fluxedit ({served.kind}, up to {served.max_references} input_images)",
        "visibility": "public",
        "github_url": None,
        "paper_url": None,
        "license_url": None,
        "run_count": 0,
        "cover_image_url": None,
        "default_example": None,
        # One version per served model; fluxedit keeps no version history, so no real creation date.
        "latest_version": {
            "id": version_id(model_id),
            "created_at": "1970-01-01T00:00:00Z",
            "cog_version": "fluxedit",
            "openapi_schema": {},
        },
    }


async def _events(request: Request, runtime: Runtime, job: Job, release) -> AsyncIterator[ServerSentEvent]:
    # Every event carries the job's position as its id: Replicate's client drops events without one,
    # and Last-Event-ID resumes after the change it names.
    try:
        async for current in changes(runtime, job, since=request.headers.get("last-event-id")):
            body = await run_in_threadpool(prediction, base_url(request), runtime, current)
            at = position(current)
            if body["logs"]:
                yield ServerSentEvent(body["logs"].strip(), event="logs", id=at)
            if body["status"] == "succeeded":
                outputs = body["output"] if isinstance(body["output"], list) else [body["output"]]
                for url in outputs:
                    yield ServerSentEvent(url, event="output", id=at)
            elif body["status"] in ("failed", "canceled"):
                yield ServerSentEvent(json.dumps({"detail": body["error"] or body["status"]}), event="error", id=at)
            if current.state.finished:
                yield ServerSentEvent("{}", event="done", id=at)
    finally:
        release()
