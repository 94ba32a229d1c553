"""The routes of the wire contract (DESIGN.md). Handlers are thin: schema in, store, schema out."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Depends, File, Header, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response

from fluxedit.api.auth import require_key
from fluxedit.api.inline import store_inline_images
from fluxedit.api.lean_json import LeanJSONRoute
from fluxedit.errors import FluxeditError, InvalidInput
from fluxedit.images.sniff import sniff_upload
from fluxedit.jobs.store import Job, JobNotFound
from fluxedit.schema import (
    CURSOR_PATTERN,
    EditInput,
    EditOutput,
    ErrorResponse,
    FileUploadResponse,
    Health,
    JobError,
    JobState,
    ModelInfo,
    ModelList,
    Progress,
    RequestList,
    ResultResponse,
    StatusResponse,
    StorageHealth,
    SubmitResponse,
    Timings,
)
from fluxedit.storage import guess_content_type
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


def _issued_url(request: Request, key: str) -> str:
    # Always the API's signed /files/ URL, even over S3: workers read it straight from
    # storage (resolve_issued_url), never over the network to a possibly private bucket.
    return base_url(request) + _services(request).signer.signed_path(key)


def _own_job(request: Request, request_id: str, key_id: str, *, status_only: bool = False) -> Job:
    """This key's job; with `status_only`, without its input and outputs (see JobStore.get_status)."""
    services = _services(request)
    store = services.store
    job = store.get_status(request_id, key_id) if status_only else store.get(request_id, key_id=key_id)
    if job is None:
        services.guesses.miss(key_id, request_id)
        raise NotFound(f"No request {request_id!r} for this API key.")
    return job


@router.get("/", include_in_schema=False)
def playground() -> HTMLResponse:
    page = resources.files("fluxedit.api") / "playground" / "index.html"
    return HTMLResponse(page.read_text(encoding="utf-8"))


@router.get("/healthz", tags=["ops"], response_model=Health, responses={503: {"model": Health}})
def healthz(request: Request) -> JSONResponse:
    """200 while the server can take work; 503 (and why) when its storage is not writable."""
    services = _services(request)
    try:
        services.storage.check_writable()
        storage = StorageHealth(writable=True)
    except InsufficientStorage as exc:
        storage = StorageHealth(writable=False, error=exc.message)
    health = Health(
        ok=storage.writable,
        storage=storage,
        models={m.id: m.engine.loaded for m in services.models.values()},
    )
    return JSONResponse(health.model_dump(exclude_none=True), status_code=200 if health.ok else 503)


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
    edit_input = body.model_dump(mode="json", exclude_none=True)
    edit_input["image_urls"] = store_inline_images(
        body.image_urls,
        key_id=key_id,
        storage=services.storage,
        max_bytes=services.settings.max_image_bytes,
        url_for=lambda key: _issued_url(request, key),
    )
    del body  # the data: URIs it may hold are stored now; only their URLs go on
    job = services.store.submit(
        key_id,
        model_id,
        edit_input,
        max_queued=services.settings.max_queued_per_model,
        idempotency_key=idempotency_key,
    )
    if services.dispatcher is not None:
        services.dispatcher.notify(job)
    return SubmitResponse(request_id=job.id, status=job.state, **_urls(request, job.id))


router.add_api_route(
    "/v1/models/{model_id:path}",
    submit,
    methods=["POST"],
    response_model=SubmitResponse,
    tags=["requests"],
    responses=ERRORS,
    route_class_override=LeanJSONRoute,  # the body may hold a 50 MB data: URI
)


@router.get("/v1/requests", response_model=RequestList, tags=["requests"], responses=ERRORS)
def list_requests(
    request: Request,
    key_id: KeyId,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200, json_schema_extra={"pattern": CURSOR_PATTERN})] = None,
) -> RequestList:
    """This key's requests, newest first."""
    jobs, next_cursor = _services(request).store.list_jobs(key_id, limit=limit, cursor=cursor)
    return RequestList(requests=[_result(request, job) for job in jobs], next_cursor=next_cursor)


@router.get("/v1/requests/{request_id}/status", response_model=StatusResponse, tags=["requests"], responses=ERRORS)
def status(request: Request, request_id: str, key_id: KeyId) -> StatusResponse:
    return StatusResponse(**_status_fields(request, _own_job(request, request_id, key_id, status_only=True)))


@router.get("/v1/requests/{request_id}/result", response_model=ResultResponse, tags=["requests"], responses=ERRORS)
def result(request: Request, request_id: str, key_id: KeyId) -> ResultResponse:
    """The outputs once completed; before that, the status body, so clients keep polling."""
    return _result(request, _own_job(request, request_id, key_id))


@router.post("/v1/requests/{request_id}/cancel", response_model=StatusResponse, tags=["requests"], responses=ERRORS)
def cancel(request: Request, request_id: str, key_id: KeyId) -> StatusResponse:
    """Queued: cancelled at once. Running: stops at its next denoising step. Finished: 409."""
    services = _services(request)
    try:
        job = services.store.cancel(request_id, key_id)
    except JobNotFound:  # not this key's, or no such id
        services.guesses.miss(key_id, request_id)
        raise
    return StatusResponse(**_status_fields(request, job))


@router.post("/v1/files", response_model=FileUploadResponse, tags=["files"], responses=ERRORS)
def upload(request: Request, file: UploadImage, key_id: KeyId) -> FileUploadResponse:
    """Upload a reference image; the URL it returns can go in image_urls."""
    services = _services(request)
    cap = services.settings.max_upload_bytes
    data = file.file.read(cap + 1)
    if len(data) > cap:
        raise FluxeditError(
            f"The upload is larger than the {cap // (1024 * 1024)} MB limit.", code="payload_too_large", status=413
        )
    content_type, ext = sniff_upload(data, max_pixels=services.settings.max_image_pixels)
    key = f"uploads/{key_id}/{uuid.uuid4().hex}.{ext}"
    services.storage.put(key, data, content_type)
    return FileUploadResponse(
        url=_issued_url(request, key),
        content_type=content_type,
        size=len(data),
        expires_at=datetime.now(UTC) + timedelta(seconds=services.settings.url_expiry_s),
    )


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
    headers = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}
    return Response(data, media_type=guess_content_type(key), headers=headers)
