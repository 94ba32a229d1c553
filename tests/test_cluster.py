"""The cluster mode on real services: PostgreSQL, Redis + Celery, moto's S3 server,
two `fluxedit worker` processes and two `fluxedit serve` processes on loopback.

docs/deploy.md, "A two-worker cluster on one machine", is what this module does.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

import httpx
import pytest
import sqlalchemy as sa
from PIL import Image

from _fixtures_cluster import Process, S3Server
from _fixtures_server import LiveServer, fluxedit_env, read_stream, run_cli
from fluxedit.config import Settings
from fluxedit.jobs.celery_app import queue_name, resend_queued
from fluxedit.jobs.db import metadata, open_database
from fluxedit.jobs.migrate import current_revision, upgrade_database
from fluxedit.jobs.store import JobStore

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

ALPHA = "test/alpha/edit"
BETA = "test/beta/edit"
MODEL_FLAGS = ["--model", f"{ALPHA}=tiny", "--model", f"{BETA}=tiny"]
HEAD_REVISION = "0006"  # the newest file in src/fluxedit/jobs/migrations/versions/


def _reference() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (30, 160, 90)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


REFERENCE = _reference()


def edit_body(steps: int = 2, size: int = 64) -> dict:
    return {
        "prompt": "make it blue",
        "image_urls": [REFERENCE],
        "image_size": {"width": size, "height": size},
        "num_inference_steps": steps,
    }


@dataclass
class Cluster:
    tmp: pytest.TempPathFactory
    settings: dict[str, str]
    database_url: str
    s3: S3Server
    bucket: str
    workers: list[Process] = field(default_factory=list)
    apis: list[LiveServer] = field(default_factory=list)

    def start_worker(self) -> Process:
        data_dir = self.tmp.mktemp("worker")  # its own data dir: as if on its own machine
        proc = Process(
            [sys.executable, "-m", "fluxedit", "worker", *MODEL_FLAGS],
            fluxedit_env(data_dir, **self.settings),
            name=f"worker {len(self.workers) + 1}",
        )
        self.workers.append(proc)
        return proc

    def worker_id(self, proc: Process) -> str:
        return proc.wait_for_output(r"fluxedit worker (\S+) serving").group(1)

    def start_api(self) -> LiveServer:
        server = LiveServer(self.tmp.mktemp("api"), tuple(MODEL_FLAGS), dict(self.settings)).start(timeout=300)
        self.apis.append(server)
        return server

    @property
    def api_key(self) -> str:
        return next(api.api_key for api in self.apis if api.api_key)

    def client(self, n: int) -> httpx.Client:
        return self.apis[n % len(self.apis)].client(self.api_key)

    def submit(self, model: str, body: dict, via: int = 0) -> str:
        with self.client(via) as http:
            answer = http.post(f"/v1/models/{model}", json=body)
        assert answer.status_code == 200, answer.text
        return answer.json()["request_id"]

    def status(self, request_id: str, via: int = 0) -> dict:
        with self.client(via) as http:
            return http.get(f"/v1/requests/{request_id}/status").json()

    def wait_for(self, request_id: str, states: set[str], via: int = 0, timeout_s: float = 300) -> dict:
        deadline = time.monotonic() + timeout_s
        with self.client(via) as http:
            while True:
                body = http.get(f"/v1/requests/{request_id}/status").json()
                if body["status"] in states or time.monotonic() > deadline:
                    return body
                time.sleep(0.1)

    def job_rows(self) -> dict[str, sa.Row]:
        engine = open_database(self.database_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(sa.text("SELECT id, state, attempts, worker_id, outputs FROM jobs")).all()
        finally:
            engine.dispose()
        return {row.id: row for row in rows}

    def bucket_keys(self, prefix: str = "") -> list[str]:
        pages = self.s3.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def completions(self, request_id: str) -> int:
        """How many times the workers' logs say they completed this job."""
        return sum(proc.log.count(f"job {request_id}: completed") for proc in self.workers)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, new_postgres_database, redis_url, s3_server):
    database_url = new_postgres_database()
    bucket = s3_server.new_bucket()
    settings = {
        "database_url": database_url,
        "broker_url": redis_url,
        "secret_key": "cluster-test-secret-shared-by-all",
        "lease_s": "5",
        "recover_interval_s": "1",
        "fetch_allow": '["127.0.0.1"]',  # the tests' webhook receiver
        **{k.removeprefix("FLUXEDIT_").lower(): v for k, v in s3_server.settings_env(bucket, "fx").items()},
    }
    cluster = Cluster(tmp_path_factory, settings, database_url, s3_server, bucket)
    try:
        for _ in range(2):
            cluster.start_worker()
        cluster.start_api()
        cluster.start_api()
        for proc in cluster.workers:
            proc.wait_for_output(r"\bready\.")
        yield cluster
    finally:
        for api in cluster.apis:
            api.stop()
        for proc in cluster.workers:
            proc.stop()


