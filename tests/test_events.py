"""A request as it happens: the status stream (SSE) and `Prefer: wait`, against a real server."""

from __future__ import annotations

import httpx
import pytest

from _fixtures_images import png_bytes
from _fixtures_server import read_stream
from fluxedit import Client

PRO = "blackforestlabs/flux-2/pro/edit"


@pytest.fixture(scope="module")
def server(tmp_path_factory, image_server):
    """One engine behind every id: a second job waits in the queue while the first runs."""
    from _fixtures_server import LiveServer

    image_server.add("/events-ref.png", png_bytes((96, 64)), "image/png")
    server = LiveServer(
        tmp_path_factory.mktemp("events-server"),
        ("--model", "tiny"),
        {"fetch_allow": '["127.0.0.1"]', "max_streams_per_key": "2"},
    ).start()
    yield server
    server.stop()


def body(image_server, steps: int = 4) -> dict:
    return {
        "prompt": "a hat",
        "image_urls": [image_server.url("/events-ref.png")],
        "image_size": "square",
        "num_inference_steps": steps,
    }


def submit(server, payload: dict, **headers) -> httpx.Response:
    with server.client() as http:
        return http.post(f"/v1/models/{PRO}", json=payload, headers=headers, timeout=90)


def test_stream_shows_queue_steps_and_result_then_closes(server, image_server) -> None:
    running = submit(server, body(image_server, steps=30)).json()["request_id"]
    server.wait_for(running, {"in_progress"})
    queued = submit(server, body(image_server, steps=4)).json()["request_id"]

    events = read_stream(server, queued)
    bodies = [event.json() for event in events]
    states = [b["status"] for b in bodies]
    assert states[0] == "in_queue" and bodies[0]["queue_position"] == 0
    assert states[-1] == "completed" and events[-1].event == "result"
    assert bodies[-1]["output"]["images"], "the last event carries the result body"
    steps = [b["progress"]["step"] for b in bodies if b["status"] == "in_progress" and b["progress"]]
    assert steps and steps == sorted(steps) and steps[-1] == 4
    assert [e.event for e in events[:-1]] == ["status"] * (len(events) - 1)
    assert len({e.id for e in events}) == len(events), "every event has its own id"
    server.wait_for(running, {"completed"})


def test_stream_resumes_after_last_event_id(server, image_server) -> None:
    request_id = submit(server, body(image_server, steps=12)).json()["request_id"]
    first = read_stream(server, request_id, stop_after=lambda e: e.json()["status"] == "in_progress")
    seen = first[-1].id

    rest = read_stream(server, request_id, last_event_id=seen)
    assert rest, "the job still had steps to go"
    assert seen not in [e.id for e in rest], "nothing already seen is sent again"
    assert rest[-1].json()["status"] == "completed"
    assert read_stream(server, request_id, last_event_id=rest[-1].id) == [], "a finished, seen job: nothing more"


def test_prefer_wait_answers_the_result_in_one_request(server, image_server) -> None:
    answer = submit(server, body(image_server), Prefer="wait=30")
    assert answer.status_code == 200
    assert answer.headers["preference-applied"] == "wait=30"
    result = answer.json()
    assert result["status"] == "completed" and len(result["output"]["images"]) == 1


def test_prefer_wait_that_runs_out_answers_the_submit_body(server, image_server) -> None:
    # A reference that takes 3 s to arrive: the job cannot end within the 1 s asked for, however fast the CPU.
    image_server.add_slow("/events-slow.png", delay_s=3)
    slow = {**body(image_server), "image_urls": [image_server.url("/events-slow.png")]}
    answer = submit(server, slow, Prefer="wait=1")
    assert answer.status_code == 200 and "preference-applied" not in answer.headers
    submitted = answer.json()
    assert submitted["status"] in ("in_queue", "in_progress") and "output" not in submitted
    with server.client() as http:
        http.post(f"/v1/requests/{submitted['request_id']}/cancel")


def test_open_streams_per_key_are_bounded(server, image_server) -> None:
    request_id = submit(server, body(image_server, steps=40)).json()["request_id"]
    url = f"/v1/requests/{request_id}/stream"
    with httpx.Client(base_url=server.base_url, headers=server.headers(), timeout=60) as http:
        with http.stream("GET", url) as one, http.stream("GET", url) as two:
            assert one.status_code == two.status_code == 200
            third = http.get(url)
            assert third.status_code == 429 and third.json()["error"]["code"] == "too_many_streams"
        http.post(f"/v1/requests/{request_id}/cancel")


def test_stream_of_another_keys_request_is_not_found(server, image_server, tmp_path) -> None:
    from _fixtures_server import run_cli

    request_id = submit(server, body(image_server)).json()["request_id"]
    other = run_cli("keys", "create", "--name", "other", data_dir=server.data_dir).stdout.split()[0]
    with httpx.Client(base_url=server.base_url, headers=server.headers(other), timeout=30) as http:
        answer = http.get(f"/v1/requests/{request_id}/stream")
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"


def test_python_client_follows_the_stream(server, image_server) -> None:
    updates = []
    with Client(server.base_url, server.api_key) as client:
        images = client.edit(PRO, on_update=updates.append, **body(image_server, steps=5))
    assert images[0].data[:3] == b"\xff\xd8\xff"
    steps = [u.progress.step for u in updates if u.progress]
    assert steps[-1] == 5 and len(steps) >= 2, "progress came as it happened, not only at the end"
    assert updates[-1].status.value == "completed"


def test_status_says_the_phase_and_a_pending_cancel(server, image_server) -> None:
    request_id = submit(server, body(image_server, steps=40)).json()["request_id"]
    running = read_stream(server, request_id, stop_after=lambda e: (e.json().get("progress") or {}).get("step", 0) >= 1)
    assert running[-1].json()["phase"] == "denoising"
    with server.client() as http:
        cancelled = http.post(f"/v1/requests/{request_id}/cancel").json()
        assert cancelled["status"] == "in_progress" and cancelled["cancel_requested"] is True
        status = http.get(f"/v1/requests/{request_id}/status").json()
    assert status["status"] == "cancelled" or status["cancel_requested"] is True
    final = server.wait_for(request_id, {"completed", "failed", "cancelled"})
    assert final["status"] == "cancelled" and final["phase"] is None
