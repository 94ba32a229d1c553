"""The worker thread's time per job outside `engine.edit`, inline vs pipelined, by phase.

Runs jobs one after another through the real worker step (`execute` or
`execute_pipelined` with a `PostProcessor`) on the tiny [klein], a SQLite job store
and local files in a fresh folder, and times on the worker thread (the one that would
drive the GPU): claiming the job, what comes before the edit (lease, validation,
reading and decoding the data: URI reference, sizing), and what comes after it until
the thread is free for the next job (inline: encoding, storing and completing;
pipelined: handing the outputs over). Pipelined, the post-processor's own time is
shown beside it: it runs while the next edit does.

Two jobs: a 64x64 JPEG from a 64x64 data: URI, and a 2048x2048 (4 MP) PNG. The tiny
model's outputs are noise-like, the hardest case for PNG's zlib.

Run:  PYTHONPATH=src python bench/worker_overhead.py [--jobs 20]
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import platform
import statistics
import tempfile
import time
from concurrent.futures import wait
from pathlib import Path

import torch
from PIL import Image

from fluxedit.config import Settings
from fluxedit.engines.flux2 import Flux2Engine
from fluxedit.engines.tiny import save_tiny_model
from fluxedit.jobs.post import PostProcessor
from fluxedit.jobs.store import JobStore
from fluxedit.jobs.worker import WorkerContext, execute, execute_pipelined
from fluxedit.storage import LocalStorage, UrlSigner

MODEL = "blackforestlabs/flux-2/klein-4b/edit"
CASES = {
    "64x64 JPEG": {"image_size": {"width": 64, "height": 64}, "output_format": "jpeg"},
    "4 MP PNG": {"image_size": {"width": 2048, "height": 2048}, "output_format": "png"},
}


class TimedEngine:
    """The engine, remembering when its last edit started and ended."""

    def __init__(self, engine: Flux2Engine) -> None:
        self._engine, self.started, self.ended = engine, 0.0, 0.0

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def edit(self, request, progress=None):
        self.started = time.perf_counter()
        try:
            return self._engine.edit(request, progress)
        finally:
            self.ended = time.perf_counter()


def data_uri() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def run_case(case: dict, mode: str, jobs: int, engine: TimedEngine, context: WorkerContext) -> dict[str, list[float]]:
    body = {"prompt": "a red hat", "image_urls": [data_uri()], "num_inference_steps": 1, **case}
    post = PostProcessor()
    phases: dict[str, list[float]] = {"claim": [], "before edit": [], "after edit": [], "edit": [], "post": []}
    for n in range(jobs + 1):  # the first one warms up
        queued = context.store.submit("bench", MODEL, {**body, "seed": n}, max_queued=10_000)
        t0 = time.perf_counter()
        job = context.store.claim_next([MODEL], "bench-worker", 60)
        t1 = time.perf_counter()
        assert job is not None and job.id == queued.id
        if mode == "inline":
            execute(job, engine, context, worker_id="bench-worker")
            t2, post_s = time.perf_counter(), 0.0
        else:
            ended = execute_pipelined(job, engine, context, worker_id="bench-worker", post=post)
            t2 = time.perf_counter()
            wait([ended])
            post_s = time.perf_counter() - t2
        assert context.store.get(job.id).state.value == "completed"
        if n:
            for name, seconds in (
                ("claim", t1 - t0),
                ("before edit", engine.started - t1),
                ("edit", engine.ended - engine.started),
                ("after edit", t2 - engine.ended),
                ("post", post_s),
            ):
                phases[name].append(seconds)
    post.close()
    return phases


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20, help="jobs per case and mode (plus one warm-up)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="fluxedit-bench-") as tmp:
        root = Path(tmp)
        settings = Settings(data_dir=root / "data")
        store = JobStore(f"sqlite:///{root / 'jobs.db'}")
        store.create_schema()
        storage = LocalStorage(root / "files", UrlSigner(b"b" * 32))
        engine = TimedEngine(Flux2Engine(str(save_tiny_model("klein", root / "tiny"))))
        engine.load()
        context = WorkerContext(store, storage, settings)
        print(
            f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, load {os.getloadavg()}"
        )
        print(
            "| job | mode | claim | before edit | after edit (worker thread) | outside edit, total | post thread | edit |"
        )
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name, case in CASES.items():
            for mode in ("inline", "pipelined", "inline", "pipelined"):  # interleaved, twice
                p = run_case(case, mode, args.jobs, engine, context)
                outside = [a + b + c for a, b, c in zip(p["claim"], p["before edit"], p["after edit"])]
                post = ms(p["post"]) if mode == "pipelined" else "-"
                print(
                    f"| {name} | {mode} | {ms(p['claim'])} | {ms(p['before edit'])} | {ms(p['after edit'])} "
                    f"| {ms(outside)} | {post} | {ms(p['edit'])} |"
                )
        print(f"median ms over {args.jobs} jobs each; load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
