"""API throughput (issue 12): fluxedit's status and submit against a bare FastAPI + SQLite app.

In one run, on loopback ports, under the same uvicorn (one process, uvicorn's default loop and
HTTP parser, as `fluxedit serve` runs it):

  service: `fluxedit serve --model tiny --no-workers` (the embedded mode: SQLite; no workers, so
           submitted jobs stay queued and no engine competes for the CPU), fresh data dir;
  bare:    bench/_bare_app.py: one table of jobs on raw sqlite3, GET status reads a row, POST
           submit inserts one.

Load: wrk (bench/service.lua), one thread, pinned to CPU 0 with taskset; both servers pinned
to CPU 1 (when taskset and 2+ CPUs are there).

1. Throughput, interleaved rounds: in each round GET status of a queued request, POST submit
   (a 64x64 PNG data: URI reference) and GET /healthz (the framework alone, a control), each
   for the service and the bare app back to back (the order alternates per round), at
   --connections (32) for --duration s. After each submit run the jobs it queued are deleted
   again, so that every run starts with the same one queued job.
2. Queue depth: status and submit latency with 0, 1k, 10k, 100k other jobs queued for the
   same model (rows inserted straight into the service's database with its own table
   definition, fluxedit.jobs.db.jobs_table), one connection, --depth-duration s each.
3. Profile (--profile-requests N, 0: skip): N status and N/4 submit requests in this process
   under cProfile (the app over httpx's ASGI transport, thread-pool calls run inline so that
   one profiler sees them), at 1 queued job and again at the deepest queue.

Prints Markdown tables ready for BENCHMARKS.md.

Run:  PYTHONPATH=src HF_HUB_OFFLINE=1 python bench/service.py [--rounds 3 --duration 10]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import io
import json
import os
import platform
import pstats
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
from _serve import drain, free_port, start_fluxedit, stop, wait_healthy
from PIL import Image

HERE = Path(__file__).resolve().parent
LUA = HERE / "service.lua"
MODEL = "blackforestlabs/flux-2/klein-4b/edit"
FILLER_KEY = "bench-filler"


@dataclass
class Target:
    name: str
    base: str  # http://127.0.0.1:port
    db: Path  # its SQLite file
    key: str | None  # API key (None: no auth)
    request_id: str  # the queued request whose status is polled


@dataclass
class Run:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


# --------------------------------------------------------------------------- servers


def pinning() -> tuple[list[str], list[str]]:
    """(server prefix, wrk prefix): taskset to CPU 1 and CPU 0 where possible, else nothing."""
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", "1"], ["taskset", "-c", "0"]
    return [], []


def start_bare(db: Path, port: int, prefix: list[str]) -> subprocess.Popen:
    cmd = [*prefix, sys.executable, str(HERE / "_bare_app.py"), "--port", str(port), "--db", str(db)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    drain(proc)
    wait_healthy(f"http://127.0.0.1:{port}/healthz", proc)
    return proc


def edit_body() -> dict:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (30, 160, 90)).save(buffer, "PNG")
    reference = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return {"prompt": "bench", "image_urls": [reference], "image_size": {"width": 64, "height": 64}}


def headers(target: Target) -> dict[str, str]:
    return {"Authorization": f"Bearer {target.key}"} if target.key else {}


def submit_one(base: str, key: str | None, body: dict) -> str:
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    answer = httpx.post(f"{base}/v1/models/{MODEL}", json=body, headers=auth, timeout=30)
    answer.raise_for_status()
    return answer.json()["request_id"]


# --------------------------------------------------------------------------- the queue


def max_seq(db: Path) -> int:
    with sqlite3.connect(db, timeout=30) as conn:
        return conn.execute("SELECT coalesce(max(seq), 0) FROM jobs").fetchone()[0]


def delete_after(db: Path, seq: int) -> int:
    """Delete the jobs queued after `seq` (a run's submits); how many there were."""
    conn = sqlite3.connect(db, timeout=30)
    try:
        with conn:
            return conn.execute("DELETE FROM jobs WHERE seq > ?", (seq,)).rowcount
    finally:
        conn.close()


def add_filler(db: Path, count: int) -> float:
    """Queue `count` more jobs of MODEL (another key's) straight into the service's database; seconds taken."""
    import sqlalchemy as sa

    from fluxedit.jobs.db import jobs_table, open_database, utc_now

    started = time.perf_counter()
    engine = open_database(f"sqlite:///{db}")
    try:
        for offset in range(0, count, 10_000):
            rows = [
                dict(
                    id=uuid.uuid4().hex,
                    key_id=FILLER_KEY,
                    model_id=MODEL,
                    state="in_queue",
                    input={"prompt": "filler", "image_urls": ["https://example.com/a.png"]},
                    created_at=utc_now(),
                    attempts=0,
                    cancel_requested=False,
                )
                for _ in range(min(10_000, count - offset))
            ]
            with engine.begin() as conn:
                conn.execute(sa.insert(jobs_table), rows)
    finally:
        engine.dispose()
    return time.perf_counter() - started


# --------------------------------------------------------------------------- load


def wrk(
    prefix: list[str], url: str, *, connections: int, duration_s: float, key: str | None, body_file: Path | None
) -> Run:
    cmd = [*prefix, "wrk", "-t1", f"-c{connections}", f"-d{duration_s:g}s", "--timeout", "10s", "-s", str(LUA), url]
    env = dict(os.environ)
    env.update(BENCH_METHOD="POST" if body_file else "GET", BENCH_AUTH=key or "", BENCH_BODY_FILE=str(body_file or ""))
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration_s + 60)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout}\n{out.stderr}")
    data = json.loads(line.removeprefix("WRK_JSON "))
    errors = sum(data["errors"].values())
    return Run(
        requests=data["requests"],
        rps=data["requests"] / (data["duration_us"] / 1e6),
        p50_ms=data["p50_us"] / 1e3,
        p99_ms=data["p99_us"] / 1e3,
        errors=errors,
    )


