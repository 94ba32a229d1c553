"""One JSON envelope for every error: {"error": {"code", "message", "field"?, "index"?}}, and beside it
the flat `error_code` and `error_message` that RunComfy's clients read (docs/compat.md).

No stack trace ever reaches a client: unexpected exceptions are logged here and
answered with a generic sentence.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from fluxedit.errors import FluxeditError
from fluxedit.schema import invalid_input
from fluxedit.storage.space import database_location, is_no_room, no_room

log = logging.getLogger("fluxedit.api")

STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "rate_limited",
    503: "unavailable",
    507: "insufficient_storage",
}


def error_response(status: int, code: str, message: str, *, headers: dict | None = None, **extra) -> JSONResponse:
    body = {"code": code, "message": message}
    body.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse(
        {"error": body, "error_code": code, "error_message": message}, status_code=status, headers=headers
    )


async def _validation_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    problem = invalid_input(exc.errors())
    return error_response(422, problem.code, problem.message, field=problem.field, index=problem.index)


async def _fluxedit_handler(request: Request, exc: FluxeditError) -> JSONResponse:
    headers = None
    retry_after = getattr(exc, "retry_after_s", None)
    if retry_after is not None:
        headers = {"Retry-After": str(int(max(1, retry_after)))}
    if exc.status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    return error_response(exc.status, exc.code, exc.message, headers=headers, field=exc.field, index=exc.index)


async def _http_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = STATUS_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else "The request could not be served."
    if exc.status_code == 404 and message == "Not Found":
        message = f"There is nothing at {request.url.path}."
    if exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}."
    return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))


async def _database_handler(request: Request, exc: DBAPIError) -> JSONResponse:
    if not is_no_room(exc):
        return await _unexpected_handler(request, exc)
    log.error("the database has no room for a write on %s %s: %s", request.method, request.url.path, exc.orig)
    error = no_room(database_location(request.app.state.runtime.settings))
    return error_response(error.status, error.code, error.message)


async def _unexpected_handler(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "The server hit an unexpected error; it has been logged.")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(FluxeditError, _fluxedit_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    app.add_exception_handler(DBAPIError, _database_handler)
    app.add_exception_handler(Exception, _unexpected_handler)
