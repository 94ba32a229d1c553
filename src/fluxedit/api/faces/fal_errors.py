"""Errors as fal's apps answer them: `{"detail": "a sentence"}`, or for bad input
`{"detail": [{"loc": [...], "msg": ..., "type": ...}]}` (FastAPI's form, which fal's apps use).

`FalRoute` (a `face_route`) renders every error a /fal route raises this way, so fal's client reports
the sentence (FalClientHTTPError's message is the body's `detail`).
"""

from __future__ import annotations

import re

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from fluxedit.api.faces.errors import face_route
from fluxedit.errors import FluxeditError
from fluxedit.jobs.job import Job
from fluxedit.jobs.state import JobState

QUERY_FIELDS = ("fal_webhook",)
_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def detail(http_status: int, message: str, *, headers: dict | None = None, **extra) -> JSONResponse:
    """`{"detail": message, **extra}`: `extra` is e.g. fal's cancel `status`."""
    return JSONResponse({"detail": message, **extra}, status_code=http_status, headers=headers)


def invalid(errors: list[dict], *, prefix: tuple = ()) -> JSONResponse:
    """422 with pydantic's errors as fal lists them; the submitted values are never echoed."""
    items = [
        {
            "loc": [*prefix, *error.get("loc", ())],
            "msg": str(error.get("msg", "is not valid")).removeprefix("Value error, "),
            "type": error.get("type", "value_error"),
        }
        for error in errors
    ]
    return JSONResponse({"detail": items}, status_code=422)


def field_loc(field: str) -> list:
    """'image_urls[1]' -> ['body', 'image_urls', 1]; query parameters are under 'query'."""
    parts = [int(index) if index else name for name, index in _PATH_PART.findall(field)]
    return ["query" if field in QUERY_FIELDS else "body", *parts]


def from_error(exc: FluxeditError) -> JSONResponse:
    """A fluxedit error in fal's form: input errors name their field, the rest are a sentence."""
    if exc.status == 422 and exc.field:
        loc = field_loc(exc.field)
        if exc.index is not None and loc[-1] != exc.index:
            loc.append(exc.index)
        return invalid([{"loc": loc, "msg": exc.message, "type": exc.code}])
    headers = {"Retry-After": str(int(max(1, exc.retry_after_s)))} if getattr(exc, "retry_after_s", None) else None
    if exc.status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Key"}
    return detail(exc.status, exc.message, headers=headers)


def from_job(job: Job) -> JSONResponse:
    """The answer to the result of a job that did not complete: why, in fal's form."""
    if job.state == JobState.cancelled:
        return detail(400, f"Request {job.id} was cancelled; it has no output.")
    if not job.state.finished:
        return detail(400, f"Request {job.id} is still in progress; poll its status_url until COMPLETED.")
    code = job.error_code or "internal_error"
    if code == "invalid_input" or code.startswith("input_"):
        loc = ["body", "image_urls", job.error_index] if job.error_index is not None else ["body"]
        return invalid([{"loc": loc, "msg": job.error_message or code, "type": code}])
    status = 503 if code in ("model_unavailable", "upstream_busy", "upstream_unreachable") else 500
    return detail(status, job.error_message or "The request failed.", error_type=code)


def from_invalid(exc: RequestValidationError | ValidationError) -> JSONResponse:
    if isinstance(exc, RequestValidationError):
        return invalid(list(exc.errors()))
    return invalid(exc.errors(), prefix=("body",))  # the translated input, checked against the native schema


# A route whose errors are fal's, not the native envelope.
FalRoute = face_route(lambda _request, exc: from_error(exc), invalid=from_invalid)