def run_endpoint(
    endpoint: str, target: Target, prefix: list[str], body_file: Path, *, connections: int, duration_s: float
) -> Run:
    if endpoint == "status":
        url, body = f"{target.base}/v1/requests/{target.request_id}/status", None
    elif endpoint == "submit":
        url, body = f"{target.base}/v1/models/{MODEL}", body_file
    else:
        url, body = f"{target.base}/healthz", None
    before = max_seq(target.db) if endpoint == "submit" else None
    run = wrk(prefix, url, connections=connections, duration_s=duration_s, key=target.key, body_file=body)
    if before is not None:
        delete_after(target.db, before)  # back to the queue the run started with
    if run.errors:
        print(f"  ! {target.name} {endpoint}: {run.errors} errors or non-2xx answers of {run.requests}", flush=True)
    return run


# --------------------------------------------------------------------------- profile


def profile_in_process(data_dir: Path, target: Target, body: dict, count: int, top: int = 10) -> str:
    """`count` status and `count // 4` submit requests to the app in this process: timed, then again
    under cProfile. The app runs over httpx's ASGI transport (no uvicorn, no sockets), its
    thread-pool calls inline on this thread so that the one profiler sees them."""
    import anyio.to_thread

    from fluxedit.api.app import create_app
    from fluxedit.config import Settings
    from fluxedit.runtime import open_runtime

    settings = Settings(data_dir=data_dir, max_queued_per_model=10**9)
    runtime = open_runtime(settings, ["tiny"], run_jobs=False)
    app = create_app(runtime)
    submits = max(1, count // 4)

    async def inline(func, *args, **_kwargs):  # anyio.to_thread.run_sync, on this thread
        return func(*args)

    async def drive(profilers: dict[str, cProfile.Profile] | None) -> dict[str, float]:
        """ms per request of each endpoint, each profiled by its own profiler when given."""
        transport = httpx.ASGITransport(app=app)
        times = {}
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", headers=headers(target)) as c:
            status_url = f"/v1/requests/{target.request_id}/status"
            (await c.get(status_url)).raise_for_status()  # warm: key cache, statement caches
            calls = {
                "status": (count, lambda: c.get(status_url)),
                "submit": (submits, lambda: c.post(f"/v1/models/{MODEL}", json=body)),
            }
            for endpoint, (n, call) in calls.items():
                profiler = profilers[endpoint] if profilers else None
                if profiler:
                    profiler.enable()
                started = time.perf_counter()
                for _ in range(n):
                    (await call()).raise_for_status()
                times[endpoint] = (time.perf_counter() - started) * 1e3 / n
                if profiler:
                    profiler.disable()
        return times

    original = anyio.to_thread.run_sync
    anyio.to_thread.run_sync = inline
    before = max_seq(target.db)
    profilers = {"status": cProfile.Profile(), "submit": cProfile.Profile()}
    try:
        times = asyncio.run(drive(None))
        delete_after(target.db, before)
        asyncio.run(drive(profilers))
    finally:
        anyio.to_thread.run_sync = original
        delete_after(target.db, before)
        runtime.store.dispose()

    lines = [
        f"in process, unprofiled: status {times['status']:.2f} ms, submit {times['submit']:.2f} ms per request "
        f"({count} status, {submits} submits, one at a time)"
    ]
    for endpoint, profiler in profilers.items():
        n = count if endpoint == "status" else submits
        stats = pstats.Stats(profiler).stats  # (file, line, name) -> (calls, prim. calls, own s, cum. s, callers)

        def rows(entries: list, n: int = n) -> list[str]:
            return [
                f"  {ct * 1e3 / n:7.3f} {tt * 1e3 / n:7.3f} {nc / n:7.1f}  {_where(key)}"
                for key, (_cc, nc, tt, ct, _callers) in entries[:top]
            ]

        ours = sorted(
            ((k, v) for k, v in stats.items() if "/fluxedit/" in k[0] and "/fluxedit/api/limits.py" not in k[0]),
            key=lambda kv: -kv[1][3],
        )
        own = sorted(stats.items(), key=lambda kv: -kv[1][2])
        header = f"  cum ms  own ms   calls  {endpoint}, per request, profiled (cProfile inflates these)"
        lines += [f"{endpoint}: fluxedit functions by cumulative time", header, *rows(ours)]
        lines += [f"{endpoint}: all functions by own time", header, *rows(own)]
    return "\n".join(lines)


def _where(key: tuple[str, int, str]) -> str:
    path, line, name = key
    for marker in ("/site-packages/", "/src/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{line}({name})" if line else name


# --------------------------------------------------------------------------- report


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return f"{os.getloadavg()}"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def throughput_table(results: dict[tuple[str, str], list[Run]], endpoints: list[str], connections: int) -> str:
    lines = [
        f"| endpoint ({connections} conns) | service req/s | bare req/s | service/bare (median; rounds) "
        "| service p50 / p99 ms | bare p50 / p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for endpoint in endpoints:
        svc, bare = results[("service", endpoint)], results[("bare", endpoint)]
        ratios = [s.rps / b.rps for s, b in zip(svc, bare)]
        med = statistics.median
        lines.append(
            f"| {endpoint} | {med([r.rps for r in svc]):.0f} | {med([r.rps for r in bare]):.0f} "
            f"| {med(ratios):.2f}x ({spread(ratios)}) "
            f"| {med([r.p50_ms for r in svc]):.1f} / {med([r.p99_ms for r in svc]):.1f} "
            f"| {med([r.p50_ms for r in bare]):.1f} / {med([r.p99_ms for r in bare]):.1f} |"
        )
    return "\n".join(lines)


def depth_table(rows: list[tuple[int, Run, Run]]) -> str:
    lines = [
        "| other queued jobs | status p50 / p99 ms | status req/s | submit p50 / p99 ms | submit req/s "
        "| p50 vs 0 queued: status, submit |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    base_status, base_submit = rows[0][1].p50_ms, rows[0][2].p50_ms
    for depth, status, submit in rows:
        lines.append(
            f"| {depth:,} | {status.p50_ms:.2f} / {status.p99_ms:.2f} | {status.rps:.0f} "
            f"| {submit.p50_ms:.2f} / {submit.p99_ms:.2f} | {submit.rps:.0f} "
            f"| {status.p50_ms / base_status:.1f}x, {submit.p50_ms / base_submit:.1f}x |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10, help="seconds per throughput run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--depths", default="0,1000,10000,100000", help="other queued jobs, comma-separated")
    parser.add_argument("--depth-duration", type=float, default=5, help="seconds per queue-depth run")
    parser.add_argument("--no-healthz", action="store_true", help="leave out the /healthz control")
    parser.add_argument("--profile-requests", type=int, default=1000, help="0: no in-process profile")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (Debian: apt-get install wrk)")
    depths = sorted(int(d) for d in args.depths.split(","))
    endpoints = ["status", "submit"] + ([] if args.no_healthz else ["healthz"])
    server_prefix, wrk_prefix = pinning()

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs ({cpu_model()}), Python {platform.python_version()}")
    print(f"pinning: server {' '.join(server_prefix) or '-'}, wrk {' '.join(wrk_prefix) or '-'}")
    print(f"loadavg before: {loadavg()}", flush=True)
    body = edit_body()
    with tempfile.TemporaryDirectory() as tmp:
        body_file = Path(tmp) / "body.json"
        body_file.write_text(json.dumps(body))
        service_dir = Path(tmp) / "service"
        service_port, bare_port = free_port(), free_port()
        service_proc, key = start_fluxedit(
            service_dir,
            service_port,
            args=["--no-workers"],
            env={"FLUXEDIT_MAX_QUEUED_PER_MODEL": str(10**9)},
            prefix=server_prefix,
        )
        bare_db = Path(tmp) / "bare.db"
        bare_proc = start_bare(bare_db, bare_port, server_prefix)
        try:
            service_base, bare_base = f"http://127.0.0.1:{service_port}", f"http://127.0.0.1:{bare_port}"
            targets = [
                Target("service", service_base, service_dir / "fluxedit.db", key, submit_one(service_base, key, body)),
                Target("bare", bare_base, bare_db, None, submit_one(bare_base, None, body)),
            ]
            for target in targets:  # warm both: first requests, thread pool, caches
                run_endpoint("status", target, wrk_prefix, body_file, connections=args.connections, duration_s=1)
                run_endpoint("submit", target, wrk_prefix, body_file, connections=args.connections, duration_s=1)

            results: dict[tuple[str, str], list[Run]] = {(t.name, e): [] for t in targets for e in endpoints}
            for n in range(args.rounds):
                order = targets if n % 2 == 0 else targets[::-1]
                for endpoint in endpoints:
                    for target in order:
                        run = run_endpoint(
                            endpoint,
                            target,
                            wrk_prefix,
                            body_file,
                            connections=args.connections,
                            duration_s=args.duration,
                        )
                        results[(target.name, endpoint)].append(run)
                        print(
                            f"  round {n + 1} {endpoint:<7} {target.name:<7} {run.rps:8.0f} req/s "
                            f"p50 {run.p50_ms:6.1f} ms p99 {run.p99_ms:6.1f} ms",
                            flush=True,
                        )
            print(f"loadavg after the rounds: {loadavg()}")
            print()
            print(throughput_table(results, endpoints, args.connections))
            print(flush=True)

            service = targets[0]
            profiles = []
            if args.profile_requests:
                profiles.append(("1 queued job", profile_in_process(service_dir, service, body, args.profile_requests)))

            rows = []
            queued = 0
            for depth in depths:
                took = add_filler(service.db, depth - queued)
                queued = depth
                status = run_endpoint(
                    "status", service, wrk_prefix, body_file, connections=1, duration_s=args.depth_duration
                )
                submit = run_endpoint(
                    "submit", service, wrk_prefix, body_file, connections=1, duration_s=args.depth_duration
                )
                rows.append((depth, status, submit))
                print(
                    f"  depth {depth:>7,} (filled in {took:.1f} s): status p50 {status.p50_ms:.2f} ms, "
                    f"submit p50 {submit.p50_ms:.2f} ms",
                    flush=True,
                )
            print()
            print("service latency by queue depth (1 connection)")
            print(depth_table(rows))
            print(flush=True)
            if args.profile_requests and depths[-1] > 0:
                deep = max(20, args.profile_requests // 50)
                profiles.append((f"{depths[-1]:,} queued jobs", profile_in_process(service_dir, service, body, deep)))
            for label, text in profiles:
                print(f"--- cProfile, {label}")
                print(text)
        finally:
            stop(service_proc)
            stop(bare_proc)
    print(f"loadavg at the end: {loadavg()}")


if __name__ == "__main__":
    main()
