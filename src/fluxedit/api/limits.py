"""A bound on request bodies, checked before a handler reads them into memory."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fluxedit.api.errors import error_response


class BodySizeLimit:
    """Answer 413 to any request whose body is, or turns out to be, over `max_bytes`.

    Content-Length is checked up front; a chunked body is counted as it arrives.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.message = (
            f"The request body is larger than {max_bytes / (1024 * 1024):.0f} MB; "
            "upload large images with POST /v1/files and send their URLs."
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(413, "payload_too_large", self.message)(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # An HTTPException, which FastAPI passes on from reading the body (any other error
                # there becomes a 400); the app's handler answers it in the one JSON envelope.
                raise HTTPException(413, self.message)
            return message

        await self.app(scope, counting_receive, send)
