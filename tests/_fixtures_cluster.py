"""Fixtures for the cluster backends: a real S3 endpoint (moto's standalone server).

Also fresh PostgreSQL databases, an empty Redis database, and child processes
whose output the tests read (workers, API servers).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from _fixtures_jobs import postgres_databases
from _fixtures_server import free_port


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


# --- PostgreSQL and Redis ---------------------------------------------------------------

REDIS_DBS = range(15, 0, -1)
REDIS_OWNER_KEY = "fluxedit-tests:owner"


@pytest.fixture(scope="module")
def new_postgres_database() -> Iterator:
    """A factory: new_postgres_database() -> the URL of a fresh, empty database (dropped at the end)."""
    with postgres_databases("fluxedit_cluster") as make:
        yield make


def _claim_redis_db(redis, token: str):
    """(client, db) for the first Redis database that is empty and now carries our owner key; None if none."""
    for db in REDIS_DBS:
        client = redis.Redis(host="127.0.0.1", port=6379, db=db, socket_connect_timeout=5)
        try:
            claimed = client.set(REDIS_OWNER_KEY, token, nx=True, ex=7200)
        except redis.ResponseError:  # fewer databases configured
            client.close()
            return None
        if claimed and client.dbsize() == 1:
            return client, db
        if claimed:
            client.delete(REDIS_OWNER_KEY)  # the database holds someone else's data
        client.close()
    return None


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """An empty Redis database on 127.0.0.1:6379 that this test module alone uses.

    Several test runs may share one Redis (helpers, CI): each claims a free database
    number (15 down to 1; 0 is left alone) with a key of its own, and empties it at the end.
    """
    redis = pytest.importorskip("redis")
    try:
        claim = _claim_redis_db(redis, uuid.uuid4().hex)
    except redis.ConnectionError as exc:
        pytest.skip(f"Redis on 127.0.0.1:6379 is not reachable: {exc}")
    if claim is None:
        pytest.skip("no free Redis database (1-15) on 127.0.0.1:6379")
    client, db = claim
    try:
        yield f"redis://127.0.0.1:6379/{db}"
    finally:
        client.flushdb()
        client.close()


# --- processes ------------------------------------------------------------------------------


class Process:
    """A child process whose combined output is collected line by line."""

    def __init__(self, cmd: list[str], env: dict[str, str], name: str) -> None:
        self.name = name
        self.lines: list[str] = []
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_for_output(self, pattern: str, timeout_s: float = 180.0) -> re.Match:
        deadline = time.monotonic() + timeout_s
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := regex.search(line):
                    return match
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited {self.proc.returncode} before printing {pattern!r}:\n{self.log}"
                )
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not print {pattern!r} within {timeout_s} s:\n{self.log}")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        stop_process(self.proc)
