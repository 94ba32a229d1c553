"""Fixtures for the cluster backends: a real S3 endpoint (moto's standalone server).

Other cluster fixtures (PostgreSQL database, Redis db, worker processes) live here too.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen | None = None, timeout_s: float = 60.0) -> None:
    """Poll `url` until it answers at all (any status), or fail naming the URL."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode} before answering")
        try:
            httpx.get(url, timeout=2.0)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s} s")


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class S3Server:
    endpoint_url: str
    access_key_id: str = "testing"
    secret_access_key: str = "testing"
    region: str = "us-east-1"

    def client(self):
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )

    def new_bucket(self) -> str:
        name = f"fluxedit-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def settings_env(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """FLUXEDIT_* variables that point a process at `bucket`."""
        return {
            "FLUXEDIT_STORAGE_URL": f"s3://{bucket}/{prefix}",
            "FLUXEDIT_S3_ENDPOINT_URL": self.endpoint_url,
            "FLUXEDIT_S3_REGION": self.region,
            "FLUXEDIT_S3_ACCESS_KEY_ID": self.access_key_id,
            "FLUXEDIT_S3_SECRET_ACCESS_KEY": self.secret_access_key,
            "FLUXEDIT_S3_ADDRESSING_STYLE": "path",
        }


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server in its own process on a loopback port, for the whole session."""
    port = free_port()
    log = Path(tmp_path_factory.mktemp("moto")) / "moto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_http(endpoint + "/moto-api/", proc)
        yield S3Server(endpoint)
    finally:
        stop_process(proc)


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket on the session's S3 server."""
    return s3_server.new_bucket()
