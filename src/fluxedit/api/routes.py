"""The routes of the wire contract (DESIGN.md). Handlers are thin: schema in, store, schema out."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Depends, File, Header, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from fluxedit.api import render
from fluxedit.api.auth import require_key
from fluxedit.api.deps import RuntimeDep
from fluxedit.api.events import stream_response, wait_seconds, wait_until_finished
from fluxedit.api.faces.fal_apps import apps_of
from fluxedit.api.inline import store_inline_images
from fluxedit.api.lean_json import LeanJSONRoute, spooled_images
from fluxedit.api.webhooks import WEBHOOK_BODY_DOC, RequestedWebhook
from fluxedit.engines.capabilities import capabilities_of
from fluxedit.errors import FluxeditError, InvalidInput, NotFound
from fluxedit.images.sniff import sniff_upload
from fluxedit.jobs.errors import JobConflict
from fluxedit.jobs.job import Job
from fluxedit.jobs.outbox import Webhook
from fluxedit.metrics import api_face
from fluxedit.runtime import Runtime, ServedModel
from fluxedit.schema import (
    CURSOR_PATTERN,
    CancelResponse,
    EditInput,
    ErrorResponse,
    FileUploadResponse,
    Health,
    JobState,
    ModelInfo,
    ModelList,
    RequestList,
    ResultResponse,
    StatusResponse,
    StorageHealth,
    SubmitResponse,
)
from fluxedit.storage.space import InsufficientStorage

router = APIRouter()
KeyId = Annotated[str, Depends(require_key)]
# Every error answer, in its one envelope: 400 is a body that cannot be parsed at all (e.g.
# broken multipart), 507 a full or read-only disk.
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 413, 422, 429, 503, 507)}


# What an image is, a schema cannot say: the document says it in words, the upload check in code.
UploadImage = Annotated[
    UploadFile,
    File(
        description="A JPEG, PNG or WebP image (judged by its bytes, not its name or part type).",
        json_schema_extra={"minLength": 1},
    ),
]


def base_url(request: Request) -> str:
    public = request.app.state.runtime.settings.public_url
    return (public or str(request.base_url)).rstrip("/")


def _queue_position(runtime: Runtime, job: Job) -> int | None:
    return runtime.store.queue_position(job) if job.state == JobState.in_queue else None


def _status_fields(request: Request, runtime: Runtime, job: Job) -> dict:
    return render.status_fields(job, base_url(request), _queue_position(runtime, job))


def _result(
    request: Request, runtime: Runtime, job: Job, *, include_cost: bool = False, position: int | None = None
) -> ResultResponse:
    """The result body; `position`: the queue position when the caller read it already (a page's)."""
    if position is None:
        position = _queue_position(runtime, job)
    result = render.result_response(job, base_url(request), runtime.storage, position)
    if include_cost and job.state == JobState.completed:
        result.cost = job_cost(runtime, job)
    return result


def job_cost(runtime: Runtime, job: Job) -> float | None:
    """USD for a completed job at the operator's price per output megapixel; None when no price is set."""
    price = runtime.settings.price_per_megapixel.get(job.model_id)
    if price is None or not job.width or not job.height:
        return None
    return round(price * job.width * job.height / 1e6 * len(job.outputs), 6)


def _issued_url(request: Request, key: str) -> str:
    # Always the API's signed /files/ URL, even over S3: workers read it straight from
    # storage (resolve_issued_url), never over the network to a possibly private bucket.
    return base_url(request) + request.app.state.runtime.signer.signed_path(key)


def own_job(request: Request, request_id: str, key_id: str) -> Job:
    """This key's job, or 404."""
    job = request.app.state.runtime.store.get(request_id, key_id=key_id)
    if job is None:
        raise not_found(request, request_id, key_id)
    return job


def not_found(request: Request, request_id: str, key_id: str) -> NotFound:
    request.app.state.guesses.miss(key_id, request_id)  # (unknown ids are rate-limited per key)
    return NotFound(f"No request {request_id!r} for this API key.")


@router.get("/", include_in_schema=False)
def playground() -> HTMLResponse:
    page = resources.files("fluxedit.api") / "playground" / "index.html"
    return HTMLResponse(page.read_text(encoding="utf-8"))


@router.get("/healthz", tags=["ops"], response_model=Health, responses={503: {"model": Health}})
def healthz(request: Request, runtime: RuntimeDep) -> JSONResponse:
    """200 while the server can take work; 503 (and why) when its storage is not writable. `auth` says
    whether /v1 needs a key ("key" | "none"), so a client can tell before a 401."""
    try:
        runtime.storage.check_writable()
        storage = StorageHealth(writable=True)
    except InsufficientStorage as exc:
        storage = StorageHealth(writable=False, error=exc.message)
    health = Health(
        ok=storage.writable,
        auth="none" if request.app.state.allow_unauthenticated else "key",
        storage=storage,
        models={m.id: m.loaded for m in runtime.models.values()},
    )
    return JSONResponse(health.model_dump(exclude_none=True), status_code=200 if health.ok else 503)


@router.get("/v1/models", response_model=ModelList, tags=["models"], responses=ERRORS)
def list_models(runtime: RuntimeDep, key_id: KeyId) -> ModelList:
    queued = runtime.store.queued_counts()
    return ModelList(
        models=[
            ModelInfo(
                id=m.id,
                engine=m.kind,
                source=m.source,
                loaded=m.loaded,
                max_references=m.max_references,
                queued=queued.get(m.id, 0),
                fal_apps=apps_of(runtime.settings, m.id),
            )
            for m in runtime.models.values()
        ]
    )


async def submit(
    request: Request,
    response: Response,
    runtime: RuntimeDep,
    model_id: str,
    body: EditInput,
    key_id: KeyId,
    webhook: RequestedWebhook,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    prefer: Annotated[
        str | None,
        Header(max_length=200, description="`wait` or `wait=N` (N <= 60 s): answer with the result once the job ends."),
    ] = None,
) -> SubmitResponse | ResultResponse:
    """Queue an edit. Answers at once with the URLs to poll; with `Prefer: wait=N`, with the result
    body if the job ends within N seconds (and `Preference-Applied: wait=N`). With a webhook, the
    request's events are also POSTed there."""
    job = await run_in_threadpool(queue_job, request, model_id, body, key_id, idempotency_key, webhook)
    seconds = wait_seconds(prefer)
    if seconds is not None:
        job = await wait_until_finished(runtime, job, seconds)
        if job.state.finished:
            response.headers["Preference-Applied"] = f"wait={seconds}"
            return await run_in_threadpool(_result, request, runtime, job)
    return SubmitResponse(request_id=job.id, status=job.state, **render.request_urls(base_url(request), job.id))


router.add_api_route(
    "/v1/models/{model_id:path}",
    submit,
    methods=["POST"],
    tags=["requests"],
    responses=ERRORS,
    openapi_extra=WEBHOOK_BODY_DOC,
    route_class_override=LeanJSONRoute,  # the body may hold a 50 MB data: URI
)


def queue_job(
    request: Request,
    model_id: str,
    body: EditInput,
    key_id: str,
    idempotency_key: str | None,
    webhook: Webhook | None = None,
) -> Job:
    """Check the request against its model and queue it; the dispatcher hears of it at once.

    Inline data: images are stored now, like uploads: the job keeps only their signed URLs.
    """
    runtime: Runtime = request.app.state.runtime
    model = runtime.models.get(model_id)
    if model is None:
        served = ", ".join(sorted(runtime.models))
        raise NotFound(f"Model {model_id!r} is not served here. Served models: {served}.", field="model_id")
    request.app.state.quota.check_submit(key_id)
    _check_model_takes(model, body)
    edit_input = body.model_dump(mode="json", exclude_none=True)
    edit_input["image_urls"] = store_inline_images(
        body.image_urls,
        key_id=key_id,
        storage=runtime.storage,
        max_bytes=runtime.settings.max_image_bytes,
        url_for=lambda key: _issued_url(request, key),
        spooled=spooled_images(request),
    )
    del body  # the data: URIs it may hold are stored now; only their URLs go on
    job = runtime.store.submit(
        key_id,
        model_id,
        edit_input,
        max_queued=runtime.settings.max_queued_per_model,
        idempotency_key=idempotency_key,
        webhook=webhook,
        base_url=str(request.base_url),
    )
    runtime.metrics.job_submitted(model_id, api_face(request.url.path))
    if runtime.dispatcher is not None:
        runtime.dispatcher.notify(job)
    return job


def _check_model_takes(model: ServedModel, body: EditInput) -> None:
    """InvalidInput (422) naming the first field of `body` that `model`'s engine cannot honour."""
    limit = model.max_references
    if len(body.image_urls) > limit:
        raise InvalidInput(
            f"{model.id} takes at most {limit} reference images; {len(body.image_urls)} were given.",
            field="image_urls",
        )
    capabilities = capabilities_of(model.source)
    refused = capabilities.refused(body)
    if refused:
        names = ", ".join(refused)
        raise InvalidInput(
            f"{model.id} cannot honour {names}: {capabilities.explain(refused[0])}. Leave it out.", field=refused[0]
        )


@router.get("/v1/requests", response_model=RequestList, tags=["requests"], responses=ERRORS)
def list_requests(
    request: Request,
    runtime: RuntimeDep,
    key_id: KeyId,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200, json_schema_extra={"pattern": CURSOR_PATTERN})] = None,
) -> RequestList:
    """This key's requests, newest first."""
    jobs, next_cursor = runtime.store.list_jobs(key_id, limit=limit, cursor=cursor)
    queued = [job for job in jobs if job.state == JobState.in_queue]
    positions = runtime.store.queue_positions(queued)  # one read per model, not one per queued job
    answers = [_result(request, runtime, job, position=positions.get(job.id)) for job in jobs]
    return RequestList(requests=answers, next_cursor=next_cursor)


