"""Large inline inputs: what a 40 MB data: URI costs each later answer, and one 60 MB submit's memory.

Starts `fluxedit serve --model tiny --no-workers` (jobs stay queued: only the API is
measured) on 127.0.0.1 with a fresh data dir, from the sources on PYTHONPATH, then:

- /status of a job with a 40 MB data: URI vs a small job's: median of interleaved polls;
- the size of that job's /result and of /v1/requests?limit=4 with four such jobs;
- the database's growth per such job;
- the server's peak RSS growth over one 60 MB JSON submit: /proc/<pid>/clear_refs resets
  the peak (VmHWM), which is then read after the submit (Linux; writing clear_refs needs
  the process to be ours or root).

The payload is random bytes: the API does not decode images at submit.

Run:  PYTHONPATH=src python bench/inline_inputs.py [--polls 40]
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

MODEL = "blackforestlabs/flux-2/pro/edit"
KEY_LINE = re.compile(r"Created the first API key \(shown once, keep it\): (\S+)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(data_dir: Path) -> tuple[subprocess.Popen, str, str]:
    """(process, base URL, API key) of a fresh server; its output goes to data_dir/serve.log."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXEDIT_")}
    env.update(FLUXEDIT_DATA_DIR=str(data_dir), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "fluxedit", "serve", "--model", "tiny", "--no-workers", "--port", str(port)]
    log = data_dir / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    while proc.poll() is None:
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return proc, base, KEY_LINE.search(log.read_text()).group(1)
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"fluxedit serve exited {proc.returncode}:\n{log.read_text()}")


def inline(megabytes: float) -> str:
    return "data:image/png;base64," + base64.b64encode(os.urandom(int(megabytes * 1024 * 1024 * 3 / 4))).decode()


def submit(http: httpx.Client, url: str) -> str:
    answer = http.post(f"/v1/models/{MODEL}", json={"prompt": "bench", "image_urls": [url]}, timeout=600)
    answer.raise_for_status()
    return answer.json()["request_id"]


def median_ms(http: httpx.Client, paths: dict[str, str], polls: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(polls):
        for name, path in paths.items():
            start = time.perf_counter()
            http.get(path).raise_for_status()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def kib(status: str, field: str) -> int:
    line = next(line for line in status.splitlines() if line.startswith(field + ":"))
    return int(line.split()[1])


def peak_rss_growth_mb(pid: int, action) -> tuple[float, float]:
    """(RSS before, peak RSS during `action` minus RSS before), in MiB."""
    status = Path(f"/proc/{pid}/status")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = kib(status.read_text(), "VmRSS")
    action()
    return before / 1024, (kib(status.read_text(), "VmHWM") - before) / 1024


def database_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in data_dir.glob("fluxedit.db*"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--polls", type=int, default=40)
    args = parser.parse_args()
    import fluxedit

    print(f"fluxedit from {Path(fluxedit.__file__).parent}; Python {platform.python_version()}; {platform.machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        proc, base, key = start_server(Path(tmp))
        try:
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
                small = submit(http, "https://example.com/cat.png")
                # First, on the fresh process: memory freed by earlier requests would hide growth.
                body = inline(60)
                rss, growth = peak_rss_growth_mb(proc.pid, lambda: submit(http, body))
                big_url = inline(40)
                before = database_bytes(Path(tmp))
                big = submit(http, big_url)
                grown = database_bytes(Path(tmp)) - before
                for _ in range(3):
                    submit(http, inline(40))
                del big_url
                times = median_ms(
                    http, {"small": f"/v1/requests/{small}/status", "40 MB": f"/v1/requests/{big}/status"}, args.polls
                )
                result = len(http.get(f"/v1/requests/{big}/result").content)
                listing = len(http.get("/v1/requests", params={"limit": 4}).content)
                settled = kib(Path(f"/proc/{proc.pid}/status").read_text(), "VmRSS") / 1024
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"/status median of {args.polls}: small {times['small']:.2f} ms, 40 MB input {times['40 MB']:.2f} ms "
          f"(ratio {times['40 MB'] / times['small']:.2f}x)")  # fmt: skip
    print(f"/result of the 40 MB job: {result:,} bytes; /v1/requests?limit=4: {listing:,} bytes")
    print(f"database growth for the 40 MB job: {grown:,} bytes")
    print(f"one 60 MB submit ({len(body) / 1e6:.1f} MB body): RSS before {rss:.0f} MiB, "
          f"peak growth {growth:.0f} MiB ({growth * 1024 * 1024 / len(body):.2f}x the body)")  # fmt: skip
    print(f"RSS after it and four 40 MB submits: {settled:.0f} MiB")


if __name__ == "__main__":
    main()
