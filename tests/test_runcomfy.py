"""The native API as RunComfy's own clients read it (sources in docs/compat.md), field by field."""

from __future__ import annotations

import base64
import io
import os

import httpx
import pytest
from PIL import Image

from _fixtures_images import png_bytes
from _fixtures_server import LiveServer

PRO = "blackforestlabs/flux-2/pro/edit"
KLEIN = "blackforestlabs/flux-2/klein-4b/edit"
PRICE = 0.03  # USD per output megapixel, for PRO only


@pytest.fixture(scope="module")
def server(tmp_path_factory, image_server):
    image_server.add("/rc-ref.png", png_bytes((96, 64)), "image/png")
    server = LiveServer(
        tmp_path_factory.mktemp("runcomfy-server"),
        ("--model", "tiny"),
        {"fetch_allow": '["127.0.0.1"]', "price_per_megapixel": f'{{"{PRO}": {PRICE}}}'},
    ).start()
    yield server
    server.stop()


@pytest.fixture
def body(image_server) -> dict:
    return {"prompt": "a hat", "image_urls": [image_server.url("/rc-ref.png")], "image_size": "square"}


def submit(server: LiveServer, body: dict, model: str = PRO) -> str:
    with server.client() as http:
        answer = http.post(f"/v1/models/{model}", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()["request_id"]


def test_cancel_answers_an_outcome_for_queued_running_and_finished(server, body):
    slow = {**body, "num_inference_steps": 100}  # 512x512: the running one stays running until cancelled
    running, queued = submit(server, slow), submit(server, slow)
    server.wait_for(running, {"in_progress"})
    with server.client() as http:
        answers = {
            name: http.post(f"/v1/requests/{rid}/cancel") for name, rid in (("queued", queued), ("running", running))
        }
        server.wait_for(running, {"cancelled"})
        finished = http.post(f"/v1/requests/{queued}/cancel")

    assert {answer.status_code for answer in (*answers.values(), finished)} == {200}
    queued_body, running_body = answers["queued"].json(), answers["running"].json()
    assert (queued_body["request_id"], queued_body["status"], queued_body["outcome"]) == (
        queued,
        "cancelled",
        "cancellation_requested",
    )
    assert (running_body["request_id"], running_body["status"], running_body["outcome"]) == (
        running,
        "in_progress",
        "cancellation_requested",
    ), "fluxedit's extension: a running job stops at its next step"
    assert (finished.json()["status"], finished.json()["outcome"]) == ("cancelled", "not_cancellable")


def test_errors_carry_the_flat_fields_beside_the_error_object(server, body):
    with server.client() as http:
        invalid = http.post(f"/v1/models/{PRO}", json={**body, "image_urls": []})
        missing = http.get("/v1/requests/0123456789abcdef0123456789abcdef/status")
    unauthorized = httpx.get(f"{server.base_url}/v1/models")
    for answer, status, code in (
        (invalid, 422, "invalid_input"),
        (missing, 404, "not_found"),
        (unauthorized, 401, "unauthorized"),
    ):
        error = answer.json()
        assert answer.status_code == status
        assert (error["error_code"], error["error"]["code"]) == (code, code)
        assert error["error_message"] == error["error"]["message"] and error["error_message"]
    assert invalid.json()["error"]["field"] == "image_urls"


def test_include_cost_prices_the_output_megapixels(server, body):
    small = {**body, "image_size": {"width": 128, "height": 128}}
    priced = submit(server, {**small, "num_images": 2})
    unpriced = submit(server, small, model=KLEIN)
    for request_id in (priced, unpriced):
        server.wait_for(request_id, {"completed"})
    with server.client() as http:
        with_cost = http.get(f"/v1/requests/{priced}/result", params={"include_cost": "true"}).json()
        without = http.get(f"/v1/requests/{priced}/result").json()
        no_price = http.get(f"/v1/requests/{unpriced}/result", params={"include_cost": "true"}).json()
    assert with_cost["cost"] == round(PRICE * 128 * 128 / 1e6 * 2, 6), "USD, rounded to a millionth"
    assert without["cost"] is None and no_price["cost"] is None


def test_num_images_two_gives_two_distinct_images(server, body):
    request_id = submit(server, {**body, "num_images": 2, "image_size": {"width": 128, "height": 128}})
    server.wait_for(request_id, {"completed"})
    with server.client() as http:
        result = http.get(f"/v1/requests/{request_id}/result").json()
        images = [http.get(url).content for url in result["output"]["images"]]
    assert result["model_id"] == PRO and len(images) == 2
    assert all(Image.open(io.BytesIO(data)).size == (128, 128) for data in images)
    assert images[0] != images[1]
    assert result["input"]["num_images"] == 2


@pytest.mark.parametrize(
    ("change", "field"),
    [({"safety_tolerance": 2}, "safety_tolerance"), ({"enable_safety_checker": True}, "enable_safety_checker")],
)
def test_a_field_the_local_engine_cannot_honour_is_refused(server, body, change, field):
    with server.client() as http:
        answer = http.post(f"/v1/models/{PRO}", json={**body, **change})
    assert answer.status_code == 422
    assert answer.json()["error"]["field"] == field and field in answer.json()["error_message"]


def test_results_and_lists_never_echo_a_data_uri(server):
    noise = Image.frombytes("RGB", (1300, 1300), os.urandom(1300 * 1300 * 3))
    buffer = io.BytesIO()
    noise.save(buffer, "PNG")
    assert buffer.tell() > 5_000_000
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    request_id = submit(server, {"prompt": "big", "image_urls": [uri], "image_size": "square"})
    with server.client() as http:
        result = http.get(f"/v1/requests/{request_id}/result")
        listed = http.get("/v1/requests", params={"limit": 4})
        http.post(f"/v1/requests/{request_id}/cancel")
    assert len(result.content) < 10_000 and len(listed.content) < 40_000