# --- the schema ---------------------------------------------------------------------------


def test_postgres_schema_comes_from_the_migrations(cluster: Cluster) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    assert current_revision(cluster.database_url) == HEAD_REVISION
    engine = open_database(cluster.database_url)
    try:
        with engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    finally:
        engine.dispose()
    assert differences == [], "the job store's tables differ from the migrations: add a revision"


def test_a_database_made_by_create_all_is_adopted(new_postgres_database) -> None:
    url = new_postgres_database()
    engine = open_database(url)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO api_keys (id, name, prefix, secret_sha256, created_at) "
                "VALUES ('k1', 'old', 'fe_x', 'abc', now())"
            )
        )
    upgrade_database(url)
    upgrade_database(url)  # a second start finds it current
    assert current_revision(url) == HEAD_REVISION
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT name FROM api_keys")).scalar_one() == "old"
    engine.dispose()


# --- the workers ------------------------------------------------------------------------------


def test_each_worker_consumes_only_its_models_queues(cluster: Cluster) -> None:
    # The documented way to look at the workers (Flower uses the same app).
    answer = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "fluxedit.jobs.celery_app:app", "inspect", "active_queues", "--json"],
        env=fluxedit_env(cluster.tmp.mktemp("inspect"), **cluster.settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert answer.returncode == 0, answer.stderr
    queues = json.loads(answer.stdout.strip().splitlines()[-1])
    live = [name for name in queues if name.startswith("fluxedit-")]
    assert len(live) == 2
    for name in live:
        assert {q["name"] for q in queues[name]} == {queue_name(ALPHA), queue_name(BETA)}


def test_forty_jobs_over_two_models_run_on_both_workers(cluster: Cluster) -> None:
    ids = [cluster.submit((ALPHA, BETA)[n % 2], edit_body(), via=n) for n in range(40)]
    # Status through the API process that did not take the submit.
    final = {rid: cluster.wait_for(rid, {"completed", "failed", "cancelled"}, via=n + 1) for n, rid in enumerate(ids)}
    assert {body["status"] for body in final.values()} == {"completed"}, final

    rows = cluster.job_rows()
    assert all(rows[rid].state == "completed" and rows[rid].attempts == 1 for rid in ids)
    worker_ids = {cluster.worker_id(proc) for proc in cluster.workers}
    assert {rows[rid].worker_id for rid in ids} == worker_ids, "both workers took jobs"

    outputs = cluster.bucket_keys("fx/outputs/")
    assert sorted(outputs) == sorted(f"fx/outputs/{rid}/0.jpg" for rid in ids)
    assert all(cluster.completions(rid) == 1 for rid in ids)

    with cluster.client(1) as http:
        result = http.get(f"/v1/requests/{ids[0]}/result").json()
    url = result["output"]["images"][0]
    assert url.startswith(cluster.s3.endpoint_url), "a presigned bucket URL"
    image = Image.open(io.BytesIO(httpx.get(url).content))
    assert (image.format, image.size) == ("JPEG", (64, 64))


def test_a_key_with_one_job_starts_among_the_next_two_after_a_key_with_twenty(cluster: Cluster, tmp_path) -> None:
    other = run_cli("keys", "create", "--name", "b", data_dir=tmp_path, database_url=cluster.database_url)
    b_key = other.stdout.strip()
    a_ids = [cluster.submit(ALPHA, edit_body(steps=6)) for _ in range(20)]
    with cluster.apis[1].client(b_key) as http:
        b_id = http.post(f"/v1/models/{ALPHA}", json=edit_body(steps=6)).json()["request_id"]
        deadline = time.monotonic() + 300
        while (b := http.get(f"/v1/requests/{b_id}/status").json())["status"] != "completed":
            assert time.monotonic() < deadline, b
            time.sleep(0.1)
    a_jobs = [cluster.wait_for(rid, {"completed"}) for rid in a_ids]
    queued_at, b_started = datetime.fromisoformat(b["created_at"]), datetime.fromisoformat(b["started_at"])
    started = [datetime.fromisoformat(j["started_at"]) for j in a_jobs]
    assert sum(1 for t in started if t > queued_at) >= 2, "A still had jobs waiting when B queued"
    # Two workers: the next two claims after B queued; B is one of them.
    assert sum(1 for t in started if queued_at < t < b_started) <= 1


def test_an_upload_to_one_api_process_is_a_reference_for_a_job_on_another(cluster: Cluster) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (80, 64), (200, 30, 30)).save(buffer, "PNG")
    with cluster.client(0) as http:
        uploaded = http.post("/v1/files", files={"file": ("red.png", buffer.getvalue(), "image/png")})
    assert uploaded.status_code == 200, uploaded.text
    url = uploaded.json()["url"]
    # An API URL, signed with the cluster's shared secret: any API process serves it.
    assert url.startswith(cluster.apis[0].base_url + "/files/uploads/")
    assert httpx.get(url.replace(cluster.apis[0].base_url, cluster.apis[1].base_url)).content == buffer.getvalue()
    assert len(cluster.bucket_keys("fx/uploads/")) >= 1

    body = {**edit_body(), "image_urls": [url], "image_size": "auto"}
    rid = cluster.submit(ALPHA, body, via=1)
    final = cluster.wait_for(rid, {"completed", "failed", "cancelled"}, via=0)
    assert final["status"] == "completed", final.get("error")