@router.get("/v1/requests/{request_id}/status", response_model=StatusResponse, tags=["requests"], responses=ERRORS)
async def status(request: Request, runtime: RuntimeDep, request_id: str, key_id: KeyId) -> StatusResponse:
    # The hottest route: its reads in one thread-pool call on one connection, the rest on the event loop.
    def read() -> dict:
        found = runtime.store.get_status(request_id, key_id)
        if found is None:
            raise not_found(request, request_id, key_id)
        job, position = found
        return render.status_fields(job, base_url(request), position)

    return StatusResponse(**await run_in_threadpool(read))


@router.get("/v1/requests/{request_id}/result", response_model=ResultResponse, tags=["requests"], responses=ERRORS)
def result(
    request: Request,
    runtime: RuntimeDep,
    request_id: str,
    key_id: KeyId,
    include_cost: Annotated[bool, Query(description="Add `cost` (USD) once completed.")] = False,
) -> ResultResponse:
    """The outputs once completed; before that, the status body, so clients keep polling."""
    return _result(request, runtime, own_job(request, request_id, key_id), include_cost=include_cost)


@router.get(
    "/v1/requests/{request_id}/stream",
    tags=["requests"],
    responses={**ERRORS, 200: {"content": {"text/event-stream": {}}, "description": "Server-sent events."}},
    response_class=EventSourceResponse,
)
def stream(request: Request, runtime: RuntimeDep, request_id: str, key_id: KeyId) -> EventSourceResponse:
    """Server-sent events: `status` with the status body at once and at each change of state or step,
    then `result` with the result body when the job ends. Resumes after `Last-Event-ID`."""
    job = own_job(request, request_id, key_id)
    slots = request.app.state.stream_slots
    return stream_response(request, runtime, job, lambda current: _result(request, runtime, current), slots)


