"""A one-machine fluxedit cluster for the benchmarks' `--mode cluster` (stream_latency.py, events.py).

    with running_cluster(["my/model/edit=tiny"], apis=2) as cluster:
        with cluster.client(0) as http: ...

What it starts, all on 127.0.0.1 and all removed again at the end:

- a fresh PostgreSQL database on 127.0.0.1:5432 (user postgres, trust auth), `fluxedit_bench_<hex>`,
  dropped WITH (FORCE) at the end;
- an empty Redis database on 127.0.0.1:6379 as the Celery broker: the first of 1..15 that is empty
  and takes this run's owner key (the tests claim theirs the same way, from 15 down), flushed at the end;
- local storage in one directory (`FLUXEDIT_STORAGE_URL=file://...`) that every process shares,
  which one machine allows (no S3 needed), and one URL-signing secret for all;
- one `fluxedit worker` (Celery, one job at a time) and `apis` `fluxedit serve` API processes,
  each with its own data dir, as if each were on its own machine;
- an API key made with `fluxedit keys create` before any API process starts.

Each child's output goes to a log file under the run's temporary directory; a child that
fails to start raises with the end of its log.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=5"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_OWNER_KEY = "fluxedit-bench:owner"
FLUXEDIT = [sys.executable, "-m", "fluxedit"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LoadSampler:
    """Samples the 1-minute load average (/proc/loadavg) every `interval_s` while running."""

    def __init__(self, interval_s: float = 5.0) -> None:
        self.interval_s = interval_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])

    def _run(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(self.interval_s):
                return

    def describe(self) -> str:
        return f"1-min load average during the run: {min(self.samples):.1f} to {max(self.samples):.1f}"


class Child:
    """A child process whose stdout and stderr go to `log`."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def check_running(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")

    def wait_for_output(self, pattern: str, timeout_s: float = 300) -> None:
        regex, deadline = re.compile(pattern), time.monotonic() + timeout_s
        while not regex.search(self.log.read_text(errors="replace")):
            self.check_running()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not print {pattern!r} in {timeout_s} s:\n{self.tail()}")
            time.sleep(0.2)

    def wait_healthy(self, base_url: str, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_running()
            try:
                if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not answer {base_url}/healthz in {timeout_s} s:\n{self.tail()}")
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Cluster:
    root: Path
    database_url: str
    redis_url: str
    api_key: str
    worker: Child
    api_urls: list[str] = field(default_factory=list)

    def client(self, n: int = 0, **kwargs) -> httpx.Client:
        """An httpx client for API process `n` (modulo their number), with the API key."""
        return httpx.Client(
            base_url=self.api_urls[n % len(self.api_urls)],
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=kwargs.pop("timeout", 60),
            **kwargs,
        )

    def describe(self) -> str:
        return (
            f"cluster: PostgreSQL {self.database_url.rsplit('/', 1)[1]}, Celery on {self.redis_url}, "
            f"local storage shared by all, 1 `fluxedit worker`, {len(self.api_urls)} `fluxedit serve`"
        )


def _env(data_dir: Path, settings: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXEDIT_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", FLUXEDIT_DATA_DIR=str(data_dir))
    env.update({f"FLUXEDIT_{k.upper()}": v for k, v in settings.items()})
    return env


@contextmanager
def _postgres_database() -> Iterator[str]:
    import psycopg

    name = f"fluxedit_bench_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def _redis_database() -> Iterator[str]:
    import redis

    token = secrets.token_hex(8)
    for db in range(1, 16):
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db, socket_connect_timeout=5)
        if client.set(REDIS_OWNER_KEY, token, nx=True, ex=7200) and client.dbsize() == 1:
            break
        if client.get(REDIS_OWNER_KEY) == token.encode():
            client.delete(REDIS_OWNER_KEY)  # someone else's data is there
        client.close()
    else:
        raise RuntimeError(f"no empty Redis database (1-15) on {REDIS_HOST}:{REDIS_PORT}")
    try:
        yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    finally:
        client.flushdb()
        client.close()


@contextmanager
def running_cluster(
    model_specs: list[str],
    *,
    apis: int = 2,
    settings: dict[str, str] | None = None,
    worker_command: list[str] | None = None,
) -> Iterator[Cluster]:
    """Start the cluster (see the module's docstring); stop it and remove everything at the end.

    `settings`: FLUXEDIT_* values (lower-case names without the prefix) for every process, on top of
    the cluster's own. `worker_command`: what runs `... worker --model ...` in place of
    `python -m fluxedit` (a wrapper that still ends in fluxedit's CLI).
    """
    with ExitStack() as stack:
        root = Path(tempfile.mkdtemp(prefix="fluxedit-bench-cluster-"))
        stack.callback(shutil.rmtree, root, ignore_errors=True)
        database_url = stack.enter_context(_postgres_database())
        redis_url = stack.enter_context(_redis_database())
        common = {
            "database_url": database_url,
            "broker_url": redis_url,
            "storage_url": (root / "files").as_uri(),
            "secret_key": secrets.token_urlsafe(32),
            "fetch_allow": '["127.0.0.1"]',  # the benchmarks' webhook receiver
            "max_queued_per_model": "1000",
            **(settings or {}),
        }
        models = [arg for spec in model_specs for arg in ("--model", spec)]

        made = subprocess.run(
            [*FLUXEDIT, "keys", "create", "--name", "bench"],
            env=_env(root / "keys", common),
            capture_output=True,
            text=True,
            timeout=300,
        )
        if made.returncode != 0:
            raise RuntimeError(f"fluxedit keys create failed:\n{made.stderr}")
        api_key = made.stdout.split()[0]  # also ran the migrations, before any other process starts

        worker = Child(
            "fluxedit worker",
            [*(worker_command or FLUXEDIT), "worker", *models],
            _env(root / "worker", common),
            root / "worker.log",
        )
        stack.callback(worker.stop, signal.SIGTERM)  # Celery's warm shutdown
        cluster = Cluster(root, database_url, redis_url, api_key, worker)
        servers = []
        for n in range(apis):
            port = free_port()
            cmd = [*FLUXEDIT, "serve", "--host", "127.0.0.1", "--port", str(port), *models, "--log-level", "warning"]
            server = Child(f"fluxedit serve {n}", cmd, _env(root / f"api{n}", common), root / f"api{n}.log")
            stack.callback(server.stop, signal.SIGINT)
            servers.append(server)
            cluster.api_urls.append(f"http://127.0.0.1:{port}")
        for server, url in zip(servers, cluster.api_urls):
            server.wait_healthy(url)
        worker.wait_for_output(r"\bready\.")
        yield cluster
