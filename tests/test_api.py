"""The async model API as a client of the hosted one sees it: a real server, real HTTP."""

from __future__ import annotations

import io
import json
import subprocess
import time

import httpx
import pytest
from PIL import Image

from _fixtures_images import png_bytes

PRO = "blackforestlabs/flux-2/pro/edit"


@pytest.fixture(scope="module")
def refs(image_server):
    image_server.add("/cat.png", png_bytes((128, 96), (200, 40, 40)), "image/png")
    image_server.add("/hat.png", png_bytes((64, 64), (10, 10, 200)), "image/png")
    return [image_server.url("/cat.png"), image_server.url("/hat.png")]


def submit(server, body: dict, model: str = PRO, key: str | None = None) -> httpx.Response:
    with server.client(key) as http:
        return http.post(f"/v1/models/{model}", json=body)


def curl(*args: str) -> dict:
    out = subprocess.run(["curl", "-s", "-S", *args], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def test_seed_curl_flow_runs_as_written(tiny_server, refs):
    auth = f"Authorization: Bearer {tiny_server.api_key}"
    body = json.dumps({"prompt": "Put the hat on the cat", "image_urls": refs, "image_size": "landscape_4_3"})
    submitted = curl(
        "-X",
        "POST",
        f"{tiny_server.base_url}/v1/models/{PRO}",
        "-H",
        auth,
        "-H",
        "Content-Type: application/json",
        "-d",
        body,
    )
    assert submitted["status_url"].startswith(tiny_server.base_url + "/v1/requests/")
    request_id = submitted["request_id"]

    status = curl(submitted["status_url"], "-H", auth)
    assert status["status"] in {"in_queue", "in_progress", "completed"}
    tiny_server.wait_for(request_id, {"completed"})

    result = curl(submitted["result_url"], "-H", auth)
    assert result["status"] == "completed"
    assert (result["width"], result["height"]) == (1024, 768)
    image = Image.open(io.BytesIO(httpx.get(result["output"]["images"][0]).content))
    assert (image.format, image.size) == ("JPEG", (1024, 768))

    cancelled = curl("-X", "POST", submitted["cancel_url"], "-H", auth)
    assert (cancelled["outcome"], cancelled["status"]) == ("not_cancellable", "completed")  # RunComfy's answer


def test_job_goes_through_every_state_with_progress(tiny_server, refs):
    response = submit(
        tiny_server, {"prompt": "slow", "image_urls": refs, "image_size": "square", "num_inference_steps": 40}
    )
    request_id = response.json()["request_id"]
    running = tiny_server.wait_for(request_id, {"in_progress", "completed"})
    seen = {running["status"]}
    steps = set()
    with tiny_server.client() as http:
        while (body := http.get(f"/v1/requests/{request_id}/status").json())["status"] != "completed":
            seen.add(body["status"])
            if body.get("progress"):
                steps.add(body["progress"]["step"])
                assert body["progress"]["total"] == 40
        result = http.get(f"/v1/requests/{request_id}/result").json()
    assert "in_progress" in seen
    assert len(steps) >= 2, "progress moves while running"
    assert result["progress"] == {"step": 40, "total": 40}
    assert result["output"]["images"] and result["seed"] == 0
    assert set(result["timings"]) >= {"queue_s", "inference_s", "total_s"}


def test_queue_position_falls_as_jobs_ahead_finish(tiny_server, refs):
    body = {"prompt": "queue", "image_urls": refs[:1], "image_size": "square", "num_inference_steps": 25}
    ids = [submit(tiny_server, body).json()["request_id"] for _ in range(3)]
    last = ids[-1]
    positions = []
    with tiny_server.client() as http:
        while (status := http.get(f"/v1/requests/{last}/status").json())["status"] == "in_queue":
            positions.append(status["queue_position"])
            time.sleep(0.05)
    assert positions and positions[0] >= 1
    assert positions == sorted(positions, reverse=True), "the position never goes up"
    assert positions[-1] < positions[0], "the position falls as jobs ahead finish"
    for request_id in ids:
        assert tiny_server.wait_for(request_id, {"completed", "failed"})["status"] == "completed"


def test_cancel_queued_running_and_finished(tiny_server, refs):
    slow = {"prompt": "long", "image_urls": refs[:1], "image_size": "square", "num_inference_steps": 100}
    running_id = submit(tiny_server, slow).json()["request_id"]
    queued_id = submit(tiny_server, slow).json()["request_id"]
    tiny_server.wait_for(running_id, {"in_progress"})
    with tiny_server.client() as http:
        queued = http.post(f"/v1/requests/{queued_id}/cancel")
        assert queued.status_code == 200 and queued.json()["status"] == "cancelled"

        running = http.post(f"/v1/requests/{running_id}/cancel")
        assert running.status_code == 200
        stopped = tiny_server.wait_for(running_id, {"cancelled", "completed"})
        assert stopped["status"] == "cancelled"
        assert stopped["progress"]["step"] < 100, "a running job stops at its next step"

        again = http.post(f"/v1/requests/{queued_id}/cancel")
        assert again.status_code == 200, "RunComfy's clients expect a 2xx for a finished job"
        assert (again.json()["outcome"], again.json()["status"]) == ("not_cancellable", "cancelled")
        result = http.get(f"/v1/requests/{running_id}/result").json()
        assert result["status"] == "cancelled" and result.get("output") is None


def test_keys_are_required_and_see_only_their_own_jobs(tiny_server, refs):
    assert httpx.get(f"{tiny_server.base_url}/v1/models").status_code == 401
    wrong = httpx.get(f"{tiny_server.base_url}/v1/models", headers={"Authorization": "Bearer fe_wrong"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"

    from _fixtures_server import run_cli

    other = run_cli("keys", "create", "--name", "other", data_dir=tiny_server.data_dir)
    assert other.returncode == 0, other.stderr
    other_key = other.stdout.strip()

    mine = submit(tiny_server, {"prompt": "mine", "image_urls": refs[:1], "image_size": "square"}).json()
    with tiny_server.client(other_key) as http:
        for path in ("status", "result"):
            answer = http.get(f"/v1/requests/{mine['request_id']}/{path}")
            assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"
        assert http.post(f"/v1/requests/{mine['request_id']}/cancel").status_code == 404
        listed = http.get("/v1/requests").json()["requests"]
        assert mine["request_id"] not in {r["request_id"] for r in listed}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"image_urls": []}, "image_urls"),
        ({"image_urls": ["https://example.com/a.png"] * 11}, "image_urls"),
        ({"image_size": "huge"}, "image_size"),
        ({"image_size": {"width": 3, "height": 5}}, "image_size.width"),
        ({"image_size": {"width": 5000, "height": 5000}}, "image_size"),
        ({"image_urls": ["file:///etc/passwd"]}, "image_urls"),
        ({"prompt": ""}, "prompt"),
        ({"output_format": "gif"}, "output_format"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(tiny_server, refs, change, field):
    answer = submit(tiny_server, {"prompt": "x", "image_urls": refs, **change})
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["code"] == "invalid_input"
    assert error["field"] == field
    assert error["message"] and "Traceback" not in answer.text


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/page.html", "input_not_image"),
        ("/missing.png", "input_unreachable"),
        ("/huge.png", "input_too_large"),
        ("/redirect-to-loopback", "input_forbidden"),
    ],
)
def test_unusable_inputs_fail_the_job_with_a_code_and_index(tiny_server, image_server, refs, path, code):
    bad = image_server.url(path)
    answer = submit(tiny_server, {"prompt": "x", "image_urls": [refs[0], bad], "image_size": "square"})
    body = tiny_server.wait_for(answer.json()["request_id"], {"failed", "completed"})
    assert body["status"] == "failed"
    assert body["error"]["code"] == code
    assert body["error"]["index"] == 1
    good = submit(tiny_server, {"prompt": "still fine", "image_urls": refs, "image_size": "square"})
    assert tiny_server.wait_for(good.json()["request_id"], {"failed", "completed"})["status"] == "completed"


