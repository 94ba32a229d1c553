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

from fluxedit.api.auth import require_key
from fluxedit.errors import FluxeditError, InvalidInput
from fluxedit.jobs.store import Job
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
UPLOAD_TYPES = {"JPEG": ("image/jpeg", "jpg"), "PNG": ("image/png", "png"), "WEBP": ("image/webp", "webp")}


class NotFound(FluxeditError):
    code = "not_found"
    status = 404


def _services(request: Request):
    return request.app.state.services


def base_url(request: Request) -> str:
    public = _services(request).settings.public_url
    return (public or str(request.base_url)).rstrip("/")


def _urls(request: Request, job_id: str) -> dict[str, str]:
    root = f"{base_url(request)}/v1/requests/{job_id}"
    return {"status_url": f"{root}/status", "result_url": f"{root}/result", "cancel_url": f"{root}/cancel"}


def _status_fields(request: Request, job: Job) -> dict:
    services = _services(request)
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
        fields["queue_position"] = services.store.queue_position(job)
    if job.total_steps:
        fields["progress"] = Progress(step=job.step or 0, total=job.total_steps)
    if job.error_code:
        fields["error"] = JobError(code=job.error_code, message=job.error_message or "", index=job.error_index)
    return fields


def _result(request: Request, job: Job) -> ResultResponse:
    fields = _status_fields(request, job)
    if job.state == JobState.completed:
        storage, base = _services(request).storage, base_url(request)
        fields.update(
            output=EditOutput(images=[storage.url(key, base) for key in job.outputs]),
            seed=job.seed,
            width=job.width,
            height=job.height,
            timings=Timings(**(job.timings or {})),
        )
    return ResultResponse(**fields, input=job.input)


def _own_job(request: Request, request_id: str, key_id: str) -> Job:
    job = _services(request).store.get(request_id, key_id=key_id)
    if job is None:
        raise NotFound(f"No request {request_id!r} for this API key.")
    return job


@router.get("/", include_in_schema=False)
def playground() -> HTMLResponse:
    page = resources.files("fluxedit.api") / "playground" / "index.html"
    return HTMLResponse(page.read_text(encoding="utf-8"))


@router.get("/healthz", tags=["ops"])
def healthz(request: Request) -> dict:
    """Liveness, and whether /v1 needs a key ("auth": "key" | "none"), so a client can tell before a 401."""
    services = _services(request)
    return {
        "ok": True,
        "auth": "none" if services.allow_unauthenticated else "key",
        "models": {m.id: m.engine.loaded for m in services.models.values()},
    }


@router.get("/v1/models", response_model=ModelList, tags=["models"], responses=ERRORS)
def list_models(request: Request, key_id: KeyId) -> ModelList:
    services = _services(request)
    return ModelList(
        models=[
            ModelInfo(
                id=m.id,
                engine=m.engine.kind,
                source=m.source,
                loaded=m.engine.loaded,
                max_references=m.engine.max_references,
                queued=services.store.queued_count(m.id),
            )
            for m in services.models.values()
        ]
    )


