"""Webhooks as a receiver sees them: a real `fluxedit serve`, a real receiver on 127.0.0.1,
signatures checked with the `standardwebhooks` package, deliveries that survive kill -9."""

from __future__ import annotations

import base64
import io
import re
import time
from datetime import datetime, timedelta

import httpx
import pytest
import sqlalchemy as sa
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from _fixtures_server import LiveServer, run_cli
from _fixtures_webhooks import Hook, WebhookReceiver
from fluxedit.config import Settings
from fluxedit.jobs.db import metadata, open_database
from fluxedit.jobs.keys import KeyStore
from fluxedit.jobs.migrate import MIGRATIONS_DIR, current_revision, upgrade_database
from fluxedit.jobs.outbox import Webhook
from fluxedit.jobs.store import JobStore
from fluxedit.runtime import open_runtime
from fluxedit.webhooks.deliverer import Deliverer
from fluxedit.webhooks.sender import Delivery, post

# The newest migration (src/fluxedit/jobs/migrations/versions/); test_cluster.py checks it too.
HEAD_REVISION = "0006"

MODEL = "blackforestlabs/flux-2/klein-4b/edit"
RETRY_S = 0.3
PROGRESS_S = 0.2
WEBHOOK_SETTINGS = {
    "fetch_allow": '["127.0.0.1"]',
    "webhook_retry_s": f"[{RETRY_S}, {RETRY_S}, {RETRY_S}]",
    "webhook_progress_interval_s": str(PROGRESS_S),
    "webhook_poll_interval_s": "0.1",
    "webhook_timeout_s": "5",
}
WEBHOOK_KEY_LINE = re.compile(r"its webhook signing secret: (whsec_\S+)\)")


