"""A real image server on loopback, and a log of the connections a test makes.

`ImageServer` is a ThreadingHTTPServer on 127.0.0.1 (port 0) serving what a test
registers: images, plain bodies, redirects, large streamed bodies, slow answers.
Unregistered paths answer 404. The `image_server` fixture is one server for the
session (module-scoped servers use it), so register paths under names of your own
and count requests by path; a test that needs a fresh one uses
`with ImageServer() as server: server.add_defaults()`. These paths are ready
(other areas' tests, the API's, rely on them):

    /page.html              an HTML page (200, text/html)
    /huge.png               60 MB streamed as image/png, no Content-Length
    /redirect-to-loopback   302 to http://127.0.0.2:<port>/cat.png: loopback, but
                            not covered by fetch_allow=["127.0.0.1"]
    /slow.png               answers only when the server closes

`connections` records every socket.connect the process makes during a test (via
an audit hook) and refuses any that is not to loopback, so a test can show that a
refusal happened before connecting -- and a bug can never reach another address.
Its `.lookups` lists the names given to getaddrinfo; any but localhost and IP
literals fail as unknown, so no test's DNS query leaves the machine.
"""

from __future__ import annotations

import base64
import io
import ipaddress
import socket
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

__all__ = [
    "ImageServer",
    "Request",
    "StreamStats",
    "ConnectionLog",
    "image_server",
    "connections",
    "png_bytes",
    "png_data_uri",
]


def png_bytes(size: tuple[int, int] = (96, 64), color: tuple[int, int, int] = (200, 30, 30), fmt: str = "PNG") -> bytes:
    """A plain one-colour image, encoded (PNG unless `fmt` says otherwise): the tests' reference images."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def png_data_uri(size: tuple[int, int] = (96, 64), color: tuple[int, int, int] = (30, 120, 200)) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(size, color)).decode()


@dataclass
class Request:
    path: str
    headers: dict[str, str]

    @property
    def host(self) -> str:
        """The Host header's name, without the port."""
        return urllib.parse.urlsplit("//" + self.headers.get("Host", "")).hostname or ""


@dataclass
class StreamStats:
    sent: int = 0  # body bytes written to the socket
    completed: bool = False  # the whole body was written
    done: threading.Event = field(default_factory=threading.Event)  # the handler has finished


Route = Callable[["_Handler"], None]