@router.post("/v1/models/{model_id:path}", response_model=SubmitResponse, tags=["requests"], responses=ERRORS)
def submit(
    request: Request,
    model_id: str,
    body: EditInput,
    key_id: KeyId,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> SubmitResponse:
    """Queue an edit. Answers at once with the URLs to poll."""
    services = _services(request)
    model = services.models.get(model_id)
    if model is None:
        served = ", ".join(sorted(services.models))
        raise NotFound(f"Model {model_id!r} is not served here. Served models: {served}.", field="model_id")
    limit = model.engine.max_references
    if len(body.image_urls) > limit:
        raise InvalidInput(
            f"{model_id} takes at most {limit} reference images; {len(body.image_urls)} were given.",
            field="image_urls",
        )
    job = services.store.submit(
        key_id,
        model_id,
        body.model_dump(mode="json", exclude_none=True),
        max_queued=services.settings.max_queued_per_model,
        idempotency_key=idempotency_key,
    )
    if services.dispatcher is not None:
        services.dispatcher.notify(job)
    return SubmitResponse(request_id=job.id, status=job.state, **_urls(request, job.id))


@router.get("/v1/requests", response_model=RequestList, tags=["requests"], responses=ERRORS)
def list_requests(
    request: Request,
    key_id: KeyId,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> RequestList:
    """This key's requests, newest first."""
    jobs, next_cursor = _services(request).store.list_jobs(key_id, limit=limit, cursor=cursor)
    return RequestList(requests=[_result(request, job) for job in jobs], next_cursor=next_cursor)


@router.get("/v1/requests/{request_id}/status", response_model=StatusResponse, tags=["requests"], responses=ERRORS)
def status(request: Request, request_id: str, key_id: KeyId) -> StatusResponse:
    return StatusResponse(**_status_fields(request, _own_job(request, request_id, key_id)))


@router.get("/v1/requests/{request_id}/result", response_model=ResultResponse, tags=["requests"], responses=ERRORS)
def result(request: Request, request_id: str, key_id: KeyId) -> ResultResponse:
    """The outputs once completed; before that, the status body, so clients keep polling."""
    return _result(request, _own_job(request, request_id, key_id))


@router.post("/v1/requests/{request_id}/cancel", response_model=StatusResponse, tags=["requests"], responses=ERRORS)
def cancel(request: Request, request_id: str, key_id: KeyId) -> StatusResponse:
    """Queued: cancelled at once. Running: stops at its next denoising step. Finished: 409."""
    job = _services(request).store.cancel(request_id, key_id)  # 404 (JobNotFound) when not this key's
    return StatusResponse(**_status_fields(request, job))


@router.post("/v1/files", response_model=FileUploadResponse, tags=["files"], responses=ERRORS)
def upload(request: Request, file: UploadFile, key_id: KeyId) -> FileUploadResponse:
    """Upload a reference image; the URL it returns can go in image_urls."""
    services = _services(request)
    cap = services.settings.max_upload_bytes
    data = file.file.read(cap + 1)
    if len(data) > cap:
        raise FluxeditError(
            f"The upload is larger than the {cap // (1024 * 1024)} MB limit.", code="payload_too_large", status=413
        )
    content_type, ext = _sniff_image(data)
    key = f"uploads/{key_id}/{uuid.uuid4().hex}.{ext}"
    services.storage.put(key, data, content_type)
    return FileUploadResponse(
        # Always the API's signed /files/ URL, even over S3: workers read it straight from
        # storage (resolve_issued_url), never over the network to a possibly private bucket.
        url=base_url(request) + services.signer.signed_path(key),
        content_type=content_type,
        size=len(data),
        expires_at=datetime.now(UTC) + timedelta(seconds=services.settings.url_expiry_s),
    )


def _sniff_image(data: bytes) -> tuple[str, str]:
    """(content type, extension) of an upload, from its header only; 422 if not an image we take."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = image.format
    except (UnidentifiedImageError, OSError):
        kind = None
    if kind not in UPLOAD_TYPES:
        raise FluxeditError(
            "The upload is not a JPEG, PNG or WebP image.", code="input_not_image", status=422, field="file"
        )
    return UPLOAD_TYPES[kind]


@router.get("/files/{key:path}", include_in_schema=False)
def serve_file(request: Request, key: str, expires: int = 0, sig: str = "") -> Response:
    """Signed output and upload URLs; the signature is the permission, no key needed."""
    services = _services(request)
    if not services.signer.verify(key, expires, sig):
        raise NotFound("This file link is not valid or has expired.")
    try:
        data = services.storage.get(key)
    except FileNotFoundError:
        raise NotFound("This file has expired and was removed.") from None
    return Response(data, media_type=guess_content_type(key), headers={"Cache-Control": "private, max-age=3600"})
