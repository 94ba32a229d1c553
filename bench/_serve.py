"""Starting servers for the benches: `fluxedit serve` on a loopback port with a fresh data dir.

Shared by bench/events.py and bench/service.py (import it as `_serve`: the bench folder is
the script's own, so it is on sys.path).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

KEY_LINE = re.compile(r"Created the first API key \(shown once, keep it\): (\S+)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_fluxedit(
    data_dir: Path,
    port: int,
    *,
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    prefix: Sequence[str] = (),
) -> tuple[subprocess.Popen, str]:
    """`fluxedit serve --model tiny` on 127.0.0.1:`port` with its data in `data_dir`: (process, first API key).

    `args`: more serve flags; `env`: more (or other) FLUXEDIT_* settings; `prefix`: a command
    to run it under (e.g. taskset -c 1). Returns once /healthz answers 200.
    """
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FLUXEDIT_")}
    environ.update(
        FLUXEDIT_DATA_DIR=str(data_dir),
        FLUXEDIT_FETCH_ALLOW='["127.0.0.1"]',
        FLUXEDIT_MAX_QUEUED_PER_MODEL="1000",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    environ.update(env or {})
    cmd = [*prefix, sys.executable, "-m", "fluxedit", "serve", "--port", str(port), "--model", "tiny"]
    cmd += ["--log-level", "warning", *args]
    proc = subprocess.Popen(cmd, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    key = None
    for line in proc.stdout:
        if match := KEY_LINE.search(line):
            key = match.group(1)
        if "serving" in line:
            break
    drain(proc)
    if key is None:
        proc.terminate()
        raise RuntimeError("fluxedit serve printed no API key (is the data dir fresh?)")
    wait_healthy(f"http://127.0.0.1:{port}/healthz", proc)
    return proc, key


def drain(proc: subprocess.Popen) -> None:
    """Read (and drop) the rest of `proc`'s output in a thread, so that it never blocks on a full pipe."""
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout_s} s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
