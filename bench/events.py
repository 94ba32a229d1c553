"""Webhook latency: job end (its finished_at) -> the completed event's arrival at a receiver.

Starts `fluxedit serve --model tiny` (the embedded mode: SQLite, in-process workers)
on a loopback port with a fresh data dir, and a receiver thread on 127.0.0.1 here.
Jobs are tiny (64x64, 2 steps, a data: URI reference). Two phases:

  idle:   one job at a time, the next submitted once the previous webhook arrived;
  burst:  all jobs submitted at once, the worker running them back to back.

--mode cluster: the same phases against a one-machine cluster (bench/_cluster.py: a fresh
PostgreSQL database, Celery on a Redis database, one `fluxedit worker` that runs the jobs and
writes the events, `--apis` `fluxedit serve` processes (2 by default) that find the events at
their next poll and deliver them); jobs are submitted to the API processes in turn.

Both clocks are this machine's, so arrival - finished_at is the delay itself.

Run:  PYTHONPATH=src python bench/events.py [--jobs 100] [--mode cluster]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from _serve import free_port, start_fluxedit, stop
from PIL import Image

MODEL = "blackforestlabs/flux-2/klein-4b/edit"


class Receiver(ThreadingHTTPServer):
    """Records (arrival time, payload) for each POST and answers 204."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.daemon_threads = True
        self.arrivals: dict[str, tuple[float, dict]] = {}  # request id -> first arrival
        self.cond = threading.Condition()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/hook"

    def wait(self, count: int, timeout_s: float = 300) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.arrivals) >= count, timeout_s):
                raise RuntimeError(f"only {len(self.arrivals)} of {count} webhooks arrived in {timeout_s} s")


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        arrived = time.time()
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(204)
        self.end_headers()
        with self.server.cond:
            self.server.arrivals.setdefault(payload["data"]["request_id"], (arrived, payload))
            self.server.cond.notify_all()

    def log_message(self, *args: object) -> None:
        pass


def edit_body(webhook: str) -> dict:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (30, 160, 90)).save(buffer, "PNG")
    reference = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return {
        "prompt": "bench",
        "image_urls": [reference],
        "image_size": {"width": 64, "height": 64},
        "num_inference_steps": 2,
        "webhook": webhook,
    }


def latencies_ms(receiver: Receiver, ids: list[str]) -> list[float]:
    out = []
    for rid in ids:
        arrived, payload = receiver.arrivals[rid]
        finished = datetime.fromisoformat(payload["data"]["finished_at"].replace("Z", "+00:00")).timestamp()
        out.append((arrived - finished) * 1e3)
    return out


def summary(name: str, values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"| {name:<6} | {len(values):>4} | {statistics.median(values):>8.1f} | {p99:>8.1f} | {max(values):>8.1f} |"


def measure(clients: list[httpx.Client], receiver: Receiver, jobs: int) -> None:
    """The idle and burst phases, submitting through `clients` in turn; prints the table."""
    body = edit_body(receiver.url())
    clients[0].post(f"/v1/models/{MODEL}", json=body).raise_for_status()  # warm-up: weights, first run
    receiver.wait(1)
    receiver.arrivals.clear()

    def submit(n: int) -> str:
        answer = clients[n % len(clients)].post(f"/v1/models/{MODEL}", json=body)
        answer.raise_for_status()
        return answer.json()["request_id"]

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print("job end (finished_at) -> completed webhook arrival, ms")
    print("| phase  | jobs |      p50 |      p99 |      max |")
    print("| ------ | ----:| --------:| --------:| --------:|")
    idle = []
    for n in range(jobs):
        idle.append(submit(n))
        receiver.wait(n + 1)
    print(summary("idle", latencies_ms(receiver, idle)), flush=True)
    burst = [submit(n) for n in range(jobs)]
    receiver.wait(2 * jobs, timeout_s=60 + 20 * jobs)  # the worker runs them one by one
    print(summary("burst", latencies_ms(receiver, burst)))


def run_embedded(args: argparse.Namespace, receiver: Receiver) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc, key = start_fluxedit(Path(tmp), port)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}) as http:
                measure([http], receiver, args.jobs)
        finally:
            stop(proc)


def run_cluster(args: argparse.Namespace, receiver: Receiver) -> None:
    from _cluster import LoadSampler, running_cluster

    with running_cluster([f"{MODEL}=tiny"], apis=args.apis) as cluster:
        print(cluster.describe())
        print("jobs submitted to the API processes in turn; webhooks sent by whichever API process claims the event")
        with LoadSampler() as load:
            clients = [cluster.client(n, timeout=5) for n in range(args.apis)]
            try:
                measure(clients, receiver, args.jobs)
            finally:
                for client in clients:
                    client.close()
    print(load.describe())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--mode", choices=("embedded", "cluster"), default="embedded")
    parser.add_argument("--apis", type=int, default=2, help="--mode cluster: how many API processes")
    args = parser.parse_args()

    receiver = Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    (run_cluster if args.mode == "cluster" else run_embedded)(args, receiver)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
