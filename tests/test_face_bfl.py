"""BFL's API under /bfl: raw HTTP as BFL's docs show it, and fluxedit's own BFL engine forwarding to it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import time

import httpx
import pytest
from PIL import Image

from _fixtures_images import png_bytes


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
        ({"webhook_url": "http://10.1.2.3/hook"}, 422, "webhook_url: "),
        ({"webhook_url": "ftp://example.com/hook"}, 422, "webhook_url: "),
        ({"webhook_secret": "s3cret"}, 422, "webhook_secret needs a webhook_url"),
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


def bfl_signature_ok(hook, secret: str) -> bool:
    """A receiver's check, as BFL's guide writes it: X-BFL-Signature is sha256=<hex HMAC of the raw body>."""
    expected = "sha256=" + hmac.new(secret.encode(), hook.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, hook.headers.get("x-bfl-signature", ""))


def test_a_webhook_with_its_secret_brings_the_result_signed(upstream, webhook_receiver) -> None:
    with bfl_http(upstream) as http:
        signed = http.post(
            "/v1/flux-2-pro", json=small_body(webhook_url=webhook_receiver.url("/bfl"), webhook_secret="s3cret")
        ).json()
        unsigned = http.post("/v1/flux-2-pro", json=small_body(webhook_url=webhook_receiver.url("/bfl-plain"))).json()
        [hook] = webhook_receiver.wait_for("/bfl", lambda hooks: len(hooks) >= 1)
        polled = poll(http, signed["polling_url"])
    assert bfl_signature_ok(hook, "s3cret") and not bfl_signature_ok(hook, "other")
    body = hook.json
    assert (body["id"], body["status"]) == (signed["id"], "Ready")
    assert body["result"] == polled["result"]  # the get_result answer, as it is polled
    [plain] = webhook_receiver.wait_for("/bfl-plain", lambda hooks: len(hooks) >= 1)
    assert plain.json["id"] == unsigned["id"] and "x-bfl-signature" not in plain.headers