def test_cancel_a_queued_and_a_running_job(cluster: Cluster) -> None:
    # Two long jobs keep both workers busy, so a third one waits in the queue.
    running = [cluster.submit(model, edit_body(steps=100), via=n) for n, model in enumerate((ALPHA, BETA))]
    for rid in running:
        body = cluster.wait_for(rid, {"in_progress", "completed", "failed"})
        assert body["status"] == "in_progress", body
    queued = cluster.submit(ALPHA, edit_body(steps=100), via=1)
    assert cluster.status(queued)["status"] == "in_queue"

    with cluster.client(0) as http:
        answer = http.post(f"/v1/requests/{queued}/cancel")
    assert answer.status_code == 200 and answer.json()["status"] == "cancelled"

    for n, rid in enumerate(running):
        with cluster.client(n + 1) as http:  # cancel through either API process
            assert http.post(f"/v1/requests/{rid}/cancel").status_code == 200
        assert cluster.wait_for(rid, {"cancelled", "completed", "failed"})["status"] == "cancelled"

    rows = cluster.job_rows()
    assert rows[queued].state == "cancelled" and rows[queued].attempts == 0  # never started
    assert all(rows[rid].state == "cancelled" for rid in running)
    for rid in [*running, queued]:
        assert cluster.bucket_keys(f"fx/outputs/{rid}/") == []
    # The workers are free again: a new job runs.
    after = cluster.submit(BETA, edit_body())
    assert cluster.wait_for(after, {"completed", "failed", "cancelled"})["status"] == "completed"


def test_queued_jobs_whose_message_was_lost_run_after_resend(cluster: Cluster) -> None:
    store = JobStore(cluster.database_url)
    try:
        # Queued in the table with no message, as after a Redis restart without persistence.
        job = store.submit("lost-message-key", BETA, edit_body(), max_queued=100)
        # The settings as fluxedit reads them from the environment (JSON for list values).
        settings = Settings.model_validate(
            {k: json.loads(v) if v.startswith("[") else v for k, v in cluster.settings.items()}
        )
        assert resend_queued(settings) == 1
        deadline = time.monotonic() + 300
        while (state := store.get(job.id).state.value) not in {"completed", "failed"} and time.monotonic() < deadline:
            time.sleep(0.1)
        assert state == "completed"
    finally:
        store.dispose()
    assert cluster.bucket_keys(f"fx/outputs/{job.id}/") == [f"fx/outputs/{job.id}/0.jpg"]


def test_a_worker_killed_mid_job_leaves_it_to_the_other(cluster: Cluster) -> None:
    rid = cluster.submit(ALPHA, edit_body(steps=60))
    deadline = time.monotonic() + 300
    while not (body := cluster.status(rid)).get("progress") and time.monotonic() < deadline:
        assert body["status"] in {"in_queue", "in_progress"}, body
        time.sleep(0.1)
    owner = cluster.job_rows()[rid].worker_id
    victim = next(proc for proc in cluster.workers if cluster.worker_id(proc) == owner)
    survivor = next(proc for proc in cluster.workers if proc is not victim)
    victim.kill9()

    body = cluster.wait_for(rid, {"completed", "failed", "cancelled"}, via=1)
    assert body["status"] == "completed", body
    assert body["attempts"] == 2
    row = cluster.job_rows()[rid]
    assert row.worker_id == cluster.worker_id(survivor)
    assert cluster.completions(rid) == 1
    assert cluster.bucket_keys(f"fx/outputs/{rid}/") == [f"fx/outputs/{rid}/0.jpg"]

    # A replacement worker joins and takes jobs as before.
    cluster.workers.remove(victim)
    cluster.start_worker().wait_for_output(r"\bready\.")
    more = [cluster.submit(BETA, edit_body(), via=n) for n in range(4)]
    assert all(cluster.wait_for(r, {"completed", "failed", "cancelled"})["status"] == "completed" for r in more)