class ImageServer:
    """Serves registered paths on http://127.0.0.1:<port>; see the module doc."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.requests: list[Request] = []
        self.streams: dict[str, StreamStats] = {}
        self._routes: dict[str, Route] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._httpd = ThreadingHTTPServer((host, 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False  # slow handlers end on _closing; never wait for them
        self._httpd.image_server = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------
    def start(self) -> ImageServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="image-server", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> ImageServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def url(self, path: str, *, host: str | None = None) -> str:
        """Absolute URL of `path`; `host` replaces 127.0.0.1 in it (e.g. "localhost")."""
        return f"http://{host or self.host}:{self.port}{path}"

    # --- what it serves ------------------------------------------------------------
    def add(
        self,
        path: str,
        body: bytes,
        content_type: str = "image/png",
        *,
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> None:
        def route(handler: _Handler) -> None:
            handler.answer(status, body, {"Content-Type": content_type, **(headers or {})})

        self._routes[path] = route

    def add_image(self, path: str, *, size: tuple[int, int] = (96, 64), color=(200, 30, 30), fmt: str = "PNG") -> bytes:
        """Serve a solid-colour image; returns its bytes."""
        data = png_bytes(size, color, fmt)
        self.add(path, data, f"image/{fmt.lower()}")
        return data

    def add_redirect(self, path: str, location: str, *, status: int = 302) -> None:
        self.add(path, b"", "text/plain", status=status, headers={"Location": location})

    def add_redirect_chain(self, path: str, hops: int, target: str) -> None:
        """`path` redirects `hops` times, the last time to `target`."""
        steps = [path] + [f"{path}/{n}" for n in range(1, hops)]
        for here, there in zip(steps, steps[1:] + [target]):
            self.add_redirect(here, there)

    def add_stream(
        self, path: str, size: int, *, declare_length: bool = False, content_type: str = "image/png"
    ) -> None:
        """A `size`-byte body generated while sending (never held in memory)."""

        def route(handler: _Handler) -> None:
            stats = self.streams[path] = StreamStats()
            headers = {"Content-Type": content_type}
            if declare_length:
                headers["Content-Length"] = str(size)
            try:
                handler.answer(200, None, headers)
                chunk = bytes(range(256)) * 256  # 64 KiB
                while stats.sent < size:
                    piece = chunk[: size - stats.sent]
                    handler.wfile.write(piece)
                    stats.sent += len(piece)
                stats.completed = True
            except OSError:  # the client hung up
                pass
            finally:
                stats.done.set()

        self._routes[path] = route

    def add_slow(self, path: str, *, delay_s: float = 60.0) -> None:
        """Answers only after `delay_s` (or when the server closes)."""

        def route(handler: _Handler) -> None:
            self._closing.wait(delay_s)
            handler.answer(200, png_bytes(), {"Content-Type": "image/png"})

        self._routes[path] = route

    # --- what it saw -------------------------------------------------------------------
    def add_defaults(self) -> ImageServer:
        """The paths listed in the module doc."""
        self.add("/page.html", b"<!doctype html><title>hi</title><p>not an image</p>", "text/html; charset=utf-8")
        self.add_stream("/huge.png", 60 * 1024 * 1024)
        self.add_redirect("/redirect-to-loopback", self.url("/cat.png", host="127.0.0.2"))
        self.add_slow("/slow.png")
        return self

    def requests_for(self, path: str | None = None, *, host: str | None = None) -> int:
        """How many requests came for `path` (any if None), with Host `host` (any if None)."""
        with self._lock:
            return sum(
                1 for r in self.requests if (path is None or r.path == path) and (host is None or r.host == host)
            )

    def stream(self, path: str, timeout: float = 30.0) -> StreamStats:
        """The stats of the stream at `path`, once its handler has finished."""
        stats = self.streams[path]
        assert stats.done.wait(timeout), f"the handler for {path} did not finish"
        return stats


class _Handler(BaseHTTPRequestHandler):
    server_version = "ImageServer/1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        server: ImageServer = self.server.image_server  # type: ignore[attr-defined]
        path = self.path.split("?", 1)[0]
        with server._lock:
            server.requests.append(Request(path, dict(self.headers.items())))
        route = server._routes.get(path)
        if route is None:
            self.answer(404, b"not found", {"Content-Type": "text/plain"})
        else:
            route(self)

    def answer(self, status: int, body: bytes | None, headers: dict[str, str]) -> None:
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if body is not None:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body:
                self.wfile.write(body)
        except OSError:
            if body is None:
                raise  # the stream route records the hang-up
            # the client hung up (refused a large or slow answer): nothing to do

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass


# --- connection log --------------------------------------------------------------------


class ConnectionLog(list):
    """Addresses connected to, in order; `.lookups`: host names looked up."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups: list[str] = []


_logs: list[ConnectionLog] = []  # the logs of the tests running now
_hook_installed = False


def _is_loopback(host: object) -> bool:
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _audit(event: str, args: tuple) -> None:
    if not _logs:
        return
    if event == "socket.connect":
        address = args[1]
        for log in _logs:
            log.append(address)
        if isinstance(address, tuple) and not _is_loopback(address[0]):
            raise PermissionError(f"tests may only connect to loopback, not to {address!r}")
    elif event == "socket.getaddrinfo":
        host = args[0].decode() if isinstance(args[0], bytes) else args[0]
        for log in _logs:
            log.lookups.append(host)
        if host is not None and host != "localhost" and not _is_loopback(host):
            raise socket.gaierror(socket.EAI_NONAME, f"tests look up no names but localhost, not {host!r}")


@pytest.fixture
def connections() -> Iterator[ConnectionLog]:
    """Every address the process connects to during the test; non-loopback ones raise."""
    global _hook_installed
    if not _hook_installed:  # audit hooks cannot be removed: install once, idle when no log
        sys.addaudithook(_audit)
        _hook_installed = True
    log = ConnectionLog()
    _logs.append(log)
    try:
        yield log
    finally:
        _logs.remove(log)


@pytest.fixture(scope="session")
def image_server() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server.add_defaults()