def test_a_url_into_the_network_that_is_not_allowed_is_refused(tiny_server, image_server, refs):
    # 127.0.0.3 is loopback but not on the allow list: refused before any connection.
    url = image_server.url("/cat.png").replace("127.0.0.1", "127.0.0.3")
    answer = submit(tiny_server, {"prompt": "x", "image_urls": [url], "image_size": "square"})
    body = tiny_server.wait_for(answer.json()["request_id"], {"failed", "completed"})
    assert body["error"]["code"] == "input_forbidden" and body["error"]["index"] == 0
    assert image_server.requests_for("/cat.png", host="127.0.0.3") == 0


def test_unknown_model_lists_the_served_ones(tiny_server, refs):
    answer = submit(tiny_server, {"prompt": "x", "image_urls": refs}, model="acme/nope/edit")
    assert answer.status_code == 404
    assert PRO in answer.json()["error"]["message"]


def test_models_say_the_tiny_model_serves_the_standard_ids(tiny_server):
    with tiny_server.client() as http:
        models = {m["id"]: m for m in http.get("/v1/models").json()["models"]}
    assert PRO in models and "blackforestlabs/flux-2/klein-4b/edit" in models
    assert models[PRO]["source"] == "tiny" and models[PRO]["max_references"] == 10


def test_upload_then_edit_with_the_python_client(tiny_server, tmp_path):
    from fluxedit import Client

    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes((160, 120), (20, 160, 90)))
    with Client(tiny_server.base_url, tiny_server.api_key) as client:
        url = client.upload(photo)
        images = client.edit(PRO, prompt="make it night", image_urls=[url], image_size="auto", output_format="png")
        assert [Image.open(io.BytesIO(i.data)).size for i in images] == [(1184, 880)]
        listed = client.requests(limit=1).requests
        assert listed[0].input["prompt"] == "make it night"


