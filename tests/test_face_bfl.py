"""BFL's API under /bfl: raw HTTP as BFL's docs show it, and fluxedit's own BFL engine forwarding to it."""

from __future__ import annotations

import base64
import io
import time

import httpx
import pytest
from PIL import Image

from _fixtures_images import png_bytes
from fluxedit.api.faces import bfl_webhook


@pytest.fixture(scope="module")
def upstream(tiny_server, image_server):
    image_server.add("/bfl-face-ref.png", png_bytes((96, 64)), "image/png")
    return tiny_server


def bfl_http(server, key: str | None = None) -> httpx.Client:
    headers = {"x-key": key or server.api_key, "accept": "application/json"}
    return httpx.Client(base_url=f"{server.base_url}/bfl", headers=headers, timeout=60)


def small_body(**extra) -> dict:
    return {
        "prompt": "a red hat",
        "input_image": base64.b64encode(png_bytes((96, 64))).decode(),
        "width": 128,
        "height": 96,
        "output_format": "png",
        "seed": 3,
        **extra,
    }


def poll(http: httpx.Client, polling_url: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        answer = http.get(polling_url).json()
        if answer["status"] != "Pending" or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


def test_submit_and_poll_as_bfls_docs_show(upstream) -> None:
    with bfl_http(upstream) as http:
        task = http.post("/v1/flux-2-pro", json=small_body()).json()
        assert set(task) >= {"id", "polling_url"}
        assert task["polling_url"].startswith(f"{upstream.base_url}/bfl/v1/get_result?id=")
        answer = poll(http, task["polling_url"])
        assert answer["status"] == "Ready", answer
        image = Image.open(io.BytesIO(httpx.get(answer["result"]["sample"]).content))
    assert (image.format, image.size) == ("PNG", (128, 96))
    assert answer["result"]["seed"] == 3
    # The task is in the native history too.
    with upstream.client() as native:
        assert native.get(f"/v1/requests/{task['id']}/status").json()["status"] == "completed"


def test_fluxedit_bfl_engine_forwards_to_a_second_fluxedit(upstream, image_server, start_server) -> None:
    front = start_server(
        "--model",
        "blackforestlabs/flux-2/pro/edit=bfl:flux-2-pro",
        bfl_base_url=f"{upstream.base_url}/bfl",
        bfl_api_key=upstream.api_key,
        fetch_allow='["127.0.0.1"]',
        bfl_backoff_s="0.1",
    )
    job = {
        "prompt": "a red hat",
        "image_urls": [image_server.url("/bfl-face-ref.png")],
        "image_size": {"width": 128, "height": 96},
        "output_format": "png",
    }
    with front.client() as http:
        request_id = http.post("/v1/models/blackforestlabs/flux-2/pro/edit", json=job).json()["request_id"]
        done = front.wait_for(request_id, {"completed", "failed"})
        assert done["status"] == "completed", done
        url = http.get(f"/v1/requests/{request_id}/result").json()["output"]["images"][0]
        image = Image.open(io.BytesIO(httpx.get(url).content))
    assert image.size == (128, 96)
    with upstream.client() as http:
        forwarded = http.get("/v1/requests", params={"limit": 5}).json()["requests"]
    assert any(r["input"]["prompt"] == "a red hat" and r["status"] == "completed" for r in forwarded)


def test_a_url_reference_and_size_from_it(upstream, image_server) -> None:
    body = small_body(input_image=image_server.url("/bfl-face-ref.png"))
    del body["width"], body["height"]  # no size: the reference's aspect ratio
    with bfl_http(upstream) as http:
        answer = poll(http, http.post("/v1/flux-2-dev", json=body).json()["polling_url"])
    assert answer["status"] == "Ready"


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        ({"input_image": None}, 422, "input_image is required"),
        ({"input_image": "not base64 of an image"}, 422, "input_image is neither"),
        ({"width": 10}, 422, "width"),
        ({"height": None}, 422, "both width and height"),
        ({"prompt": ""}, 422, "prompt"),
        ({"webhook_url": "http://127.0.0.1:9/hook"}, 422, "webhook"),
    ],
)
def test_bad_requests_answer_a_detail(upstream, change, status, words) -> None:
    body = {k: v for k, v in {**small_body(), **change}.items() if v is not None}
    with bfl_http(upstream) as http:
        answer = http.post("/v1/flux-2-pro", json=body)
    assert answer.status_code == status
    assert words in answer.json()["detail"]


def test_auth_model_paths_and_unknown_tasks(upstream) -> None:
    with httpx.Client(base_url=f"{upstream.base_url}/bfl", timeout=30) as http:
        missing = http.post("/v1/flux-2-pro", json=small_body())
        wrong = http.post("/v1/flux-2-pro", json=small_body(), headers={"x-key": "nope"})
    assert missing.status_code == 401 and "x-key" in missing.json()["detail"]
    assert wrong.status_code == 401 and "not valid" in wrong.json()["detail"]
    with bfl_http(upstream) as http:
        unknown_model = http.post("/v1/flux-1-kontext-pro", json=small_body())
        unknown_task = http.get("/v1/get_result", params={"id": "no-such-task"})
    assert unknown_model.status_code == 404 and "flux-2-klein-4b" in unknown_model.json()["detail"]
    assert unknown_task.json()["status"] == "Task not found"


def test_webhook_with_secret_is_signed_over_its_exact_body() -> None:
    answer = {"id": "t1", "status": "Ready", "result": {"sample": "http://127.0.0.1/x.png"}, "details": None}
    body, headers = bfl_webhook.render(answer, "s3cret", timestamp=1_700_000_000)
    signature = headers[bfl_webhook.SIGNATURE_HEADER]
    assert bfl_webhook.verify(body, signature, "s3cret")
    assert not bfl_webhook.verify(body.replace(b"Ready", b"Error"), signature, "s3cret")
    assert not bfl_webhook.verify(body, signature, "other")
    unsigned_body, unsigned = bfl_webhook.render(answer, None)
    assert bfl_webhook.SIGNATURE_HEADER not in unsigned and b'"status":"Ready"' in unsigned_body
