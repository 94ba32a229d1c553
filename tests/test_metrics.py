"""GET /metrics after a known set of jobs, parsed with prometheus_client's own parser."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request

from _fixtures_images import png_bytes
from fluxedit.api.metrics import MetricsForbidden, check_scraper
from fluxedit.metrics import api_face

PRO = "blackforestlabs/flux-2/pro/edit"
KLEIN = "blackforestlabs/flux-2/klein-4b/edit"


@pytest.fixture(scope="module")
def server(tmp_path_factory, image_server):
    from _fixtures_server import LiveServer

    image_server.add("/metrics-ref.png", png_bytes((96, 64)), "image/png")
    server = LiveServer(
        tmp_path_factory.mktemp("metrics-server"), ("--model", "tiny"), {"fetch_allow": '["127.0.0.1"]'}
    ).start()
    yield server
    server.stop()


def samples(server) -> dict[tuple[str, frozenset], float]:
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def run(server, model: str, url: str, steps: int = 2) -> str:
    payload = {"prompt": "a hat", "image_urls": [url], "image_size": "square", "num_inference_steps": steps}
    with server.client() as http:
        request_id = http.post(f"/v1/models/{model}", json=payload).json()["request_id"]
    return server.wait_for(request_id, {"completed", "failed", "cancelled"})["status"]


def test_metrics_count_the_jobs_run(server, image_server) -> None:
    good, missing = image_server.url("/metrics-ref.png"), image_server.url("/metrics-missing.png")
    assert [run(server, PRO, good) for _ in range(3)] == ["completed"] * 3
    assert run(server, KLEIN, good) == "completed"
    assert run(server, PRO, missing) == "failed"

    got = samples(server)
    native = lambda model: frozenset({("model", model), ("face", "native")})  # noqa: E731
    assert got[("fluxedit_requests_submitted_total", native(PRO))] == 4
    assert got[("fluxedit_requests_submitted_total", native(KLEIN))] == 1
    finished = lambda model, state, code="": frozenset(  # noqa: E731
        {("model", model), ("state", state), ("error_code", code)}
    )
    assert got[("fluxedit_jobs_finished_total", finished(PRO, "completed"))] == 3
    assert got[("fluxedit_jobs_finished_total", finished(KLEIN, "completed"))] == 1
    assert got[("fluxedit_jobs_finished_total", finished(PRO, "failed", "input_unreachable"))] == 1
    for phase in ("queue_wait", "input_fetch", "inference", "encode_store", "total"):
        labels = frozenset({("model", PRO), ("phase", phase)})
        assert got[("fluxedit_job_phase_seconds_count", labels)] == 3, phase
    assert got[("fluxedit_denoise_step_seconds_count", frozenset({("model", PRO)}))] == 3
    assert got[("fluxedit_queue_depth", frozenset({("model", PRO)}))] == 0
    assert got[("fluxedit_engine_loaded", frozenset({("model", PRO)}))] == 1


def test_a_queued_job_cancelled_counts_as_cancelled(server, image_server) -> None:
    url = image_server.url("/metrics-ref.png")
    body = lambda steps: {"prompt": "x", "image_urls": [url], "image_size": "square", "num_inference_steps": steps}  # noqa: E731
    with server.client() as http:
        running = http.post(f"/v1/models/{PRO}", json=body(40)).json()["request_id"]
        server.wait_for(running, {"in_progress", "completed"})
        queued = http.post(f"/v1/models/{PRO}", json=body(2)).json()["request_id"]
        assert http.post(f"/v1/requests/{queued}/cancel").json()["status"] == "cancelled"
        http.post(f"/v1/requests/{running}/cancel")
    server.wait_for(running, {"cancelled", "completed"})
    labels = frozenset({("model", PRO), ("state", "cancelled"), ("error_code", "")})
    assert samples(server)[("fluxedit_jobs_finished_total", labels)] >= 1


def scope_from(host: str, headers: dict[str, str] | None = None) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request({"type": "http", "method": "GET", "path": "/metrics", "client": (host, 40000), "headers": raw})


def test_metrics_are_for_loopback_or_the_token_only() -> None:
    check_scraper(scope_from("127.0.0.1"), None)
    check_scraper(scope_from("::1"), None)
    with pytest.raises(MetricsForbidden, match="loopback"):
        check_scraper(scope_from("10.1.2.3"), None)
    check_scraper(scope_from("10.1.2.3", {"Authorization": "Bearer s3cret"}), "s3cret")
    with pytest.raises(MetricsForbidden, match="FLUXEDIT_METRICS_TOKEN"):
        check_scraper(scope_from("127.0.0.1", {"Authorization": "Bearer wrong"}), "s3cret")


def test_the_api_face_comes_from_the_path() -> None:
    assert [api_face(p) for p in ("/v1/models/x", "/fal/x", "/replicate/v1/x", "/bfl/v1/flux-2-pro")] == [
        "native",
        "fal",
        "replicate",
        "bfl",
    ]
