"""How soon a status stream tells a client what happened: step end -> its event, job end -> its result event.

Runs the real app (uvicorn on 127.0.0.1, in this process) over the tiny model with in-process
workers, so the engine's step times and the client's arrival times share one clock. The engine
is wrapped to note when each denoising step ends; the client follows each job's stream with
httpx and notes when each event arrives.

    .venv/bin/python bench/stream_latency.py --jobs 100
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import uvicorn
from httpx_sse import connect_sse

from fluxedit.api.app import create_app
from fluxedit.config import Settings
from fluxedit.runtime import open_runtime

MODEL = "blackforestlabs/flux-2/klein-4b/edit"
REF = Path(__file__).resolve().parents[1] / "examples" / "hat.png"


class StepClock:
    """Wraps an engine: notes the monotonic time each step of each edit ends, by prompt."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.ends: dict[tuple[str, int], float] = {}

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def edit(self, request, progress=None):
        def timed(step: int, total: int) -> bool:
            self.ends[(request.prompt, step)] = time.monotonic()
            return progress(step, total) if progress else False

        return self.engine.edit(request, timed)


def percentiles(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return f"p50 {statistics.median(ms):6.1f} ms   p99 {p99:6.1f} ms   (n={len(ms)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()

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

    step_delays, end_delays = [], []
    with httpx.Client(base_url="http://127.0.0.1:8931", timeout=60) as http:
        ref = http.post("/v1/files", files={"file": ("hat.png", REF.read_bytes())}).json()["url"]
        for n in range(args.jobs):
            prompt = f"bench job {n}"
            body = {"prompt": prompt, "image_urls": [ref], "image_size": "square", "num_inference_steps": args.steps}
            request_id = http.post(f"/v1/models/{MODEL}", json=body).json()["request_id"]
            with connect_sse(http, "GET", f"/v1/requests/{request_id}/stream") as source:
                for event in source.iter_sse():
                    arrived = time.monotonic()
                    if event.event == "status" and (progress := event.json().get("progress")):
                        ended = clock.ends.get((prompt, progress["step"]))
                        if ended is not None and progress["step"] < progress["total"]:
                            step_delays.append(arrived - ended)
                    elif event.event == "result":
                        finished = datetime.fromisoformat(event.json()["finished_at"]).timestamp()
                        end_delays.append(time.time() - finished)
    server.should_exit = True

    print(f"fluxedit stream latency, tiny model, {args.jobs} jobs of {args.steps} steps, embedded (SQLite, threads)")
    print(
        f"Python {platform.python_version()}, {platform.machine()}, stream_poll_interval_s {settings.stream_poll_interval_s}"
    )
    print(f"step end -> its status event:   {percentiles(step_delays)}")
    print(f"job end (finished_at) -> the result event:  {percentiles(end_delays)}")


if __name__ == "__main__":
    main()
