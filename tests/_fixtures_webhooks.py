"""A real webhook receiver on 127.0.0.1: a small HTTP server thread that records every POST.

Each path answers 200 unless told otherwise (`answer(path, 500, 500)`: the first two
POSTs to it get 500, the rest 200; `answer_all(503)`: every path, until told again).
`verify` checks a delivery's signature with the `standardwebhooks` package, as a
user's receiver would.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks import Webhook

__all__ = ["Hook", "WebhookReceiver", "webhook_receiver"]


@dataclass(frozen=True)
class Hook:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    received_at: float  # time.time() when it arrived
    status: int  # what the receiver answered

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def json(self) -> dict:
        return json.loads(self.body)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class WebhookReceiver:
    def __init__(self) -> None:
        self.hooks_seen: list[Hook] = []
        self._plans: dict[str, list[int]] = {}
        self._default = 200
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.receiver = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._httpd.server_port}{path}"

    def answer(self, path: str, *statuses: int) -> None:
        """The next POSTs to `path` get `statuses`, in turn; then the default."""
        with self._lock:
            self._plans[path] = list(statuses)

    def answer_all(self, status: int) -> None:
        """Every path without a plan answers `status` from now on."""
        with self._lock:
            self._default = status

    def _status_for(self, path: str) -> int:
        with self._lock:
            plan = self._plans.get(path)
            return plan.pop(0) if plan else self._default

    def _record(self, hook: Hook) -> None:
        with self._lock:
            self.hooks_seen.append(hook)

    def hooks(self, path: str | None = None) -> list[Hook]:
        with self._lock:
            return [h for h in self.hooks_seen if path is None or h.path == path]

    def wait_for(self, path: str, done: Callable[[list[Hook]], bool], timeout_s: float = 120) -> list[Hook]:
        """Wait until `done(hooks to path)`; fail with what arrived if it does not happen."""
        deadline = time.monotonic() + timeout_s
        while not done(hooks := self.hooks(path)):
            if time.monotonic() > deadline:
                seen = [(h.status, h.json.get("type") or h.json.get("status")) for h in hooks]
                raise AssertionError(f"{path} got {seen} in {timeout_s} s")
            time.sleep(0.02)
        return hooks

    @staticmethod
    def verify(hook: Hook, secret: str) -> dict:
        """The payload, if the signature is good for `secret` (standardwebhooks raises otherwise)."""
        return Webhook(secret).verify(hook.body, hook.headers)


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        receiver: WebhookReceiver = self.server.receiver
        status = receiver._status_for(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        receiver._record(Hook(self.path, headers, body, time.time(), status))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def webhook_receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver
