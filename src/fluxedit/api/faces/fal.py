"""fal's queue API under /fal, so that fal's own clients work against this server.

fal's Python client builds `https://{FAL_QUEUE_RUN_HOST}/{app_id}` for `submit` and
`https://{FAL_RUN_HOST}/{app_id}` for `run`, and sends the same POST to both: the two
are told apart by host alone, so they get two prefixes here:

    FAL_QUEUE_RUN_HOST=<host:port>/fal       FAL_RUN_HOST=<host:port>/fal/run

Requests live under the app's owner/alias (`fal-ai/flux-2-pro/requests/{id}`), as on
fal. Submit, status and cancel are the native ones (`queue_job`, the job store); this
module only translates fal's input in and fal's answers out.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from fluxedit.api.deps import RuntimeDep
from fluxedit.api.events import PING_S, changes, wait_until_finished
from fluxedit.api.faces import fal_errors, fal_webhook
from fluxedit.api.faces.fal_apps import fal_apps
from fluxedit.api.faces.fal_errors import FalRoute
from fluxedit.api.faces.fal_render import fal_output, fal_status, output_images, queue_urls
from fluxedit.api.faces.fal_schema import FalEditInput
from fluxedit.api.routes import KeyId, base_url, own_job, queue_job
from fluxedit.errors import NotFound
from fluxedit.jobs.errors import JobConflict
from fluxedit.jobs.job import Job
from fluxedit.jobs.state import JobState
from fluxedit.runtime import Runtime

router = APIRouter(prefix="/fal", route_class=FalRoute, tags=["fal"])
Logs = Annotated[bool, Query(description="Include logs (one line per denoising step).")]
RUN_CHECK_S = 1  # how often `run` looks whether its caller is still there


def _face_url(request: Request) -> str:
    return base_url(request) + "/fal"


def model_for_app(runtime: Runtime, app_id: str) -> str:
    """The served model id a fal app id runs; a native model id is accepted as it is."""
    table = fal_apps(runtime.settings)
    if app_id in table:
        return table[app_id]
    if app_id in runtime.models:
        return app_id
    served = ", ".join(sorted(app for app, model in table.items() if model in runtime.models)) or "none"
    raise NotFound(f"No fal app {app_id!r} is served here. fal apps served: {served}.", field="app_id")


def _queue(request: Request, app_id: str, body: FalEditInput, key_id: str, webhook_url: str | None) -> Job:
    runtime: Runtime = request.app.state.runtime
    webhook = fal_webhook.requested(webhook_url, allow=runtime.settings.fetch_allow)
    return queue_job(request, model_for_app(runtime, app_id), body.edit_input(), key_id, None, webhook)


def _status_body(request: Request, runtime: Runtime, app_path: str, job: Job, with_logs: bool) -> dict:
    position = runtime.store.queue_position(job) if job.state == JobState.in_queue else None
    urls = queue_urls(_face_url(request), app_path, job.id)
    return fal_status(job, urls, queue_position=position, with_logs=with_logs)


def _output(request: Request, runtime: Runtime, job: Job) -> JSONResponse:
    if job.state != JobState.completed:
        return fal_errors.from_job(job)
    return JSONResponse(fal_output(job, output_images(runtime.storage, job, base_url(request))))


@router.get("/.well-known/jwks.json", summary="fal: the keys that sign this server's fal webhooks")
def webhook_keys(runtime: RuntimeDep) -> dict:
    """The public keys (a JWKS) to verify `X-Fal-Webhook-Signature` with, as fal's own at rest.alpha.fal.ai."""
    return fal_webhook.jwks(runtime.settings)


@router.post("/run/{app_id:path}", summary="fal: run an app and wait for its output")
async def run(request: Request, runtime: RuntimeDep, app_id: str, body: FalEditInput, key_id: KeyId) -> JSONResponse:
    """fal's synchronous call: queue the edit, answer its output once it ends. A caller that
    hangs up cancels it, as on fal."""
    job = await run_in_threadpool(_queue, request, app_id, body, key_id, None)
    while not job.state.finished:
        if await request.is_disconnected():
            await run_in_threadpool(_cancel_quietly, runtime, job)
            return fal_errors.detail(499, "The caller left; the request was cancelled.")
        job = await wait_until_finished(runtime, job, RUN_CHECK_S)
    return await run_in_threadpool(_output, request, runtime, job)


def _cancel_quietly(runtime: Runtime, job: Job) -> None:
    try:
        runtime.store.cancel(job.id, job.key_id)
    except JobConflict:
        pass  # it ended meanwhile


@router.post("/{app_id:path}", summary="fal: submit to the queue")
async def submit(
    request: Request,
    runtime: RuntimeDep,
    app_id: str,
    body: FalEditInput,
    key_id: KeyId,
    fal_webhook: Annotated[str | None, Query(max_length=2048, description="Where to POST the result.")] = None,
) -> dict:
    """Queue an edit; answers fal's `{request_id, response_url, status_url, cancel_url}`."""
    job = await run_in_threadpool(_queue, request, app_id, body, key_id, fal_webhook)
    urls = queue_urls(_face_url(request), app_id, job.id)
    position = await run_in_threadpool(runtime.store.queue_position, job)
    return {
        "request_id": job.id,
        "gateway_request_id": job.id,
        "status": "IN_QUEUE",
        "queue_position": position,
        **urls,
    }


@router.get("/{app_path:path}/requests/{request_id}/status/stream", summary="fal: stream the status until COMPLETED")
def status_stream(
    request: Request, runtime: RuntimeDep, app_path: str, request_id: str, key_id: KeyId, logs: Logs = False
) -> EventSourceResponse:
    """Server-sent events, each one fal status body, at once and at each change; the last is COMPLETED."""
    job = own_job(request, request_id, key_id)
    release = request.app.state.stream_slots.acquire(key_id)

    async def events() -> AsyncIterator[ServerSentEvent]:
        try:
            async for current in changes(runtime, job):
                body = await run_in_threadpool(_status_body, request, runtime, app_path, current, logs)
                yield ServerSentEvent(json.dumps(body))
        finally:
            release()

    # The background task also releases the slot when the client left before the first event.
    return EventSourceResponse(
        events(), ping=PING_S, headers={"Cache-Control": "no-store"}, background=BackgroundTask(release)
    )


@router.get("/{app_path:path}/requests/{request_id}/status", summary="fal: request status")
def status(
    request: Request, runtime: RuntimeDep, app_path: str, request_id: str, key_id: KeyId, logs: Logs = False
) -> dict:
    return _status_body(request, runtime, app_path, own_job(request, request_id, key_id), logs)


@router.get("/{app_path:path}/requests/{request_id}", summary="fal: the output of a completed request")
def response(request: Request, runtime: RuntimeDep, app_path: str, request_id: str, key_id: KeyId) -> JSONResponse:
    return _output(request, runtime, own_job(request, request_id, key_id))


@router.put("/{app_path:path}/requests/{request_id}/cancel", summary="fal: cancel a request")
def cancel(runtime: RuntimeDep, app_path: str, request_id: str, key_id: KeyId) -> JSONResponse:
    """202 CANCELLATION_REQUESTED (queued: cancelled at once; running: stops at its next step),
    400 ALREADY_COMPLETED, 404 NOT_FOUND, as fal answers."""
    try:
        runtime.store.cancel(request_id, key_id)
    except NotFound as exc:
        return fal_errors.detail(404, exc.message, status="NOT_FOUND")
    except JobConflict as exc:
        return fal_errors.detail(400, exc.message, status="ALREADY_COMPLETED")
    return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202)
