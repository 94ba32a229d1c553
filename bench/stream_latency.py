"""How soon a status stream tells a client what happened: step end -> its event, job end -> its result event.

--mode embedded (the default): runs the real app (uvicorn on 127.0.0.1, in this process) over the
tiny model with in-process workers, so the engine's step times and the client's arrival times
share one clock. The engine is wrapped to note when each denoising step ends; the client follows
each job's stream with httpx and notes when each event arrives.

--mode cluster: the same measurement against a one-machine cluster (bench/_cluster.py: a fresh
PostgreSQL database, Celery on a Redis database, one `fluxedit worker`, two `fluxedit serve`).
Jobs are submitted to API process 0 and their streams read from API process 1. The worker runs
through this script (`--step-clock FILE worker ...`), which wraps its engine the same way and
writes each step's end to FILE; CLOCK_MONOTONIC is one clock for all processes of a Linux machine.

    .venv/bin/python bench/stream_latency.py --jobs 100
    PYTHONPATH=src .venv/bin/python bench/stream_latency.py --mode cluster --jobs 100
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import TextIO

import httpx
from httpx_sse import connect_sse

MODEL = "blackforestlabs/flux-2/klein-4b/edit"
REF = Path(__file__).resolve().parents[1] / "examples" / "hat.png"


class StepClock:
    """Wraps an engine: notes the monotonic time each step of each edit ends, by prompt (and writes it to `log`)."""

    def __init__(self, engine, log: TextIO | None = None) -> None:
        self.engine = engine
        self.log = log
        self.ends: dict[tuple[str, int], float] = {}

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def edit(self, request, progress=None):
        def timed(step: int, total: int) -> bool:
            now = self.ends[(request.prompt, step)] = time.monotonic()
            if self.log is not None:
                self.log.write(f"{now!r}\t{step}\t{request.prompt}\n")
            return progress(step, total) if progress else False

        return self.engine.edit(request, timed)


def read_step_clock(path: Path) -> dict[tuple[str, int], float]:
    ends = {}
    for line in path.read_text().splitlines():
        ended, step, prompt = line.split("\t", 2)
        ends[(prompt, int(step))] = float(ended)
    return ends


def run_worker_with_step_clock(path: str, argv: list[str]) -> int:
    """The cluster's worker process: fluxedit's CLI, each engine it makes wrapped in a StepClock writing to `path`."""
    import fluxedit.runtime
    from fluxedit.cli import main as fluxedit_main

    log = open(path, "a", buffering=1)  # one line a step, open for the life of the process
    make_engine = fluxedit.runtime.make_engine
    fluxedit.runtime.make_engine = lambda *args, **kwargs: StepClock(make_engine(*args, **kwargs), log)
    return fluxedit_main(argv)


def percentiles(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return f"p50 {statistics.median(ms):6.1f} ms   p99 {p99:6.1f} ms   (n={len(ms)})"


def follow_jobs(
    submit: httpx.Client, stream: httpx.Client, jobs: int, steps: int
) -> tuple[list[tuple[str, int, float]], list[float]]:
    """Submit `jobs` one at a time and follow each one's stream to its end.

    Returns the arrivals of status events with a step before the last, (prompt, step, monotonic time),
    and each job's delay from its finished_at to its result event, in seconds.
    """
    arrivals, end_delays = [], []
    ref = submit.post("/v1/files", files={"file": ("hat.png", REF.read_bytes())}).json()["url"]
    for n in range(jobs):
        prompt = f"bench job {n}"
        body = {"prompt": prompt, "image_urls": [ref], "image_size": "square", "num_inference_steps": steps}
        request_id = submit.post(f"/v1/models/{MODEL}", json=body).json()["request_id"]
        with connect_sse(stream, "GET", f"/v1/requests/{request_id}/stream") as source:
            for event in source.iter_sse():
                arrived = time.monotonic()
                if event.event == "status" and (progress := event.json().get("progress")):
                    if progress["step"] < progress["total"]:
                        arrivals.append((prompt, progress["step"], arrived))
                elif event.event == "result":
                    finished = datetime.fromisoformat(event.json()["finished_at"]).timestamp()
                    end_delays.append(time.time() - finished)
    return arrivals, end_delays


def step_delays(arrivals: list[tuple[str, int, float]], ends: dict[tuple[str, int], float]) -> list[float]:
    return [arrived - ends[(prompt, step)] for prompt, step, arrived in arrivals if (prompt, step) in ends]


def run_embedded(args: argparse.Namespace) -> None:
    import uvicorn

    from fluxedit.api.app import create_app
    from fluxedit.config import Settings
    from fluxedit.runtime import open_runtime

    data_dir = Path(tempfile.mkdtemp(prefix="fluxedit-bench-"))
    settings = Settings(data_dir=data_dir, allow_unauthenticated=True)
    runtime = open_runtime(settings, [f"{MODEL}=tiny"])
    clock = StepClock(runtime.models[MODEL].engine)
    runtime.dispatcher.engines[MODEL] = clock  # the dispatcher runs the wrapped engine
    server = uvicorn.Server(
        uvicorn.Config(create_app(runtime, allow_unauthenticated=True), port=8931, log_level="error")
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)

    with httpx.Client(base_url="http://127.0.0.1:8931", timeout=60) as http:
        arrivals, end_delays = follow_jobs(http, http, args.jobs, args.steps)
    server.should_exit = True

    print(f"fluxedit stream latency, tiny model, {args.jobs} jobs of {args.steps} steps, embedded (SQLite, threads)")
    print(
        f"Python {platform.python_version()}, {platform.machine()}, stream_poll_interval_s {settings.stream_poll_interval_s}"
    )
    print(f"step end -> its status event:   {percentiles(step_delays(arrivals, clock.ends))}")
    print(f"job end (finished_at) -> the result event:  {percentiles(end_delays)}")


def run_cluster(args: argparse.Namespace) -> None:
    from _cluster import LoadSampler, running_cluster

    from fluxedit.config import Settings

    with tempfile.TemporaryDirectory(prefix="fluxedit-bench-clock-") as tmp:
        clock_file = Path(tmp) / "steps.tsv"
        wrapper = [sys.executable, str(Path(__file__).resolve()), "--step-clock", str(clock_file)]
        with running_cluster([f"{MODEL}=tiny"], apis=2, worker_command=wrapper) as cluster:
            with LoadSampler() as load, cluster.client(0) as submit, cluster.client(1) as stream:
                arrivals, end_delays = follow_jobs(submit, stream, args.jobs, args.steps)
            description = cluster.describe()
        ends = read_step_clock(clock_file)

    poll = Settings.model_fields["stream_poll_interval_s"].default
    print(f"fluxedit stream latency, tiny model, {args.jobs} jobs of {args.steps} steps, {description}")
    print("jobs submitted to API process 0, streams read from API process 1")
    print(f"Python {platform.python_version()}, {platform.machine()}, stream_poll_interval_s {poll}")
    print(load.describe())
    print(f"step end -> its status event:   {percentiles(step_delays(arrivals, ends))}")
    print(f"job end (finished_at) -> the result event:  {percentiles(end_delays)}")


def main() -> None:
    if sys.argv[1:2] == ["--step-clock"]:  # the cluster's worker process, started by run_cluster
        sys.exit(run_worker_with_step_clock(sys.argv[2], sys.argv[3:]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--mode", choices=("embedded", "cluster"), default="embedded")
    args = parser.parse_args()
    (run_cluster if args.mode == "cluster" else run_embedded)(args)


if __name__ == "__main__":
    main()
