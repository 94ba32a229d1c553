"""The routes of the wire contract (DESIGN.md). Handlers are thin: schema in, store, schema out."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, Response
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from fluxedit.api.auth import require_key
from fluxedit.api.deps import RuntimeDep
from fluxedit.api.events import stream_response, wait_seconds, wait_until_finished
from fluxedit.api.inline import store_inline_images
from fluxedit.errors import FluxeditError, InvalidInput, NotFound
from fluxedit.images.sniff import sniff_upload
from fluxedit.jobs.store import Job
from fluxedit.metrics import api_face
from fluxedit.runtime import Runtime
from fluxedit.schema import (
    EditInput,
    EditOutput,
    ErrorResponse,
    FileUploadResponse,
    JobError,
    JobState,
    ModelInfo,
    ModelList,
    Progress,
    RequestList,
    ResultResponse,
    StatusResponse,
    SubmitResponse,
    Timings,
)
from fluxedit.storage import guess_content_type

router = APIRouter()
KeyId = Annotated[str, Depends(require_key)]
ERRORS = {code: {"model": ErrorResponse} for code in (401, 404, 409, 413, 422, 429, 503)}


def base_url(request: Request) -> str:
    public = request.app.state.runtime.settings.public_url
    return (public or str(request.base_url)).rstrip("/")


def _urls(request: Request, job_id: str) -> dict[str, str]:
    root = f"{base_url(request)}/v1/requests/{job_id}"
    return {"status_url": f"{root}/status", "result_url": f"{root}/result", "cancel_url": f"{root}/cancel"}


def _status_fields(request: Request, runtime: Runtime, job: Job) -> dict:
    fields = dict(
        request_id=job.id,
        model_id=job.model_id,
        status=job.state,
        attempts=job.attempts,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        **_urls(request, job.id),
    )
    if job.state == JobState.in_queue:
        fields["queue_position"] = runtime.store.queue_position(job)
    if job.total_steps:
        fields["progress"] = Progress(step=job.step or 0, total=job.total_steps)
    if job.error_code:
        fields["error"] = JobError(code=job.error_code, message=job.error_message or "", index=job.error_index)
    return fields


def _result(request: Request, runtime: Runtime, job: Job) -> ResultResponse:
    fields = _status_fields(request, runtime, job)
    if job.state == JobState.completed:
        base = base_url(request)
        fields.update(
            output=EditOutput(images=[runtime.storage.url(key, base) for key in job.outputs]),
            seed=job.seed,
            width=job.width,
            height=job.height,
            timings=Timings(**(job.timings or {})),
        )
    return ResultResponse(**fields, input=job.input)


def _issued_url(request: Request, key: str) -> str:
    # Always the API's signed /files/ URL, even over S3: workers read it straight from
    # storage (resolve_issued_url), never over the network to a possibly private bucket.
    return base_url(request) + request.app.state.runtime.signer.signed_path(key)


def _own_job(request: Request, request_id: str, key_id: str, *, status_only: bool = False) -> Job:
    """This key's job; with `status_only`, without its input and outputs (see JobStore.get_status)."""
    store = request.app.state.runtime.store
    job = store.get_status(request_id, key_id) if status_only else store.get(request_id, key_id=key_id)
    if job is None:
        request.app.state.guesses.miss(key_id, request_id)
        raise NotFound(f"No request {request_id!r} for this API key.")
    return job


@router.get("/", include_in_schema=False)
def playground() -> HTMLResponse:
    page = resources.files("fluxedit.api") / "playground" / "index.html"
    return HTMLResponse(page.read_text(encoding="utf-8"))


@router.get("/healthz", tags=["ops"])
def healthz(request: Request, runtime: RuntimeDep) -> dict:
    """Liveness, and whether /v1 needs a key ("auth": "key" | "none"), so a client can tell before a 401."""
    return {
        "ok": True,
        "auth": "none" if request.app.state.allow_unauthenticated else "key",
        "models": {m.id: m.loaded for m in runtime.models.values()},
    }


@router.get("/v1/models", response_model=ModelList, tags=["models"], responses=ERRORS)
def list_models(runtime: RuntimeDep, key_id: KeyId) -> ModelList:
    return ModelList(
        models=[
            ModelInfo(
                id=m.id,
                engine=m.kind,
                source=m.source,
                loaded=m.loaded,
                max_references=m.max_references,
                queued=runtime.store.queued_count(m.id),
            )
            for m in runtime.models.values()
        ]
    )


@router.post("/v1/models/{model_id:path}", tags=["requests"], responses=ERRORS)
async def submit(
    request: Request,
    response: Response,
    runtime: RuntimeDep,
    model_id: str,
    body: EditInput,
    key_id: KeyId,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    prefer: Annotated[
        str | None,
        Header(max_length=200, description="`wait` or `wait=N` (N <= 60 s): answer with the result once the job ends."),
    ] = None,
) -> SubmitResponse | ResultResponse:
    """Queue an edit. Answers at once with the URLs to poll; with `Prefer: wait=N`, with the result
    body if the job ends within N seconds (and `Preference-Applied: wait=N`)."""
    job = await run_in_threadpool(queue_job, request, model_id, body, key_id, idempotency_key)
    seconds = wait_seconds(prefer)
    if seconds is not None:
        job = await wait_until_finished(runtime, job, seconds)
        if job.state.finished:
            response.headers["Preference-Applied"] = f"wait={seconds}"
            return await run_in_threadpool(_result, request, runtime, job)
    return SubmitResponse(request_id=job.id, status=job.state, **_urls(request, job.id))


