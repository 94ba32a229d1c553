"""The embedded queue survives kill -9: nothing lost, nothing run twice to completion, nothing stuck."""

from __future__ import annotations

import sqlite3

from _fixtures_images import png_bytes

PRO = "blackforestlabs/flux-2/pro/edit"


def _submit_slow_jobs(server, url: str, count: int) -> list[str]:
    body = {"prompt": "survive", "image_urls": [url], "image_size": "square", "num_inference_steps": 60}
    with server.client() as http:
        return [http.post(f"/v1/models/{PRO}", json=body).json()["request_id"] for _ in range(count)]


def test_kill_9_with_jobs_queued_and_running_then_restart(start_server, image_server):
    image_server.add("/restart.png", png_bytes((96, 96), (90, 90, 200)), "image/png")
    server = start_server("--model", "tiny", fetch_allow='["127.0.0.1"]', lease_s="2")
    ids = _submit_slow_jobs(server, image_server.url("/restart.png"), 4)
    server.wait_for(ids[0], {"in_progress"})
    server.kill9()

    server.start()
    finals = [server.wait_for(i, {"completed", "failed", "cancelled"}, timeout=240) for i in ids]
    assert [f["status"] for f in finals] == ["completed"] * 4
    assert finals[0]["attempts"] == 2, "the job running at the kill was run again"
    assert [f["attempts"] for f in finals[1:]] == [1, 1, 1]

    with sqlite3.connect(server.data_dir / "fluxedit.db") as db:
        states = db.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall()
    assert states == [("completed", 4)]
    for request_id in ids:
        assert len(list((server.data_dir / "files" / "outputs" / request_id).iterdir())) == 1


def test_a_job_whose_worker_keeps_dying_fails_as_worker_lost(start_server, image_server):
    image_server.add("/lost.png", png_bytes((96, 96), (90, 90, 200)), "image/png")
    server = start_server("--model", "tiny", fetch_allow='["127.0.0.1"]', lease_s="2", max_attempts="1")
    [request_id] = _submit_slow_jobs(server, image_server.url("/lost.png"), 1)
    server.wait_for(request_id, {"in_progress"})
    server.kill9()

    server.start()
    final = server.wait_for(request_id, {"completed", "failed"}, timeout=120)
    assert final["status"] == "failed"
    assert final["error"]["code"] == "worker_lost"
