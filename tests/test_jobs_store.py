"""The job store against real SQLite and real PostgreSQL: states, queue, leases, keys."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from fluxedit.errors import InvalidInput, NotFound
from fluxedit.jobs.db import api_keys_table
from fluxedit.jobs.errors import IdempotencyConflict, JobConflict, LeaseLost, QueueFull
from fluxedit.jobs.keys import KeyStore
from fluxedit.jobs.state import JobState
from fluxedit.jobs.store import JobStore

SRC = str(Path(__file__).resolve().parents[1] / "src")
MODEL = "blackforestlabs/flux-2/klein-4b/edit"
OTHER_MODEL = "blackforestlabs/flux-2/dev/edit"


def edit_input(prompt: str = "make it blue") -> dict:
    return {"prompt": prompt, "image_urls": ["https://example.com/a.png"], "seed": 0}


def submit(store: JobStore, key: str = "key-a", model: str = MODEL, **kw) -> str:
    return store.submit(key, model, edit_input(kw.pop("prompt", "p")), max_queued=kw.pop("max_queued", 1000), **kw).id


def test_job_runs_through_its_states_once(job_store: JobStore) -> None:
    job = job_store.submit("key-a", MODEL, edit_input(), max_queued=10)
    assert job.state is JobState.in_queue
    assert job.attempts == 0 and job.started_at is None
    assert job.created_at.tzinfo is not None
    assert abs(job.created_at - datetime.now(UTC)) < timedelta(hours=1)

    claimed = job_store.claim_next([MODEL], "worker-1", lease_s=60)
    assert claimed is not None and claimed.id == job.id
    assert claimed.state is JobState.in_progress
    assert claimed.attempts == 1 and claimed.worker_id == "worker-1"
    assert claimed.started_at is not None and claimed.lease_expires_at > claimed.started_at
    assert job_store.claim_next([MODEL], "worker-2", lease_s=60) is None
    assert job_store.claim(job.id, "worker-2", lease_s=60) is None

    assert job_store.heartbeat(job.id, "worker-1", 60, step=2, total=4) is False
    running = job_store.get(job.id)
    assert (running.step, running.total_steps) == (2, 4)

    timings = {"queue_s": 0.1, "inference_s": 1.0, "total_s": 1.2}
    assert job_store.complete(job.id, "worker-1", ["outputs/x/0.jpg"], 7, 512, 384, timings) is True
    # Exactly once: no second completion, no failure or cancel after it.
    assert job_store.complete(job.id, "worker-1", ["outputs/x/other.jpg"], 8, 64, 64, {}) is False
    assert job_store.fail(job.id, "worker-1", "internal_error", "boom") is False
    assert job_store.finish_cancelled(job.id, "worker-1") is False

    done = job_store.get(job.id)
    assert done.state is JobState.completed
    assert done.outputs == ["outputs/x/0.jpg"]
    assert (done.seed, done.width, done.height) == (7, 512, 384)
    assert done.timings == timings
    assert done.finished_at >= done.started_at
    assert done.input == edit_input()


def test_failure_keeps_code_message_and_index(job_store: JobStore) -> None:
    job_id = submit(job_store)
    job_store.claim(job_id, "w", 60)
    assert job_store.fail(job_id, "other-worker", "x", "not mine") is False
    assert job_store.fail(job_id, "w", "input_unreachable", "image_urls[1] could not be fetched.", index=1)
    job = job_store.get(job_id)
    assert job.state is JobState.failed
    assert (job.error_code, job.error_message, job.error_index) == (
        "input_unreachable",
        "image_urls[1] could not be fetched.",
        1,
    )


def test_cancel_queued_job_is_immediate_and_never_runs(job_store: JobStore) -> None:
    job_id = submit(job_store)
    cancelled = job_store.cancel(job_id, "key-a")
    assert cancelled.state is JobState.cancelled and cancelled.finished_at is not None
    assert job_store.claim_next([MODEL], "w", 60) is None
    assert job_store.claim(job_id, "w", 60) is None


def test_cancel_running_job_is_seen_by_its_worker(job_store: JobStore) -> None:
    job_id = submit(job_store)
    job_store.claim_next([MODEL], "w", 60)
    requested = job_store.cancel(job_id, "key-a")
    assert requested.state is JobState.in_progress and requested.cancel_requested
    assert job_store.heartbeat(job_id, "w", 60, step=1, total=4) is True
    assert job_store.finish_cancelled(job_id, "w") is True
    assert job_store.get(job_id).state is JobState.cancelled


def test_cancel_finished_job_conflicts_with_its_state(job_store: JobStore) -> None:
    job_id = submit(job_store)
    job_store.claim(job_id, "w", 60)
    job_store.complete(job_id, "w", [], 0, 64, 64, None)
    with pytest.raises(JobConflict) as info:
        job_store.cancel(job_id, "key-a")
    assert info.value.code == "already_finished" and info.value.status == 409
    assert info.value.state is JobState.completed
    assert job_store.get(job_id).state is JobState.completed


def test_cancel_other_keys_job_is_not_found(job_store: JobStore) -> None:
    job_id = submit(job_store, key="key-a")
    with pytest.raises(NotFound):
        job_store.cancel(job_id, "key-b")
    assert job_store.get(job_id).state is JobState.in_queue


def test_queue_is_fifo_per_model_and_positions_fall(job_store: JobStore) -> None:
    first, second, third = (submit(job_store, prompt=f"p{i}") for i in range(3))
    other = submit(job_store, model=OTHER_MODEL)
    positions = [job_store.queue_position(job_store.get(i)) for i in (first, second, third)]
    assert positions == [0, 1, 2]
    assert job_store.queue_position(job_store.get(other)) == 0
    assert job_store.queued_count(MODEL) == 3
    assert job_store.queued_counts() == {MODEL: 3, OTHER_MODEL: 1}

    assert job_store.claim_next([MODEL], "w", 60).id == first
    assert job_store.queue_position(job_store.get(second)) == 0
    assert job_store.queue_position(job_store.get(third)) == 1
    job_store.cancel(second, "key-a")
    assert job_store.queue_position(job_store.get(third)) == 0
    assert job_store.claim_next([MODEL, OTHER_MODEL], "w", 60).id == third
    assert job_store.claim_next([MODEL, OTHER_MODEL], "w", 60).id == other
    assert job_store.queued_count(MODEL) == 0


def test_full_queue_refuses_with_retry_hint(job_store: JobStore) -> None:
    submit(job_store, max_queued=2)
    submit(job_store, max_queued=2)
    with pytest.raises(QueueFull) as info:
        submit(job_store, max_queued=2)
    assert info.value.code == "queue_full" and info.value.status == 429
    assert info.value.retry_after_s >= 1
    assert MODEL in info.value.message
    assert job_store.queued_count(MODEL) == 2
    submit(job_store, model=OTHER_MODEL, max_queued=2)  # other models have their own queue
    job_store.claim_next([MODEL], "w", 60)
    submit(job_store, max_queued=2)  # a slot freed up
    assert job_store.queued_count(MODEL) == 2


def test_idempotency_key_returns_the_same_job(job_store: JobStore) -> None:
    first = job_store.submit("key-a", MODEL, edit_input(), max_queued=10, idempotency_key="req-1")
    again = job_store.submit("key-a", MODEL, edit_input(), max_queued=10, idempotency_key="req-1")
    assert again.id == first.id
    assert job_store.queued_count(MODEL) == 1
    # Another key may use the same idempotency key for its own job.
    theirs = job_store.submit("key-b", MODEL, edit_input(), max_queued=10, idempotency_key="req-1")
    assert theirs.id != first.id
    with pytest.raises(IdempotencyConflict):
        job_store.submit("key-a", MODEL, edit_input("something else"), max_queued=10, idempotency_key="req-1")
    # A retry is answered even when the queue is now full.
    assert job_store.submit("key-a", MODEL, edit_input(), max_queued=1, idempotency_key="req-1").id == first.id


def test_an_idempotent_replay_of_a_re_signed_file_url_is_the_same_request(job_store: JobStore) -> None:
    def with_file(path: str, expires: int, sig: str) -> dict:
        return {"prompt": "p", "image_urls": [f"http://h/files/uploads/k/{path}?expires={expires}&sig={sig}"]}

    first = job_store.submit("key-a", MODEL, with_file("a.png", 1, "x"), max_queued=10, idempotency_key="f")
    again = job_store.submit("key-a", MODEL, with_file("a.png", 2, "y"), max_queued=10, idempotency_key="f")
    assert again.id == first.id
    with pytest.raises(IdempotencyConflict):
        job_store.submit("key-a", MODEL, with_file("b.png", 2, "y"), max_queued=10, idempotency_key="f")


def test_a_status_read_leaves_the_input_and_outputs_out(job_store: JobStore) -> None:
    big = {"prompt": "p", "image_urls": ["https://example.com/" + "x" * 100_000]}
    job = job_store.submit("key-a", MODEL, big, max_queued=10)
    status, position = job_store.get_status(job.id, "key-a")
    assert (status.id, status.seq, status.state, status.created_at) == (job.id, job.seq, job.state, job.created_at)
    assert status.input == {} and status.outputs == [] and position == 0
    assert job_store.get_status(job.id, "key-b") is None


def test_jobs_are_visible_only_to_their_key(job_store: JobStore) -> None:
    job_id = submit(job_store, key="key-a")
    assert job_store.get(job_id, "key-a").id == job_id
    assert job_store.get(job_id, "key-b") is None
    assert job_store.list_jobs("key-b", limit=10) == ([], None)
    assert job_store.get("0" * 32) is None


def test_list_pages_newest_first(job_store: JobStore) -> None:
    ids = [submit(job_store, prompt=f"p{i}") for i in range(5)]
    submit(job_store, key="key-b")
    seen, cursor, pages = [], None, 0
    while True:
        page, cursor = job_store.list_jobs("key-a", limit=2, cursor=cursor)
        seen += [j.id for j in page]
        pages += 1
        if cursor is None:
            break
    assert seen == ids[::-1]
    assert pages == 3
    with pytest.raises(InvalidInput) as info:
        job_store.list_jobs("key-a", limit=2, cursor="not-a-cursor")
    assert info.value.field == "cursor"


@pytest.mark.parametrize(
    "cursor",
    [
        "s-5",  # a negative seq
        "s 12",  # int() forgives whitespace, the encoder never writes it
        "s12 \n",
        "s1_0",  # int() forgives digit separators too
        "s012",  # a leading zero
        "s99999999999999999999",  # beyond any BIGINT seq
        "S3",
        "czE",  # "s1" in base64, a form this server does not issue
    ],
)
def test_list_refuses_a_cursor_this_server_did_not_make(job_store: JobStore, cursor: str) -> None:
    ids = [submit(job_store, prompt=f"p{i}") for i in range(3)]
    _, issued = job_store.list_jobs("key-a", limit=1)
    assert issued is not None and job_store.list_jobs("key-a", limit=5, cursor=issued)[0][0].id == ids[1]
    with pytest.raises(InvalidInput) as info:
        job_store.list_jobs("key-a", limit=5, cursor=cursor)
    assert info.value.field == "cursor" and "cursor" in info.value.message


CLAIMER = """
import json, sys, threading
from fluxedit.jobs.store import JobStore
url, name, models = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
store = JobStore(url)
claims, lock = [], threading.Lock()
def run(n):
    worker = f"{name}-t{n}"
    empty = 0
    while empty < 3:  # a None can mean "lost the race": make sure the queue is really empty
        job = store.claim_next(models, worker, 60)
        if job is None:
            empty += 1
            continue
        empty = 0
        ok = store.complete(job.id, worker, [], 0, 64, 64, None)
        with lock:
            claims.append([job.id, worker, ok])
