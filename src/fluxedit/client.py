"""The Python client: `Client(base_url, api_key)`.

from fluxedit import Client
with Client("http://127.0.0.1:8000", "fe_...") as client:
    images = client.edit("blackforestlabs/flux-2/pro/edit", prompt="...", image_urls=[...])
    images[0].save("out.jpg")
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from httpx_sse import connect_sse

from fluxedit.errors import FluxeditError
from fluxedit.schema import (
    FileUploadResponse,
    JobState,
    ModelList,
    RequestList,
    ResultResponse,
    StatusResponse,
    SubmitResponse,
)


class APIError(FluxeditError):
    """An error answer from the server: its code, sentence and HTTP status."""


class EditFailed(FluxeditError):
    """The job ended failed or cancelled; `code` and `message` are the job's."""

    def __init__(self, result: ResultResponse) -> None:
        error = result.error
        code = error.code if error else result.status.value
        message = error.message if error else f"The request ended {result.status.value}."
        super().__init__(message, code=code, index=error.index if error else None)
        self.result = result


@dataclass(frozen=True)
class OutputImage:
    url: str
    data: bytes
    content_type: str

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.data)

    def to_pil(self):
        from PIL import Image

        return Image.open(io.BytesIO(self.data))


def _check_deadline(request_id: str, deadline: float | None, timeout: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise FluxeditError(f"Request {request_id} did not finish within {timeout} s.", code="timeout")


class Client:
    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        # The key goes on each request to the API's own origin only, never as a client-wide
        # header: output URLs may point elsewhere (a presigned bucket URL), as may redirects.
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- the wire contract, one method per route -------------------------------------

    def submit(self, model_id: str, *, idempotency_key: str | None = None, **edit_input) -> SubmitResponse:
        """Queue an edit; `edit_input` is the model's input (prompt, image_urls, image_size, ...)."""
        body = {k: v for k, v in edit_input.items() if v is not None}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return SubmitResponse.model_validate(self._call("POST", f"/v1/models/{model_id}", json=body, headers=headers))

    def status(self, request_id: str) -> StatusResponse:
        return StatusResponse.model_validate(self._call("GET", f"/v1/requests/{request_id}/status"))

    def result(self, request_id: str) -> ResultResponse:
        return ResultResponse.model_validate(self._call("GET", f"/v1/requests/{request_id}/result"))

    def cancel(self, request_id: str) -> StatusResponse:
        return StatusResponse.model_validate(self._call("POST", f"/v1/requests/{request_id}/cancel"))

    def requests(self, limit: int = 20, cursor: str | None = None) -> RequestList:
        params = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        return RequestList.model_validate(self._call("GET", "/v1/requests", params=params))

    def models(self) -> ModelList:
        return ModelList.model_validate(self._call("GET", "/v1/models"))

    def upload(self, file: str | Path | bytes, filename: str = "image") -> str:
        """Upload a reference image; returns the URL to put in image_urls."""
        if isinstance(file, (str, Path)):
            filename, file = Path(file).name, Path(file).read_bytes()
        answer = self._call("POST", "/v1/files", files={"file": (filename, file)})
        return FileUploadResponse.model_validate(answer).url

    # -- conveniences ------------------------------------------------------------------

    def stream(self, request_id: str, *, last_event_id: str | None = None) -> Iterator[ResultResponse]:
        """The request's status as it changes (server-sent events), ending with its result."""
        headers = {**self._auth, **({"Last-Event-ID": last_event_id} if last_event_id else {})}
        # Reads wait for the next event; the server sends a keep-alive comment every 15 s.
        timeout = httpx.Timeout(self._http.timeout.connect, read=60.0)
        path = f"/v1/requests/{request_id}/stream"
        with connect_sse(self._http, "GET", path, headers=headers, timeout=timeout) as source:
            if source.response.status_code >= 400:
                source.response.read()
                self._raise(source.response)
            for event in source.iter_sse():
                if event.event in ("status", "result"):
                    yield ResultResponse.model_validate_json(event.data)

    def wait(
        self,
        request_id: str,
        *,
        timeout: float | None = 600.0,
        poll_interval: float = 0.2,
        max_interval: float = 2.0,
        on_update: Callable[[StatusResponse], None] | None = None,
    ) -> ResultResponse:
        """Follow the request's stream until it is finished (polling with backoff if the stream breaks);
        returns its result."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            for result in self.stream(request_id):
                if on_update is not None:
                    on_update(result)
                if result.status.finished:
                    return result
                _check_deadline(request_id, deadline, timeout)
        except (httpx.HTTPError, APIError) as exc:
            if isinstance(exc, APIError) and exc.status not in (404, 405, 429, 502, 503, 504):
                raise
        return self._poll(request_id, deadline, timeout, poll_interval, max_interval, on_update)

    def _poll(self, request_id, deadline, timeout, interval, max_interval, on_update) -> ResultResponse:
        while True:
            result = self.result(request_id)
            if on_update is not None:
                on_update(result)
            if result.status.finished:
                return result
            _check_deadline(request_id, deadline, timeout)
            time.sleep(interval)
            interval = min(max_interval, interval * 1.5)

    def download(self, url: str) -> OutputImage:
        """Fetch an output image; the API key is sent only when `url` is on the API's own origin."""
        headers = self._auth if _origin(httpx.URL(url)) == _origin(self._http.base_url) else None
        try:
            response = self._http.get(url, headers=headers)
        except httpx.HTTPError as exc:
            raise APIError(f"Could not download {url.split('?', 1)[0]}: {exc}", code="unreachable") from None
        if response.status_code != 200:
            self._raise(response)
        return OutputImage(url=url, data=response.content, content_type=response.headers.get("content-type", ""))

    def edit(
        self,
        model_id: str,
        *,
        timeout: float | None = 600.0,
        on_update: Callable[[StatusResponse], None] | None = None,
        **edit_input,
    ) -> list[OutputImage]:
        """Submit, wait and download: the edited images, or EditFailed."""
        submitted = self.submit(model_id, **edit_input)
        result = self.wait(submitted.request_id, timeout=timeout, on_update=on_update)
        if result.status != JobState.completed or result.output is None:
            raise EditFailed(result)
        return [self.download(url) for url in result.output.images]

    # -- plumbing --------------------------------------------------------------------------

    def _call(self, method: str, path: str, *, headers: dict | None = None, **kwargs) -> dict:
        try:
            response = self._http.request(method, path, headers={**self._auth, **(headers or {})}, **kwargs)
        except httpx.HTTPError as exc:
            raise APIError(f"Could not reach {self._http.base_url}: {exc}", code="unreachable") from None
        if response.status_code >= 400:
            self._raise(response)
        return response.json()

    @staticmethod
    def _raise(response: httpx.Response) -> None:
        try:
            error = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            error = {"code": "http_error", "message": f"HTTP {response.status_code}"}
        raise APIError(
            error.get("message", ""),
            code=error.get("code"),
            field=error.get("field"),
            index=error.get("index"),
            status=response.status_code,
        )


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port filled in, as browsers compare origins."""
    default = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host, url.port or default