def test_idempotent_submit_returns_the_same_request(tiny_server, refs):
    body = {"prompt": "once", "image_urls": refs[:1], "image_size": "square"}
    with tiny_server.client() as http:
        first = http.post(f"/v1/models/{PRO}", json=body, headers={"Idempotency-Key": "abc-1"}).json()
        second = http.post(f"/v1/models/{PRO}", json=body, headers={"Idempotency-Key": "abc-1"}).json()
    assert first["request_id"] == second["request_id"]


def test_requests_are_listed_newest_first_with_a_cursor(tiny_server, refs):
    with tiny_server.client() as http:
        page = http.get("/v1/requests", params={"limit": 2}).json()
        assert len(page["requests"]) == 2 and page["next_cursor"]
        created = [r["created_at"] for r in page["requests"]]
        assert created == sorted(created, reverse=True)
        following = http.get("/v1/requests", params={"limit": 2, "cursor": page["next_cursor"]}).json()
        assert not {r["request_id"] for r in following["requests"]} & {r["request_id"] for r in page["requests"]}


@pytest.fixture(scope="module")
def small_limits_server(tmp_path_factory, image_server):
    from _fixtures_server import LiveServer

    image_server.add("/small.png", png_bytes((64, 64), (200, 40, 40)), "image/png")
    limits = {"max_queued_per_model": "1", "max_upload_bytes": "200000", "max_request_bytes": "300000"}
    server = LiveServer(
        tmp_path_factory.mktemp("limits"), ("--model", "tiny"), {"fetch_allow": '["127.0.0.1"]', **limits}
    )
    yield server.start()
    server.stop()


