"""A real `fluxedit serve` process on 127.0.0.1, as a user would start it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from httpx_sse import ServerSentEvent, connect_sse

SRC = str(Path(__file__).resolve().parents[1] / "src")
KEY_LINE = re.compile(r"Created the first API key \(shown once, keep it\): (\S+)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fluxedit_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """The environment for a fluxedit subprocess: our sources, a private data dir, FLUXEDIT_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXEDIT_")}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env["FLUXEDIT_DATA_DIR"] = str(data_dir)
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.update({f"FLUXEDIT_{k.upper()}": v for k, v in settings.items()})
    return env


def run_cli(*args: str, data_dir: Path, timeout: float = 120, **settings: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fluxedit", *args],
        env=fluxedit_env(data_dir, **settings),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class LiveServer:
    data_dir: Path
    args: tuple[str, ...]
    settings: dict[str, str]
    port: int = field(default_factory=free_port)
    api_key: str | None = None
    proc: subprocess.Popen | None = None
    output: list[str] = field(default_factory=list)
    verify: object = True  # what clients trust: an ssl.SSLContext with the test CA when serving HTTPS

    @property
    def base_url(self) -> str:
        scheme = "https" if "--ssl-certfile" in self.args else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.api_key}"}

    def client(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.headers(key), timeout=30, verify=self.verify)

    def start(self, timeout: float = 120) -> LiveServer:
        cmd = [sys.executable, "-m", "fluxedit", "serve", "--host", "127.0.0.1", "--port", str(self.port), *self.args]
        self.proc = subprocess.Popen(
            cmd,
            env=fluxedit_env(self.data_dir, **self.settings),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read_output, args=(self.proc,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fluxedit serve exited {self.proc.returncode}:\n{self.log}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1, verify=self.verify).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError(f"fluxedit serve did not answer within {timeout} s:\n{self.log}")
        for line in self.output:
            if match := KEY_LINE.search(line):
                self.api_key = match.group(1)
        return self

    def _read_output(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self.output.append(line)

    @property
    def log(self) -> str:
        return "".join(self.output)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill9()

    def restart(self) -> LiveServer:
        self.stop()
        return self.start()

    def wait_for(self, request_id: str, states: set[str], timeout: float = 120, key: str | None = None) -> dict:
        """Poll status until the job is in one of `states`; returns the last body."""
        deadline = time.monotonic() + timeout
        with self.client(key) as http:
            while True:
                body = http.get(f"/v1/requests/{request_id}/status").json()
                if body.get("status") in states:
                    return body
                if time.monotonic() > deadline:
                    raise AssertionError(f"{request_id} stayed {body} for {timeout} s")
                time.sleep(0.05)


def read_stream(
    server: LiveServer,
    request_id: str,
    *,
    key: str | None = None,
    last_event_id: str | None = None,
    stop_after: Callable[[ServerSentEvent], bool] | None = None,
) -> list[ServerSentEvent]:
    """The `status` and `result` events of the request's SSE stream on `server`, until it closes or `stop_after`."""
    headers = server.headers(key) | ({"Last-Event-ID": last_event_id} if last_event_id else {})
    events = []
    with httpx.Client(base_url=server.base_url, timeout=60, verify=server.verify) as http:
        with connect_sse(http, "GET", f"/v1/requests/{request_id}/stream", headers=headers) as source:
            assert source.response.headers["content-type"].startswith("text/event-stream")
            for event in source.iter_sse():
                if event.event not in ("status", "result"):
                    continue  # the keep-alive comment every 15 s
                events.append(event)
                if stop_after and stop_after(event):
                    break
    return events


@pytest.fixture
def start_server(tmp_path_factory):
    """Start servers on demand: start_server(*serve_args, **FLUXEDIT_settings) -> LiveServer."""
    servers: list[LiveServer] = []

    def start(*args: str, data_dir: Path | None = None, **settings: str) -> LiveServer:
        server = LiveServer(data_dir or tmp_path_factory.mktemp("server"), args, settings)
        servers.append(server.start())
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory, image_server):
    """One `fluxedit serve --model tiny` for a module, allowed to fetch from the loopback image server."""
    server = LiveServer(
        tmp_path_factory.mktemp("tiny-server"),
        ("--model", "tiny"),
        {"fetch_allow": '["127.0.0.1"]', "lease_s": "5"},
    ).start()
    yield server
    server.stop()
