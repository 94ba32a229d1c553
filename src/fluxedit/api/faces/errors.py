"""A face's own error bodies: a route class that renders fluxedit's errors in the provider's shape.

FastAPI's exception handlers are app-wide, so a face that must answer errors
differently (Replicate: problem+json; BFL: `{"detail": ...}`) wraps its routes'
handlers instead; everything raised inside them, auth and validation included,
comes out in the face's shape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from fluxedit.errors import FluxeditError
from fluxedit.schema import invalid_input

log = logging.getLogger("fluxedit.api")

# (request, error) -> the response; the error is always a FluxeditError here.
Renderer = Callable[[Request, FluxeditError], Response]
InvalidRenderer = Callable[[RequestValidationError | ValidationError], Response]


def as_fluxedit_error(exc: Exception) -> FluxeditError:
    """Any exception a route raises -> a FluxeditError with a sentence a client may see."""
    if isinstance(exc, FluxeditError):
        return exc
    if isinstance(exc, (RequestValidationError, ValidationError)):
        return invalid_input(exc.errors())
    if isinstance(exc, HTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else "The request could not be served."
        return FluxeditError(detail, code="error", status=exc.status_code)
    return FluxeditError("The server hit an unexpected error; it has been logged.")


def face_route(render: Renderer, *, invalid: InvalidRenderer | None = None) -> type[APIRoute]:
    """An APIRoute class whose errors are answered by `render`; with `invalid`, bad input (the
    request's, or a translated input's pydantic ValidationError) keeps pydantic's error list."""

    class FaceRoute(APIRoute):
        def get_route_handler(self) -> Callable:
            handler = super().get_route_handler()

            async def guarded(request: Request) -> Response:
                try:
                    return await handler(request)
                except (RequestValidationError, ValidationError) as exc:
                    if invalid is None:
                        return render(request, as_fluxedit_error(exc))
                    return invalid(exc)
                except Exception as exc:  # every error leaves in the face's shape
                    if not isinstance(exc, (FluxeditError, RequestValidationError, HTTPException)):
                        log.exception("unhandled error on %s %s", request.method, request.url.path)
                    return render(request, as_fluxedit_error(exc))

            return guarded

    return FaceRoute