threads = [threading.Thread(target=run, args=(n,)) for n in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(claims))
"""


def test_concurrent_claimers_take_each_job_exactly_once(job_store: JobStore, database_url: str) -> None:
    ids = {submit(job_store, model=(MODEL, OTHER_MODEL)[i % 2], prompt=f"p{i}") for i in range(200)}
    env = {**os.environ, "PYTHONPATH": SRC}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, database_url, f"proc{p}", models],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        for p, models in enumerate([f"{MODEL},{OTHER_MODEL}", f"{OTHER_MODEL},{MODEL}"])
    ]
    claims = []
    for proc in procs:
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0
        claims += json.loads(out)
    claimed_ids = [c[0] for c in claims]
    assert len(claimed_ids) == len(set(claimed_ids)) == 200
    assert set(claimed_ids) == ids
    assert all(ok for _, _, ok in claims)
    for job_id in ids:
        job = job_store.get(job_id)
        assert job.state is JobState.completed and job.attempts == 1


def test_expired_lease_requeues_then_fails_as_worker_lost(job_store: JobStore) -> None:
    job_id = submit(job_store)
    job = job_store.claim(job_id, "w1", lease_s=30)
    assert job_store.recover_expired(max_attempts=2) == []  # lease still valid
    later = job.lease_expires_at + timedelta(seconds=1)
    assert job_store.recover_expired(max_attempts=2, now=later) == [job_id]
    requeued = job_store.get(job_id)
    assert requeued.state is JobState.in_queue and requeued.attempts == 1 and requeued.worker_id is None
    # The old worker learns it lost the job and cannot finish it.
    with pytest.raises(LeaseLost):
        job_store.heartbeat(job_id, "w1", 30)
    assert job_store.complete(job_id, "w1", [], 0, 64, 64, None) is False

    second = job_store.claim_next([MODEL], "w2", lease_s=30)
    assert second.id == job_id and second.attempts == 2
    assert job_store.recover_expired(max_attempts=2, now=second.lease_expires_at + timedelta(seconds=1)) == [job_id]
    lost = job_store.get(job_id)
    assert lost.state is JobState.failed and lost.error_code == "worker_lost"
    assert "stopped responding" in lost.error_message


def test_expired_lease_of_cancelled_job_ends_cancelled(job_store: JobStore) -> None:
    job_id = submit(job_store)
    job = job_store.claim(job_id, "w1", lease_s=30)
    job_store.cancel(job_id, "key-a")
    job_store.recover_expired(max_attempts=3, now=job.lease_expires_at + timedelta(seconds=1))
    assert job_store.get(job_id).state is JobState.cancelled


def test_heartbeat_keeps_the_lease(job_store: JobStore) -> None:
    job_id = submit(job_store)
    job = job_store.claim(job_id, "w1", lease_s=30)
    job_store.heartbeat(job_id, "w1", lease_s=600)
    assert job_store.recover_expired(max_attempts=3, now=job.lease_expires_at + timedelta(seconds=1)) == []
    assert job_store.get(job_id).state is JobState.in_progress


KILLED_WORKER = """
import sys, time
from fluxedit.jobs.store import JobStore
store = JobStore(sys.argv[1])
job = store.claim_next([sys.argv[2]], "doomed-worker", 30)
print(job.id, flush=True)
time.sleep(600)
"""


def test_job_of_killed_worker_is_run_again(job_store: JobStore, database_url: str) -> None:
    job_id = submit(job_store)
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WORKER, database_url, MODEL],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": SRC},
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == job_id
    finally:
        proc.kill()  # SIGKILL: no chance to clean up
        proc.wait()
    stuck = job_store.get(job_id)
    assert stuck.state is JobState.in_progress and stuck.worker_id == "doomed-worker"
    assert job_store.recover_expired(3, now=stuck.lease_expires_at + timedelta(seconds=1)) == [job_id]
    again = job_store.claim_next([MODEL], "new-worker", 30)
    assert again.id == job_id and again.attempts == 2


def test_release_requeues_without_using_an_attempt(job_store: JobStore) -> None:
    first, second = submit(job_store), submit(job_store)
    job_store.claim(first, "w", 60)
    assert job_store.release(first, "w") is True
    released = job_store.get(first)
    assert released.state is JobState.in_queue and released.attempts == 0
    assert job_store.queue_position(released) == 0  # keeps its place ahead of later jobs
    assert job_store.claim_next([MODEL], "w", 60).id == first
    # A job whose cancel was requested ends cancelled instead.
    job_store.cancel(first, "key-a")
    assert job_store.release(first, "w") is True
    assert job_store.get(first).state is JobState.cancelled
    assert job_store.get(second).state is JobState.in_queue


def test_api_keys_are_hashed_at_rest(job_store: JobStore, database_url: str) -> None:
    keys = KeyStore(job_store.engine)
    key_id, secret = keys.create("laptop")
    other_id, other_secret = keys.create("ci")
    assert secret.startswith("fe_") and len(secret) > 40 and secret != other_secret
    assert keys.verify(secret) == key_id
    assert keys.verify(other_secret) == other_id
    assert keys.verify(secret + "x") is None
    assert keys.verify("") is None

    with job_store.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.select(api_keys_table))]
    stored = json.dumps(rows, default=str)
    assert secret not in stored and secret[12:] not in stored
    assert hashlib.sha256(secret.encode()).hexdigest() in stored
    if database_url.startswith("sqlite"):
        db_file = Path(database_url.removeprefix("sqlite:///"))
        raw = b"".join(p.read_bytes() for p in db_file.parent.glob(db_file.name + "*"))
        assert secret.encode() not in raw and secret[12:].encode() not in raw

    listed = {k.id: k for k in keys.list_keys()}
    assert listed[key_id].name == "laptop" and secret.startswith(listed[key_id].prefix)
    assert keys.count_active() == 2
    assert keys.revoke(listed[key_id].prefix) is True  # by the displayed prefix
    assert keys.verify(secret) is None
    assert keys.revoke(key_id) is False  # already revoked
    assert keys.revoke(other_id) is True  # by id
    assert keys.count_active() == 0
    assert all(not k.active for k in keys.list_keys())


def test_several_processes_may_create_the_schema_at_once(database_url: str) -> None:
    import threading

    stores = [JobStore(database_url) for _ in range(6)]
    errors: list[Exception] = []

    def create(store: JobStore) -> None:
        try:
            store.create_schema()
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert stores[0].get(submit(stores[0])).state is JobState.in_queue
    finally:
        for store in stores:
            store.dispose()


def test_keys_cli_on_a_fresh_data_dir(tmp_path: Path) -> None:
    from _fixtures_server import run_cli

    data_dir = tmp_path / "fresh"
    created = run_cli("keys", "create", "--name", "laptop", data_dir=data_dir)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("fe_") and "Traceback" not in created.stderr
    listed = run_cli("keys", "list", data_dir=data_dir)
    assert "laptop" in listed.stdout and "active" in listed.stdout and secret not in listed.stdout
    key_id = listed.stdout.split()[0]
    assert run_cli("keys", "revoke", key_id, data_dir=data_dir).returncode == 0
    assert KeyStore(f"sqlite:///{data_dir / 'fluxedit.db'}").verify(secret) is None


def test_queue_counters_follow_every_change_of_a_jobs_state(job_store: JobStore) -> None:
    # The counters a submit and a status poll read (kept by triggers) against a real count,
    # after each kind of change: submit, claim, finish, cancel, release, lease expiry, delete.
    def counters() -> dict:
        with job_store.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT model_id, key_id, queued FROM queue_counts WHERE queued <> 0"))
            return {(m, k): n for m, k, n in rows}

    def counted() -> dict:
        with job_store.engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT model_id, key_id, count(*) FROM jobs WHERE state = 'in_queue' GROUP BY model_id, key_id"
                )
            )
            return {(m, k): n for m, k, n in rows}

    for key, model in [("key-a", MODEL)] * 4 + [("key-b", MODEL)] * 2 + [("key-a", OTHER_MODEL)] * 2:
        submit(job_store, key, model)
    assert counters() == counted() == {(MODEL, "key-a"): 4, (MODEL, "key-b"): 2, (OTHER_MODEL, "key-a"): 2}
    running = [job_store.claim_next([MODEL], f"w{n}", lease_s=60) for n in range(4)]
    job_store.complete(running[0].id, "w0", [], None, None, None, None)
    job_store.fail(running[1].id, "w1", "x", "no")
    job_store.release(running[2].id, "w2")  # back to the queue
    job_store.cancel(submit(job_store, "key-b", OTHER_MODEL), "key-b")
    assert counters() == counted()
    job_store.recover_expired(max_attempts=5, now=datetime.now(UTC) + timedelta(hours=1))  # w3's job requeued
    assert counters() == counted() and sum(counted().values()) == 6
    with job_store.engine.begin() as conn:  # an operator's clean-up by hand
        conn.execute(sa.text("DELETE FROM jobs WHERE key_id = 'key-b'"))
    assert counters() == counted()
    assert job_store.queued_counts() == {MODEL: 3, OTHER_MODEL: 2}
    assert job_store.queued_count_for_key("key-a") == 5