def queue_job(request: Request, model_id: str, body: EditInput, key_id: str, idempotency_key: str | None) -> Job:
    """Check the request against its model and queue it; the dispatcher hears of it at once.

    Inline data: images are stored now, like uploads: the job keeps only their signed URLs.
    """
    runtime: Runtime = request.app.state.runtime
    model = runtime.models.get(model_id)
    if model is None:
        served = ", ".join(sorted(runtime.models))
        raise NotFound(f"Model {model_id!r} is not served here. Served models: {served}.", field="model_id")
    request.app.state.quota.check_submit(key_id)
    limit = model.max_references
    if len(body.image_urls) > limit:
        raise InvalidInput(
            f"{model_id} takes at most {limit} reference images; {len(body.image_urls)} were given.",
            field="image_urls",
        )
    edit_input = body.model_dump(mode="json", exclude_none=True)
    edit_input["image_urls"] = store_inline_images(
        body.image_urls,
        key_id=key_id,
        storage=runtime.storage,
        max_bytes=runtime.settings.max_image_bytes,
        url_for=lambda key: _issued_url(request, key),
    )
    del body  # the data: URIs it may hold are stored now; only their URLs go on
    job = runtime.store.submit(
        key_id,
        model_id,
        edit_input,
        max_queued=runtime.settings.max_queued_per_model,
        idempotency_key=idempotency_key,
    )
    runtime.metrics.job_submitted(model_id, api_face(request.url.path))
    if runtime.dispatcher is not None:
        runtime.dispatcher.notify(job)
    return job


@router.get("/v1/requests", response_model=RequestList, tags=["requests"], responses=ERRORS)
def list_requests(
    request: Request,
    runtime: RuntimeDep,
    key_id: KeyId,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> RequestList:
    """This key's requests, newest first."""
    jobs, next_cursor = runtime.store.list_jobs(key_id, limit=limit, cursor=cursor)
    return RequestList(requests=[_result(request, runtime, job) for job in jobs], next_cursor=next_cursor)


@router.get("/v1/requests/{request_id}/status", response_model=StatusResponse, tags=["requests"], responses=ERRORS)
def status(request: Request, runtime: RuntimeDep, request_id: str, key_id: KeyId) -> StatusResponse:
    return StatusResponse(**_status_fields(request, runtime, _own_job(request, request_id, key_id, status_only=True)))


@router.get("/v1/requests/{request_id}/result", response_model=ResultResponse, tags=["requests"], responses=ERRORS)
def result(request: Request, runtime: RuntimeDep, request_id: str, key_id: KeyId) -> ResultResponse:
    """The outputs once completed; before that, the status body, so clients keep polling."""
    return _result(request, runtime, _own_job(request, request_id, key_id))


@router.get(
    "/v1/requests/{request_id}/stream",
    tags=["requests"],
    responses={**ERRORS, 200: {"content": {"text/event-stream": {}}, "description": "Server-sent events."}},
    response_class=EventSourceResponse,
)
def stream(request: Request, runtime: RuntimeDep, request_id: str, key_id: KeyId) -> EventSourceResponse:
    """Server-sent events: `status` with the status body at once and at each change of state or step,
    then `result` with the result body when the job ends. Resumes after `Last-Event-ID`."""
    job = _own_job(request, request_id, key_id)
    slots = request.app.state.stream_slots
    return stream_response(request, runtime, job, lambda current: _result(request, runtime, current), slots)


@router.post("/v1/requests/{request_id}/cancel", response_model=StatusResponse, tags=["requests"], responses=ERRORS)
def cancel(request: Request, runtime: RuntimeDep, request_id: str, key_id: KeyId) -> StatusResponse:
    """Queued: cancelled at once. Running: stops at its next denoising step. Finished: 409."""
    try:
        job = runtime.store.cancel(request_id, key_id)
    except NotFound:  # not this key's, or no such id
        request.app.state.guesses.miss(key_id, request_id)
        raise
    if job.state == JobState.cancelled:  # it was queued: it ends here, not in a worker
        runtime.metrics.job_finished(job.model_id, job.state.value)
    return StatusResponse(**_status_fields(request, runtime, job))


@router.post("/v1/files", response_model=FileUploadResponse, tags=["files"], responses=ERRORS)
def upload(request: Request, runtime: RuntimeDep, file: UploadFile, key_id: KeyId) -> FileUploadResponse:
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
    except FileNotFoundError:
        raise NotFound("This file has expired and was removed.") from None
    headers = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}
    return Response(data, media_type=guess_content_type(key), headers=headers)
