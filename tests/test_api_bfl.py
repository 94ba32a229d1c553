"""FLUX.2 [pro]/[flex] forwarded to BFL's API, through fluxedit's own API, queue, keys and storage.

BFL's hosted API is not reachable here: `_fixtures_bfl` runs a local server that speaks
its documented protocol.
"""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image

from _fixtures_bfl import FAKE_BFL_KEY
from _fixtures_images import png_bytes
from _fixtures_server import LiveServer

PRO = "blackforestlabs/flux-2/pro/edit"
FLEX = "blackforestlabs/flux-2/flex/edit"


@pytest.fixture(scope="module")
def bfl_server(tmp_path_factory, _fake_bfl_server, image_server):
    fake = _fake_bfl_server.fake
    server = LiveServer(
        tmp_path_factory.mktemp("bfl-server"),
        ("--model", f"{PRO}=bfl:flux-2-pro", "--model", f"{FLEX}=bfl:flux-2-flex"),
        {
            "bfl_api_key": fake.api_key,
            "bfl_base_url": fake.url,
            "fetch_allow": '["127.0.0.1"]',
            "bfl_backoff_s": "0.01",
        },
    ).start()
    yield server
    server.stop()
    assert FAKE_BFL_KEY not in server.log, "the BFL key never reaches the logs"


@pytest.fixture(scope="module")
def refs(image_server) -> list[str]:
    for n, color in enumerate([(200, 0, 0), (0, 200, 0), (0, 0, 200), (90, 90, 90)] * 3):
        image_server.add(f"/bfl-{n}.png", png_bytes((128, 96), color), "image/png")
    return [image_server.url(f"/bfl-{n}.png") for n in range(12)]


def _run(server: LiveServer, body: dict, model: str = PRO) -> tuple[dict, list[httpx.Response]]:
    with server.client() as http:
        submitted = http.post(f"/v1/models/{model}", json=body)
        assert submitted.status_code == 200, submitted.text
        request_id = submitted.json()["request_id"]
        server.wait_for(request_id, {"completed", "failed", "cancelled"}, timeout=60)
        status = http.get(f"/v1/requests/{request_id}/status")
        result = http.get(f"/v1/requests/{request_id}/result")
    return result.json(), [submitted, status, result]


def test_a_three_reference_edit_completes_with_the_image_stored_by_us(bfl_server, fake_bfl, refs):
    body = {"prompt": "combine them", "image_urls": refs[:3], "image_size": "landscape_4_3", "seed": 42}
    result, answers = _run(bfl_server, body)
    assert result["status"] == "completed", result
    [url] = result["output"]["images"]
    assert url.startswith(bfl_server.base_url + "/files/outputs/"), "served from our storage, not BFL's"
    image = Image.open(io.BytesIO(httpx.get(url).content))
    assert image.size == (1024, 768)

    [sent] = fake_bfl.accepted
    assert sent["images"] == ["input_image", "input_image_2", "input_image_3"]
    assert (sent["width"], sent["height"], sent["seed"]) == (1024, 768, 42)
    assert all(FAKE_BFL_KEY not in a.text for a in answers)


@pytest.mark.parametrize(
    ("prompt", "code"),
    [
        ("[moderated-content] a thing", "content_moderated"),
        ("[moderated-request] a thing", "content_moderated"),
        ("[error] a thing", "upstream_failed"),
        ("[error-leak] a thing", "upstream_failed"),
    ],
)
def test_each_bfl_outcome_maps_to_a_failed_job_with_its_code(bfl_server, fake_bfl, refs, prompt, code):
    result, answers = _run(bfl_server, {"prompt": prompt, "image_urls": refs[:1], "image_size": "square"})
    assert result["status"] == "failed"
    assert result["error"]["code"] == code
    assert result.get("output") is None, "never a black image"
    if code == "content_moderated":
        assert "moderation" in result["error"]["message"]
    assert all(FAKE_BFL_KEY not in a.text for a in answers)


def test_bfl_busy_is_retried_until_it_takes_the_task(bfl_server, fake_bfl, refs):
    result, _ = _run(bfl_server, {"prompt": "[429x2] again", "image_urls": refs[:1], "image_size": "square"}, FLEX)
    assert result["status"] == "completed"
    assert [s["answer"] for s in fake_bfl.submits] == [429, 429, 200]


def test_a_ninth_reference_is_refused_at_submit_for_pro(bfl_server, fake_bfl, refs):
    with bfl_server.client() as http:
        answer = http.post(f"/v1/models/{PRO}", json={"prompt": "x", "image_urls": refs[:9]})
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["field"] == "image_urls" and "at most 8" in error["message"]
    assert fake_bfl.submits == []


def test_models_say_these_are_hosted_by_bfl(bfl_server):
    with bfl_server.client() as http:
        models = {m["id"]: m for m in http.get("/v1/models").json()["models"]}
    assert models[PRO]["engine"] == "bfl" and models[PRO]["source"] == "bfl:flux-2-pro"
    assert models[PRO]["max_references"] == 8


def test_forwarded_jobs_run_side_by_side(bfl_server, fake_bfl, refs):
    body = {"prompt": "[slow] together", "image_urls": refs[:1], "image_size": "square"}
    with bfl_server.client() as http:
        ids = [http.post(f"/v1/models/{PRO}", json=body).json()["request_id"] for _ in range(3)]
    finals = [bfl_server.wait_for(i, {"completed", "failed"}, timeout=60) for i in ids]
    assert [f["status"] for f in finals] == ["completed"] * 3
    first_finished = min(f["finished_at"] for f in finals)
    assert all(f["started_at"] < first_finished for f in finals), "all three were at BFL at once"


@pytest.mark.parametrize(
    ("change", "field"),
    [({"num_inference_steps": 20}, "num_inference_steps"), ({"enable_safety_checker": False}, "enable_safety_checker")],
)
def test_what_bfl_cannot_honour_is_refused_before_queuing(bfl_server, fake_bfl, refs, change, field):
    with bfl_server.client() as http:
        answer = http.post(f"/v1/models/{PRO}", json={"prompt": "x", "image_urls": refs[:1], **change})
    assert answer.status_code == 422 and answer.json()["error"]["field"] == field
    assert not fake_bfl.accepted, "nothing was forwarded"
