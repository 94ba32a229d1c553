"""The routes of the wire contract (DESIGN.md). Handlers are thin: schema in, store, schema out."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, Response
from PIL import Image, UnidentifiedImageError

from fluxedit.api import render
from fluxedit.api.auth import require_key
from fluxedit.api.deps import RuntimeDep
from fluxedit.api.webhooks import WEBHOOK_BODY_DOC, RequestedWebhook
from fluxedit.errors import FluxeditError, InvalidInput, NotFound
from fluxedit.images.formats import IMAGE_TYPES
from fluxedit.jobs.store import Job
from fluxedit.runtime import Runtime
from fluxedit.schema import (
    EditInput,
    ErrorResponse,
    FileUploadResponse,
    JobState,
    ModelInfo,
    ModelList,
    RequestList,
    ResultResponse,
    StatusResponse,
    SubmitResponse,
)
from fluxedit.storage import guess_content_type

router = APIRouter()
KeyId = Annotated[str, Depends(require_key)]
ERRORS = {code: {"model": ErrorResponse} for code in (401, 404, 409, 413, 422, 429, 503)}
UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP")


def base_url(request: Request) -> str:
    public = request.app.state.runtime.settings.public_url
    return (public or str(request.base_url)).rstrip("/")


def _queue_position(runtime: Runtime, job: Job) -> int | None:
    return runtime.store.queue_position(job) if job.state == JobState.in_queue else None


def _status(request: Request, runtime: Runtime, job: Job) -> StatusResponse:
    return render.status_response(job, base_url(request), _queue_position(runtime, job))


def _result(request: Request, runtime: Runtime, job: Job) -> ResultResponse:
    return render.result_response(job, base_url(request), runtime.storage, _queue_position(runtime, job))


def _own_job(runtime: Runtime, request_id: str, key_id: str) -> Job:
    job = runtime.store.get(request_id, key_id=key_id)
    if job is None:
        raise NotFound(f"No request {request_id!r} for this API key.")
    return job


@router.get("/", include_in_schema=False)
def playground() -> HTMLResponse:
    page = resources.files("fluxedit.api") / "playground" / "index.html"
    return HTMLResponse(page.read_text(encoding="utf-8"))


@router.get("/healthz", tags=["ops"])
def healthz(runtime: RuntimeDep) -> dict:
    return {"ok": True, "models": {m.id: m.loaded for m in runtime.models.values()}}


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


@router.post(
    "/v1/models/{model_id:path}",
    response_model=SubmitResponse,
    tags=["requests"],
    responses=ERRORS,
    openapi_extra=WEBHOOK_BODY_DOC,
)
def submit(
    request: Request,
    runtime: RuntimeDep,
    model_id: str,
    body: EditInput,
    key_id: KeyId,
    webhook: RequestedWebhook,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> SubmitResponse:
    """Queue an edit. Answers at once with the URLs to poll; with a webhook, events are also POSTed there."""
    model = runtime.models.get(model_id)
    if model is None:
        served = ", ".join(sorted(runtime.models))
        raise NotFound(f"Model {model_id!r} is not served here. Served models: {served}.", field="model_id")
    limit = model.max_references
    if len(body.image_urls) > limit:
        raise InvalidInput(
            f"{model_id} takes at most {limit} reference images; {len(body.image_urls)} were given.",
            field="image_urls",
        )
    job = runtime.store.submit(
        key_id,
        model_id,
        body.model_dump(mode="json", exclude_none=True),
        max_queued=runtime.settings.max_queued_per_model,
        idempotency_key=idempotency_key,
        webhook_url=webhook.url if webhook else None,
        webhook_filter=webhook.events if webhook else None,
        base_url=str(request.base_url),
    )
    if runtime.dispatcher is not None:
        runtime.dispatcher.notify(job)
    return SubmitResponse(request_id=job.id, status=job.state, **render.request_urls(base_url(request), job.id))


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
    return _status(request, runtime, _own_job(runtime, request_id, key_id))


@router.get("/v1/requests/{request_id}/result", response_model=ResultResponse, tags=["requests"], responses=ERRORS)
def result(request: Request, runtime: RuntimeDep, request_id: str, key_id: KeyId) -> ResultResponse:
    """The outputs once completed; before that, the status body, so clients keep polling."""
    return _result(request, runtime, _own_job(runtime, request_id, key_id))


@router.post("/v1/requests/{request_id}/cancel", response_model=StatusResponse, tags=["requests"], responses=ERRORS)
def cancel(request: Request, runtime: RuntimeDep, request_id: str, key_id: KeyId) -> StatusResponse:
    """Queued: cancelled at once. Running: stops at its next denoising step. Finished: 409."""
    job = runtime.store.cancel(request_id, key_id)  # 404 (NotFound) when not this key's
    return _status(request, runtime, job)


@router.post("/v1/files", response_model=FileUploadResponse, tags=["files"], responses=ERRORS)
def upload(request: Request, runtime: RuntimeDep, file: UploadFile, key_id: KeyId) -> FileUploadResponse:
    """Upload a reference image; the URL it returns can go in image_urls."""
    cap = runtime.settings.max_upload_bytes
    data = file.file.read(cap + 1)
    if len(data) > cap:
        raise FluxeditError(
            f"The upload is larger than the {cap // (1024 * 1024)} MB limit.", code="payload_too_large", status=413
        )
    content_type, ext = _sniff_image(data)
    key = f"uploads/{key_id}/{uuid.uuid4().hex}.{ext}"
    runtime.storage.put(key, data, content_type)
    return FileUploadResponse(
        # Always the API's signed /files/ URL, even over S3: workers read it straight from
        # storage (resolve_issued_url), never over the network to a possibly private bucket.
        url=base_url(request) + runtime.signer.signed_path(key),
        content_type=content_type,
        size=len(data),
        expires_at=datetime.now(UTC) + timedelta(seconds=runtime.settings.url_expiry_s),
    )


def _sniff_image(data: bytes) -> tuple[str, str]:
    """(content type, extension) of an upload, from its header only; 422 if not an image we take."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = image.format
    except (UnidentifiedImageError, OSError):
        kind = None
    if kind not in UPLOAD_FORMATS:
        raise FluxeditError(
            "The upload is not a JPEG, PNG or WebP image.", code="input_not_image", status=422, field="file"
        )
    image_type = IMAGE_TYPES[kind.lower()]
    return image_type.content_type, image_type.extension


@router.get("/files/{key:path}", include_in_schema=False)
def serve_file(runtime: RuntimeDep, key: str, expires: int = 0, sig: str = "") -> Response:
    """Signed output and upload URLs; the signature is the permission, no key needed."""
    if not runtime.signer.verify(key, expires, sig):
        raise NotFound("This file link is not valid or has expired.")
    try:
        data = runtime.storage.get(key)
    except FileNotFoundError:
        raise NotFound("This file has expired and was removed.") from None
    return Response(data, media_type=guess_content_type(key), headers={"Cache-Control": "private, max-age=3600"})