# --- webhooks ---------------------------------------------------------------------------------


def test_twenty_webhooks_from_two_workers_are_each_sent_once_by_the_two_api_processes(cluster, webhook_receiver):
    # Workers write the events; both API processes look for them and race to claim each one.
    body = {**edit_body(), "webhook": webhook_receiver.url("/cluster"), "webhook_events_filter": ["completed"]}
    ids = [cluster.submit((ALPHA, BETA)[n % 2], body, via=n) for n in range(20)]
    for rid in ids:
        assert cluster.wait_for(rid, {"completed", "failed", "cancelled"})["status"] == "completed"
    hooks = webhook_receiver.wait_for("/cluster", lambda hooks: len(hooks) >= 20, timeout_s=120)
    time.sleep(1)  # room for a second send of any event, were one made
    hooks = webhook_receiver.hooks("/cluster")

    assert sorted(h.json["data"]["request_id"] for h in hooks) == sorted(ids)
    assert set(Counter(h.id for h in hooks).values()) == {1}, "no event was sent twice"
    with cluster.client(1) as http:
        secret = http.get("/v1/webhooks/secret").json()["secret"]
        logs = [http.get(f"/v1/requests/{rid}/webhooks").json() for rid in ids]
    assert all(webhook_receiver.verify(h, secret)["type"] == "request.completed" for h in hooks)
    assert all([len(e["attempts"]) for e in log["events"]] == [1] for log in logs), "one attempt each"


# --- events: the status stream and `Prefer: wait` ---------------------------------------------


def test_stream_on_one_api_process_follows_a_job_submitted_to_the_other(cluster: Cluster) -> None:
    # Both workers busy with a long job each, so the streamed one waits in the queue first;
    # once the stream has shown that, the long jobs are cancelled to free the workers.
    blockers = [cluster.submit(model, edit_body(steps=100), via=n) for n, model in enumerate((ALPHA, BETA))]
    for rid in blockers:
        assert cluster.wait_for(rid, {"in_progress", "completed", "failed"})["status"] == "in_progress"
    request_id = cluster.submit(ALPHA, edit_body(steps=8), via=0)

    def free_the_workers_once_queued(event) -> bool:
        if event.json()["status"] == "in_queue":
            with cluster.client(0) as http:
                for rid in blockers:
                    http.post(f"/v1/requests/{rid}/cancel")
        return False  # read on to the end of the stream

    events = read_stream(cluster.apis[1], request_id, key=cluster.api_key, stop_after=free_the_workers_once_queued)
    bodies = [event.json() for event in events]
    states = [body["status"] for body in bodies]
    assert states[0] == "in_queue" and bodies[0]["queue_position"] == 0, states
    assert "in_progress" in states, states
    assert states[-1] == "completed" and events[-1].event == "result", states
    assert [event.event for event in events[:-1]] == ["status"] * (len(events) - 1)
    steps = [b["progress"]["step"] for b in bodies if b["status"] == "in_progress" and b["progress"]]
    assert steps == sorted(steps), "steps only go forward"
    assert len({event.id for event in events}) == len(events), "every event has its own id"
    url = bodies[-1]["output"]["images"][0]
    assert url.startswith(cluster.s3.endpoint_url), "the result event carries the job's result body"
    assert Image.open(io.BytesIO(httpx.get(url).content)).size == (64, 64)
    for rid in blockers:
        assert cluster.wait_for(rid, {"completed", "failed", "cancelled"})["status"] == "cancelled"


def test_prefer_wait_on_submit_answers_the_result_a_worker_made(cluster: Cluster) -> None:
    with cluster.client(1) as http:
        answer = http.post(f"/v1/models/{BETA}", json=edit_body(), headers={"Prefer": "wait=30"}, timeout=90)
    assert answer.status_code == 200, answer.text
    assert answer.headers["preference-applied"] == "wait=30"
    result = answer.json()
    assert result["status"] == "completed" and len(result["output"]["images"]) == 1, result
    assert cluster.job_rows()[result["request_id"]].worker_id, "a Celery worker ran it"
    image = Image.open(io.BytesIO(httpx.get(result["output"]["images"][0]).content))
    assert (image.format, image.size) == ("JPEG", (64, 64))