def _reference() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (30, 160, 90)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def edit_body(steps: int = 2, **extra) -> dict:
    return {
        "prompt": "make it blue",
        "image_urls": [_reference()],
        "image_size": {"width": 64, "height": 64},
        "num_inference_steps": steps,
        **extra,
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = LiveServer(tmp_path_factory.mktemp("webhooks"), ("--model", "tiny"), dict(WEBHOOK_SETTINGS)).start()
    yield live
    live.stop()


def submit(server: LiveServer, body: dict, params: dict | None = None) -> str:
    with server.client() as http:
        answer = http.post(f"/v1/models/{MODEL}", json=body, params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()["request_id"]


def deliveries(server: LiveServer, request_id: str) -> dict:
    with server.client() as http:
        answer = http.get(f"/v1/requests/{request_id}/webhooks")
    assert answer.status_code == 200, answer.text
    return answer.json()


def wait_settled(server: LiveServer, request_id: str, timeout_s: float = 120) -> dict:
    """The request's webhook log once it is finished and no event is pending any more."""
    server.wait_for(request_id, {"completed", "failed", "cancelled"})
    deadline = time.monotonic() + timeout_s
    while True:
        log = deliveries(server, request_id)
        if all(e["state"] != "pending" for e in log["events"]):
            return log
        assert time.monotonic() < deadline, log
        time.sleep(0.05)


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def without_query(url: str) -> str:
    return url.split("?", 1)[0]


# --- what arrives -------------------------------------------------------------------------


def test_a_completed_request_posts_a_signed_event_with_its_result_body(server, webhook_receiver):
    rid = submit(server, edit_body(), params={"webhook": webhook_receiver.url("/done")})
    [hook] = webhook_receiver.wait_for("/done", lambda hooks: len(hooks) >= 1)

    with server.client() as http:
        secret = http.get("/v1/webhooks/secret").json()["secret"]
        result = http.get(f"/v1/requests/{rid}/result").json()
    assert secret == WEBHOOK_KEY_LINE.search(server.log).group(1), "serve printed the same secret"
    payload = WebhookReceiver.verify(hook, secret)
    with pytest.raises(Exception, match="signature"):
        WebhookReceiver.verify(Hook(hook.path, hook.headers, hook.body + b" ", 0, 200), secret)

    assert payload["type"] == "request.completed"
    assert hook.id.startswith("msg_")
    assert abs(when(payload["timestamp"]) - when(result["finished_at"])) < timedelta(seconds=5)
    data = payload["data"]
    # Exactly the result body; only the signed image URLs' expiry differs between two renders.
    assert [without_query(u) for u in data["output"]["images"]] == [
        without_query(u) for u in result["output"]["images"]
    ]
    assert {**data, "output": None} == {**result, "output": None}
    assert data["status"] == "completed" and data["result_url"].startswith(server.base_url)
    assert data["webhook"] == webhook_receiver.url("/done") and data["webhook_events_filter"] == ["completed"]
    assert "webhook" not in data["input"], "not a model input"


def test_events_are_sent_as_filtered_in_order(server, webhook_receiver):
    every = submit(
        server,
        edit_body(
            steps=40, webhook=webhook_receiver.url("/every"), webhook_events_filter=["completed", "start", "progress"]
        ),
    )
    progress_only = submit(
        server, edit_body(steps=40, webhook=webhook_receiver.url("/progress"), webhook_events_filter=["progress"])
    )
    default = submit(server, edit_body(webhook=webhook_receiver.url("/default")))
    for rid in (every, progress_only, default):
        wait_settled(server, rid)

    types = [h.json["type"] for h in webhook_receiver.hooks("/every")]
    assert types[0] == "request.started" and types[-1] == "request.completed"
    assert set(types[1:-1]) == {"request.progress"} and len(types) >= 4
    progress = [h.json for h in webhook_receiver.hooks("/every") if h.json["type"] == "request.progress"]
    steps = [p["data"]["progress"]["step"] for p in progress]
    assert steps == sorted(steps) and all(p["data"]["status"] == "in_progress" for p in progress)
    times = [when(p["timestamp"]) for p in progress]
    assert all(b - a >= timedelta(seconds=PROGRESS_S) for a, b in zip(times, times[1:])), "at most one per interval"
    assert [e["type"] for e in deliveries(server, every)["events"] if e["state"] == "delivered"] == types

    assert {h.json["type"] for h in webhook_receiver.hooks("/progress")} == {"request.progress"}
    assert [h.json["type"] for h in webhook_receiver.hooks("/default")] == ["request.completed"]
    with server.client() as http:
        status = http.get(f"/v1/requests/{every}/status").json()
    assert status["webhook_events_filter"] == ["start", "progress", "completed"]


def test_a_cancelled_request_reports_its_end(server, webhook_receiver):
    slow = submit(server, edit_body(steps=100))
    queued = submit(server, edit_body(webhook=webhook_receiver.url("/cancelled")))
    with server.client() as http:
        assert http.post(f"/v1/requests/{queued}/cancel").json()["status"] == "cancelled"
        http.post(f"/v1/requests/{slow}/cancel")
    [hook] = webhook_receiver.wait_for("/cancelled", lambda hooks: len(hooks) >= 1)
    assert hook.json["type"] == "request.cancelled" and hook.json["data"]["status"] == "cancelled"


# --- retries --------------------------------------------------------------------------------


def delivery_counts(server: LiveServer) -> dict[str, float]:
    """fluxedit_webhook_deliveries_total by result, from GET /metrics (this server's only webhooks at the time)."""
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    return {
        sample.labels["result"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "fluxedit_webhook_deliveries_total"
    }


def test_a_receiver_failing_twice_gets_the_third_try_on_the_schedule(server, webhook_receiver):
    webhook_receiver.answer("/flaky", 500, 500)
    before = delivery_counts(server)
    rid = submit(server, edit_body(webhook=webhook_receiver.url("/flaky")))
    log = wait_settled(server, rid)
    after = delivery_counts(server)
    assert after.get("retry", 0) - before.get("retry", 0) == 2, (before, after)
    assert after.get("delivered", 0) - before.get("delivered", 0) == 1, (before, after)

    hooks = webhook_receiver.hooks("/flaky")
    assert [h.status for h in hooks] == [500, 500, 200]
    assert len({h.id for h in hooks}) == 1, "one webhook-id on every try"
    [event] = log["events"]
    assert event["state"] == "delivered"
    attempts = event["attempts"]
    assert [(a["number"], a["status_code"]) for a in attempts] == [(1, 500), (2, 500), (3, 200)]
    for failed, nxt in zip(attempts, attempts[1:]):
        assert when(failed["next_attempt_at"]) - when(failed["finished_at"]) == timedelta(seconds=RETRY_S)
        assert when(nxt["started_at"]) >= when(failed["next_attempt_at"]), "not before its time"
    assert attempts[-1]["next_attempt_at"] is None and "500" in attempts[0]["error"]


def test_410_gone_stops_the_retries(server, webhook_receiver):
    webhook_receiver.answer("/gone", 410, 410, 410)
    rid = submit(server, edit_body(webhook=webhook_receiver.url("/gone")))
    [event] = wait_settled(server, rid)["events"]
    assert event["state"] == "gone" and event["next_attempt_at"] is None
    assert [(a["status_code"], a["next_attempt_at"]) for a in event["attempts"]] == [(410, None)]
    # A later request to the same receiver is delivered; the gone one was not tried again.
    later = submit(server, edit_body(webhook=webhook_receiver.url("/after-gone")))
    wait_settled(server, later)
    time.sleep(3 * RETRY_S)
    assert len(webhook_receiver.hooks("/gone")) == 1


def test_every_try_failing_ends_failed_after_the_schedule(server, webhook_receiver):
    webhook_receiver.answer("/down", 503, 503, 503, 503)
    rid = submit(server, edit_body(webhook=webhook_receiver.url("/down")))
    [event] = wait_settled(server, rid)["events"]
    assert event["state"] == "failed"
    assert [a["status_code"] for a in event["attempts"]] == [503] * 4, "one try more than the schedule's delays"


# --- where webhooks may go --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "body", "field", "code", "words"),
    [
        ({"webhook": "http://10.1.2.3/hook"}, {}, "webhook", "input_forbidden", "10.1.2.3"),
        ({}, {"webhook": "http://169.254.169.254/latest"}, "webhook", "input_forbidden", "link-local"),
        ({}, {"webhook": "ftp://example.com/hook"}, "webhook", "input_forbidden", "http and https"),
        ({}, {"webhook": "http:///nohost"}, "webhook", "invalid_input", "host"),
        (
            {},
            {"webhook": "https://example.com/h", "webhook_events_filter": ["finish"]},
            "webhook_events_filter[0]",
            "invalid_input",
            "start",
        ),
        ({}, {"webhook_events_filter": ["start"]}, "webhook_events_filter", "invalid_input", "needs a webhook"),
        # Longer in the query than a request line carries (longer URLs go in the body)
        ({"webhook": "https://example.com/" + "a" * 2040}, {}, "webhook", "invalid_input", "2048"),
        (
            {"webhook": "https://a.example/h"},
            {"webhook": "https://b.example/h"},
            "webhook",
            "invalid_input",
            "different",
        ),
    ],
)
def test_a_webhook_that_cannot_be_used_is_a_422_at_submit(server, params, body, field, code, words):
    with server.client() as http:
        before = len(http.get("/v1/requests", params={"limit": 100}).json()["requests"])
        answer = http.post(f"/v1/models/{MODEL}", json=edit_body(**body), params=params)
        after = len(http.get("/v1/requests", params={"limit": 100}).json()["requests"])
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert (error["field"], error["code"]) == (field, code)
    assert words in error["message"]
    assert after == before, "no job was queued"


def test_openapi_documents_the_webhook_fields(server):
    with server.client() as http:
        spec = http.get("/openapi.json").json()
    operation = spec["paths"]["/v1/models/{model_id}"]["post"]
    assert "webhook" in {p["name"] for p in operation["parameters"]}
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("/EditInput") and {"webhook", "webhook_events_filter"} <= set(body["properties"])
    assert "webhook" not in spec["components"]["schemas"]["EditInput"]["properties"]
    assert {"/v1/webhooks/secret", "/v1/requests/{request_id}/webhooks"} <= set(spec["paths"])


def test_delivery_checks_the_address_it_connects_to(tmp_path, webhook_receiver, connections):
    """In-process: a name resolved by the deliverer is checked, and the connection pinned to that address."""
    port = int(webhook_receiver.url("/").rsplit(":", 1)[1].rstrip("/"))
    names = {"hooks.example": "127.0.0.1", "inside.example": "10.1.2.3"}
    settings = Settings(
        data_dir=tmp_path, fetch_allow=["127.0.0.1"], webhook_retry_s=[0.1], webhook_poll_interval_s=0.05
    )
    runtime = open_runtime(settings, ["tiny"], run_jobs=False)
    deliverer = Deliverer(runtime.outbox, runtime.render_webhook, settings, resolver=lambda host, _port: [names[host]])
    runtime.store.on_event(deliverer.wake)
    deliverer.start()
    try:
        ids = []
        for host in names:
            job = runtime.store.submit(
                "k",
                MODEL,
                edit_body(),
                max_queued=10,
                webhook=Webhook(f"http://{host}:{port}/pinned"),
                base_url="http://127.0.0.1/",
            )
            runtime.store.claim(job.id, "w", 60)
            runtime.store.fail(job.id, "w", "internal_error", "for the test")
            ids.append(job.id)
        events = {}
        deadline = time.monotonic() + 30
        while len(events) < 2 or any(e.state == "pending" for e, _ in events.values()):
            assert time.monotonic() < deadline, events
            events = {rid: runtime.outbox.events_for(rid)[0] for rid in ids}
            time.sleep(0.05)
    finally:
        deliverer.stop()
        runtime.close()
    pinned, refused = (events[rid] for rid in ids)
    assert pinned[0].state == "delivered"
    [hook] = webhook_receiver.hooks("/pinned")
    assert hook.headers["host"] == f"hooks.example:{port}" and hook.json["type"] == "request.failed"
    assert refused[0].state == "refused" and refused[0].next_attempt_at is None
    [attempt] = refused[1]
    assert "10.1.2.3" in attempt.error and attempt.next_attempt_at is None
    assert all(address[0] == "127.0.0.1" for address in connections if isinstance(address, tuple))
    assert "hooks.example" not in connections.lookups and "inside.example" not in connections.lookups


def test_post_refuses_before_connecting(connections):
    outcome = post(
        "http://inside.example/hook", Delivery(b"{}"), allow=[], timeout_s=1, resolver=lambda host, port: ["10.1.2.3"]
    )
    assert outcome.kind == "refused" and "10.1.2.3" in outcome.error
    assert list(connections) == []


# --- durability -----------------------------------------------------------------------------


def test_kill_9_with_deliveries_pending_then_restart_delivers_all(start_server, tmp_path):
    with WebhookReceiver() as receiver:
        receiver.answer_all(503)
        settings = {**WEBHOOK_SETTINGS, "webhook_retry_s": "[" + ", ".join(["0.2"] * 200) + "]", "lease_s": "2"}
        live = start_server("--model", "tiny", **settings)
        body = {"webhook": receiver.url("/durable"), "webhook_events_filter": ["start", "completed"]}
        fast = [submit(live, edit_body(**body)) for _ in range(3)]
        slow = submit(live, edit_body(steps=100, **body))
        for rid in fast:
            live.wait_for(rid, {"completed"})
        live.wait_for(slow, {"in_progress"})
        receiver.wait_for("/durable", lambda hooks: len(hooks) >= 3)
        live.kill9()

        receiver.answer_all(200)
        live.start()
        logs = {rid: wait_settled(live, rid, timeout_s=180) for rid in [*fast, slow]}

        events = [e for log in logs.values() for e in log["events"]]
        assert {e["state"] for e in events} == {"delivered"}
        assert len(events) >= 8, "started and completed for each request (the slow one started twice)"
        delivered = [h for h in receiver.hooks("/durable") if h.ok]
        assert sorted({h.id for h in delivered}) == sorted(e["id"] for e in events), "each event, once after dedupe"
        for rid, log in logs.items():
            first_arrivals = list(dict.fromkeys(h.id for h in delivered if h.json["data"]["request_id"] == rid))
            assert first_arrivals == [e["id"] for e in log["events"]], "in order per request"
        with live.client() as http:
            secret = http.get("/v1/webhooks/secret").json()["secret"]
        assert all(WebhookReceiver.verify(h, secret) for h in delivered)


# --- secrets and the schema ---------------------------------------------------------------------


def test_keys_create_prints_the_webhook_secret_beside_the_key(server):
    created = run_cli("keys", "create", "--name", "hooks", data_dir=server.data_dir)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    secret = re.search(r"webhook signing secret: (whsec_\S+)", created.stderr).group(1)
    assert key.startswith("fe_")
    with server.client(key) as http:
        assert http.get("/v1/webhooks/secret").json() == {"secret": secret}
    with server.client() as http:
        assert http.get("/v1/webhooks/secret").json()["secret"] != secret, "each key its own"


def _database_at_0001(url: str) -> None:
    """A database as release 0001 made it, with one key, a finished job and a queued one."""
    from alembic import command
    from alembic.config import Config

    engine = open_database(url)
    with engine.begin() as conn:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
        conn.execute(
            sa.text(
                "INSERT INTO api_keys (id, name, prefix, secret_sha256, created_at) "
                "VALUES ('k1', 'old', 'fe_x', 'abc', CURRENT_TIMESTAMP)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO jobs (id, key_id, model_id, state, input, created_at, attempts, cancel_requested) "
                "VALUES ('j1', 'k1', 'm', 'completed', '{\"prompt\": \"p\"}', CURRENT_TIMESTAMP, 1, false)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO jobs (id, key_id, model_id, state, input, created_at, attempts, cancel_requested) "
                "VALUES ('j2', 'k1', 'm', 'in_queue', '{\"prompt\": \"q\"}', CURRENT_TIMESTAMP, 0, false)"
            )
        )
    engine.dispose()


def _assert_upgraded(url: str) -> None:
    upgrade_database(url)
    upgrade_database(url)  # a second start finds it current
    keys, store = KeyStore(url), JobStore(url)
    try:
        secret = keys.webhook_secret("k1")
        assert secret.startswith("whsec_") and len(secret) > 40
        job = store.get("j1")
        assert job.input == {"prompt": "p"} and job.webhook_url is None
        assert store.queued_count("m") == 1, "the queue counted at the upgrade"
        made = store.submit(
            "k1", "m", {"prompt": "new"}, max_queued=5, webhook=Webhook("https://h.example/", format="bfl", secret="s")
        )
        assert (made.webhook_url, made.webhook_format, made.webhook_secret) == ("https://h.example/", "bfl", "s")
        assert store.queued_count("m") == store.queued_count_for_key("k1") == 2, "and kept since"
        indexes = {index["name"] for index in sa.inspect(store.engine).get_indexes("jobs")}
        assert {"ix_jobs_queue_key", "ix_jobs_key_started"} <= indexes, "the queue's counting indexes"
    finally:
        keys.dispose()
        store.dispose()


def test_upgrade_of_a_sqlite_database_made_by_the_0001_schema(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    _database_at_0001(url)
    _assert_upgraded(url)


def test_upgrade_of_a_postgres_database_made_by_the_0001_schema(new_postgres_database):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    url = new_postgres_database()
    _database_at_0001(url)
    _assert_upgraded(url)
    assert current_revision(url) == HEAD_REVISION
    engine = open_database(url)
    try:
        with engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    finally:
        engine.dispose()
    assert differences == [], "the tables differ from the migrations"