def test_a_full_queue_answers_429_with_retry_after(small_limits_server, image_server):
    body = {
        "prompt": "x",
        "image_urls": [image_server.url("/small.png")],
        "image_size": "square",
        "num_inference_steps": 100,
    }
    answers = [submit(small_limits_server, body) for _ in range(4)]
    full = [a for a in answers if a.status_code == 429]
    assert full, [a.status_code for a in answers]
    assert full[0].json()["error"]["code"] == "queue_full"
    assert int(full[0].headers["Retry-After"]) >= 1
    with small_limits_server.client() as http:
        for answer in answers:
            if answer.status_code == 200:
                http.post(f"/v1/requests/{answer.json()['request_id']}/cancel")


def test_bodies_and_uploads_are_bounded(small_limits_server):
    noise = bytes(range(256)) * 1200  # ~300 KB
    with small_limits_server.client() as http:
        upload = http.post(
            "/v1/files", files={"file": ("big.png", png_bytes((64, 64), (200, 40, 40)) + noise[:250_000])}
        )
        assert upload.status_code == 413 and upload.json()["error"]["code"] == "payload_too_large"
        inline = "data:image/png;base64," + "A" * 400_000
        body = http.post(f"/v1/models/{PRO}", json={"prompt": "x", "image_urls": [inline]})
        assert body.status_code == 413 and "/v1/files" in body.json()["error"]["message"]
        not_image = http.post("/v1/files", files={"file": ("notes.txt", b"hello")})
        assert not_image.status_code == 422 and not_image.json()["error"]["code"] == "input_not_image"


def test_a_chunked_body_is_bounded_as_it_arrives(small_limits_server):
    def chunks(head: bytes = b""):  # no Content-Length: the bound is found only while the body streams in
        yield head
        for _ in range(40):
            yield b" " * 16_384

    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n' + png_bytes(
        (64, 64), (200, 40, 40)
    )
    with small_limits_server.client() as http:
        json_body = http.post(f"/v1/models/{PRO}", content=chunks(), headers={"Content-Type": "application/json"})
        upload = http.post(
            "/v1/files", content=chunks(part), headers={"Content-Type": "multipart/form-data; boundary=b"}
        )
    for answer in (json_body, upload):
        assert answer.status_code == 413 and answer.json()["error"]["code"] == "payload_too_large"
        assert "/v1/files" in answer.json()["error"]["message"]


def test_no_auth_is_refused_off_loopback(tmp_path):
    from _fixtures_server import run_cli

    done = run_cli("serve", "--model", "tiny", "--host", "0.0.0.0", "--no-auth", data_dir=tmp_path)
    assert done.returncode != 0
    assert "loopback" in done.stderr and "Traceback" not in done.stderr


def test_cli_edit_on_a_server_uploads_local_files_and_uses_urls(tiny_server, refs, tmp_path):
    from _fixtures_server import run_cli

    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes((200, 100), (250, 200, 0)))
    out = tmp_path / "remote.png"
    done = run_cli(
        "edit", "--server", tiny_server.base_url, "--api-key", tiny_server.api_key,
        "--model", PRO, "-p", "remote edit", "-i", str(photo), "-i", refs[1],
        "--size", "square", "--steps", "3", "-o", str(out),
        data_dir=tmp_path / "client-data",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert Image.open(out).size == (512, 512)
    with tiny_server.client() as http:
        [latest] = http.get("/v1/requests", params={"limit": 1}).json()["requests"]
    assert latest["input"]["prompt"] == "remote edit"
    assert latest["input"]["image_urls"][0].startswith(tiny_server.base_url + "/files/uploads/")


def test_cli_edit_on_a_server_with_a_wrong_key_says_so(tiny_server, tmp_path):
    from _fixtures_server import run_cli

    done = run_cli(
        "edit", "--server", tiny_server.base_url, "--api-key", "fe_wrong", "-p", "x",
        "-i", "https://example.com/a.png", "-o", str(tmp_path / "o.jpg"),
        data_dir=tmp_path / "client-data",
    )  # fmt: skip
    assert done.returncode != 0
    assert "API key" in done.stderr and "Traceback" not in done.stderr
