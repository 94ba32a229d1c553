"""A route class whose JSON bodies are parsed straight from their bytes, large data: URIs spooled out.

`json.loads(bytes)` first decodes the whole body into a str and then parses that, so
for a 60 MB data: URI the raw body, the decoded copy and the parsed string are all in
memory at once: three times the body. pydantic-core parses the bytes in place: twice.
And the body is read through a BodyScanner (api/spool.py), which decodes each large
image_urls data: URI into a temporary file as it arrives: what is parsed is then small.
(FastAPI's documented extension point for this: a custom Request and APIRoute class.)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import pydantic_core
from fastapi import Request, Response
from fastapi.routing import APIRoute

from fluxedit.api.spool import BodyScanner, SpooledImage, as_sent

_SPOOLED = "fluxedit.spooled"  # the scope's entry for the images a body's placeholders stand for


class LeanJSONRequest(Request):
    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            self._scanner = BodyScanner(self.app.state.runtime.settings.data_dir)
            async for chunk in self.stream():
                self._scanner.feed(chunk)
            self.scope[_SPOOLED] = self._scanner.spooled
            self._body = self._scanner.end()
        return self._body

    async def json(self) -> Any:
        if not hasattr(self, "_lean_json"):
            body = await self.body()
            try:
                self._lean_json = pydantic_core.from_json(body)
            except ValueError:  # the error as for the body as sent: its position counts its data: URIs
                self._lean_json = _parse_for_its_error(as_sent(body, spooled_images(self)))
        return self._lean_json

    def close_spooled(self) -> None:
        if hasattr(self, "_scanner"):
            self._scanner.close()


class LeanJSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def lean_json_handler(request: Request) -> Response:
            lean = LeanJSONRequest(request.scope, request.receive)
            try:
                return await handler(lean)
            finally:  # stored by now, or refused: either way no spooled file outlives the request
                lean.close_spooled()

        return lean_json_handler


def spooled_images(request: Request) -> Mapping[str, SpooledImage]:
    """The images that placeholders in this request's parsed body stand for (none for other routes)."""
    return request.scope.get(_SPOOLED, {})


def _parse_for_its_error(body: bytes) -> Any:
    """json.loads' own error (FastAPI answers a JSONDecodeError with a 422); bytes that are
    not UTF-8 get one too, rather than the generic 400 another error would be."""
    try:
        return json.loads(body)
    except UnicodeDecodeError as exc:
        raise json.JSONDecodeError("the body is not UTF-8", "", exc.start) from None
