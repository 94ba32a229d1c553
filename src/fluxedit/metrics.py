"""Prometheus metrics: one CollectorRegistry per Runtime, never a module-level one.

The API counts submissions (and queued jobs cancelled at once); workers count the
jobs they finish and time their phases. In the embedded mode both live in the one
registry served at GET /metrics; a `fluxedit worker` serves its own on a port.
Names and labels are listed in docs/deploy.md.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

PHASES = ("queue_wait", "input_fetch", "inference", "encode_store", "total")
PHASE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
FACE_PREFIXES = {"/fal/": "fal", "/replicate/": "replicate", "/bfl/": "bfl"}


def api_face(path: str) -> str:
    """The API face a request came through, from its route path: native for /v1 (and anything else)."""
    for prefix, face in FACE_PREFIXES.items():
        if path.startswith(prefix):
            return face
    return "native"


class Metrics:
    """The metrics of one process, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.submitted = Counter(
            "fluxedit_requests_submitted", "Jobs queued, by model id and API face.", ["model", "face"], registry=r
        )
        self.finished = Counter(
            "fluxedit_jobs_finished",
            "Jobs that ended, by model id, final state and error code ('' unless failed).",
            ["model", "state", "error_code"],
            registry=r,
        )
        self.phase_seconds = Histogram(
            "fluxedit_job_phase_seconds",
            "Seconds a completed job spent in each phase: queue_wait, input_fetch, inference, encode_store, total.",
            ["model", "phase"],
            buckets=PHASE_BUCKETS,
            registry=r,
        )
        self.step_seconds = Histogram(
            "fluxedit_denoise_step_seconds",
            "Seconds per denoising step (a job's inference time over its steps).",
            ["model"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "fluxedit_webhook_deliveries", "Webhook delivery attempts, by result.", ["result"], registry=r
        )

    def job_submitted(self, model_id: str, face: str) -> None:
        self.submitted.labels(model=model_id, face=face).inc()

    def job_finished(self, model_id: str, state: str, error_code: str | None = None) -> None:
        self.finished.labels(model=model_id, state=state, error_code=error_code or "").inc()

    def job_phases(self, model_id: str, seconds: dict[str, float | None]) -> None:
        for phase, value in seconds.items():
            if value is not None:
                self.phase_seconds.labels(model=model_id, phase=phase).observe(max(0.0, value))

    def denoise_steps(self, model_id: str, inference_s: float, steps: int) -> None:
        if steps > 0:
            self.step_seconds.labels(model=model_id).observe(inference_s / steps)

    def webhook_delivered(self, result: str) -> None:
        """result: delivered | retry | failed (the webhook sender calls this per attempt)."""
        self.webhook_deliveries.labels(result=result).inc()

    def webhook_attempted(self, state: str) -> None:
        """A webhook event's state after an attempt (jobs/outbox.py) -> its `result` label."""
        self.webhook_delivered({"pending": "retry"}.get(state, state))

    def watch_queue(self, model_ids: Iterable[str], queued_count: Callable[[str], int]) -> None:
        """Queue depth by model, read from the job table at each scrape."""
        self.registry.register(_QueueDepth(list(model_ids), queued_count))

    def watch_engines(self, loaded: Callable[[], dict[str, bool]]) -> None:
        """Engines loaded (by model id), and GPU memory of this process at each scrape."""
        self.registry.register(_Engines(loaded))
        self.registry.register(_GpuMemory())


class _QueueDepth(Collector):
    def __init__(self, model_ids: list[str], queued_count: Callable[[str], int]) -> None:
        self._model_ids, self._queued_count = model_ids, queued_count

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("fluxedit_queue_depth", "Jobs in_queue, by model id.", labels=["model"])
        for model_id in self._model_ids:
            family.add_metric([model_id], self._queued_count(model_id))
        yield family


class _Engines(Collector):
    def __init__(self, loaded: Callable[[], dict[str, bool]]) -> None:
        self._loaded = loaded

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "fluxedit_engine_loaded", "1 when the engine behind a model id has loaded its weights.", labels=["model"]
        )
        for model_id, loaded in self._loaded().items():
            family.add_metric([model_id], 1.0 if loaded else 0.0)
        yield family


class _GpuMemory(Collector):
    """CUDA memory of this process; nothing when torch is not imported here (the API never imports it)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        in_use = GaugeMetricFamily("fluxedit_gpu_memory_bytes", "CUDA memory allocated now.", labels=["device"])
        peak = GaugeMetricFamily("fluxedit_gpu_memory_peak_bytes", "Peak CUDA memory allocated.", labels=["device"])
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            for index in range(torch.cuda.device_count()):
                device = f"cuda:{index}"
                in_use.add_metric([device], torch.cuda.memory_allocated(index))
                peak.add_metric([device], torch.cuda.max_memory_allocated(index))
        yield in_use
        yield peak