@router.post("/v1/requests/{request_id}/cancel", response_model=CancelResponse, tags=["requests"], responses=ERRORS)
def cancel(request: Request, runtime: RuntimeDep, request_id: str, key_id: KeyId) -> CancelResponse:
    """Queued: cancelled at once. Running: stops at its next denoising step. Either way
    `outcome: cancellation_requested`. Finished: unchanged, `outcome: not_cancellable`."""
    try:
        job = runtime.store.cancel(request_id, key_id)
        outcome = "cancellation_requested"
    except NotFound:  # not this key's, or no such id
        request.app.state.guesses.miss(key_id, request_id)
        raise
    except JobConflict as exc:
        if exc.code != "already_finished":
            raise
        job, outcome = own_job(request, request_id, key_id), "not_cancellable"
    if job.state == JobState.cancelled and outcome == "cancellation_requested":  # it was queued: it ends here
        runtime.metrics.job_finished(job.model_id, job.state.value)
    return CancelResponse(**_status_fields(request, runtime, job), outcome=outcome)


@router.post("/v1/files", response_model=FileUploadResponse, tags=["files"], responses=ERRORS)
def upload(request: Request, runtime: RuntimeDep, file: UploadImage, key_id: KeyId) -> FileUploadResponse:
    """Upload a reference image; the URL it returns can go in image_urls."""
    cap = runtime.settings.max_upload_bytes
    data = file.file.read(cap + 1)
    if len(data) > cap:
        raise FluxeditError(
            f"The upload is larger than the {cap // (1024 * 1024)} MB limit.", code="payload_too_large", status=413
        )
    content_type, ext = sniff_upload(data, max_pixels=runtime.settings.max_image_pixels)
    key = f"uploads/{key_id}/{uuid.uuid4().hex}.{ext}"
    runtime.storage.put(key, data, content_type)
    return FileUploadResponse(
        url=_issued_url(request, key),
        content_type=content_type,
        size=len(data),
        expires_at=datetime.now(UTC) + timedelta(seconds=runtime.settings.url_expiry_s),
    )


@router.get("/files/{key:path}", include_in_schema=False)
def serve_file(runtime: RuntimeDep, key: str, expires: int = 0, sig: str = "") -> Response:
    """Signed output and upload URLs; the signature is the permission, no key needed."""
    if not runtime.signer.verify(key, expires, sig):
        raise NotFound("This file link is not valid or has expired.")
    try:
        data = runtime.storage.get(key)
        content_type = runtime.storage.content_type(key)  # as stored: a name need not imply its type
    except FileNotFoundError:
        raise NotFound("This file has expired and was removed.") from None
    headers = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}
    return Response(data, media_type=content_type, headers=headers)
