"""Fair scheduling: round-robin across keys within a model, per-key priority and max_running."""

from __future__ import annotations

import random
from datetime import datetime

from fluxedit.jobs.fairness import Queued, fair_order
from fluxedit.jobs.keys import KeyStore
from fluxedit.jobs.store import JobStore

MODEL = "blackforestlabs/flux-2/klein-4b/edit"
INPUT = {"prompt": "x", "image_urls": ["https://example.com/a.png"]}


def queue(store: JobStore, key: str, n: int) -> list[str]:
    return [store.submit(key, MODEL, INPUT, max_queued=1000).id for _ in range(n)]


def claim_order(store: JobStore, n: int, **kw) -> list[str]:
    order = []
    for _ in range(n):
        job = store.claim_next([MODEL], "w1", 60, **kw)
        if job is None:
            break
        order.append(job.key_id)
    return order


def test_a_key_with_one_job_goes_among_the_next_two_after_a_key_with_twenty(job_store: JobStore) -> None:
    a_jobs = queue(job_store, "key-a", 20)
    (b_job,) = queue(job_store, "key-b", 1)
    assert job_store.queue_position(job_store.get(b_job)) <= 1
    first, second = job_store.claim_next([MODEL], "w1", 60), job_store.claim_next([MODEL], "w1", 60)
    assert b_job in (first.id, second.id)
    assert first.id == a_jobs[0]  # oldest first within a key


def test_queue_position_tells_the_order_jobs_start_in(job_store: JobStore) -> None:
    jobs = queue(job_store, "key-a", 3) + queue(job_store, "key-b", 2) + queue(job_store, "key-c", 1)
    told = {job_id: job_store.queue_position(job_store.get(job_id)) for job_id in jobs}
    started = [job_store.claim_next([MODEL], "w1", 60).id for _ in jobs]
    assert [started.index(job_id) for job_id in jobs] == [told[job_id] for job_id in jobs]
    assert [job_store.get(j).key_id for j in started] == ["key-a", "key-b", "key-c", "key-a", "key-b", "key-a"]


def test_a_pages_positions_read_at_once_are_each_jobs_own(job_store: JobStore) -> None:
    page = [job_store.get(job_id) for job_id in queue(job_store, "key-a", 3) + queue(job_store, "key-b", 2)]
    assert job_store.queue_positions(page) == {job.id: job_store.queue_position(job) for job in page}
    assert sorted(job_store.queue_positions(page).values()) == [0, 1, 2, 3, 4]


def test_one_jobs_counted_position_agrees_with_the_whole_fair_order(database_url: str) -> None:
    # Keys of two priorities, one capped at one running job, some served before, some never:
    # every queued job's own position (counted, each status poll) is its place in the order.
    store = JobStore(database_url)
    store.create_schema()
    keys = KeyStore(store.engine)
    names = [keys.create(name)[0] for name in ("a", "b", "c", "d", "e")]
    keys.set_limits(names[0], priority=3)
    keys.set_limits(names[1], max_running=1)
    rng = random.Random(7)
    for round_ in range(6):
        for _ in range(8):
            queue(store, rng.choice(names), 1)
        for _ in range(rng.randrange(1, 4)):  # some start (and so are served recently); some end
            job = store.claim_next([MODEL], "w1", 60)
            if job is not None and rng.random() < 0.6:
                store.fail(job.id, "w1", "x", "done with it")
        queued = [store.get(job_id) for job_id, _ in store.queued_jobs()]
        whole = store.queue_positions(queued)
        assert {job.id: store.queue_position(job) for job in queued} == whole, f"round {round_}"
    store.dispose()


def test_priority_goes_first_and_max_running_holds_a_key_back(database_url: str) -> None:
    store, keys = JobStore(database_url), None
    store.create_schema()
    keys = KeyStore(store.engine)
    fast, _ = keys.create("fast")
    capped, _ = keys.create("capped")
    keys.set_limits(fast, priority=5)
    keys.set_limits(capped, max_running=1)
    queue(store, capped, 3)
    queue(store, fast, 2)
    assert claim_order(store, 5) == [fast, fast, capped]  # then capped waits for its running job
    store.dispose()


def test_default_max_running_from_settings_applies_to_keys_without_their_own(job_store: JobStore) -> None:
    queue(job_store, "key-a", 3)
    assert claim_order(job_store, 3, default_max_running=2) == ["key-a", "key-a"]


def test_within_a_round_the_key_served_least_recently_goes_first() -> None:
    queued = [Queued(1, "a"), Queued(2, "b"), Queued(3, "a")]
    recently = {"a": datetime(2026, 1, 1, 12, 0), "b": datetime(2026, 1, 1, 11, 0)}
    assert [q.seq for q in fair_order(queued, recently, {})] == [2, 1, 3]
    assert [q.seq for q in fair_order(queued, {}, {})] == [1, 2, 3]


def test_embedded_server_runs_the_other_keys_job_among_the_next_two(tmp_path, start_server, image_server) -> None:
    """A real `fluxedit serve`: key A queues 20 jobs, then key B one; B's starts among the next two."""
    from _fixtures_images import png_bytes
    from _fixtures_server import run_cli

    image_server.add("/fair-ref.png", png_bytes((96, 64)), "image/png")
    a, b = (run_cli("keys", "create", "--name", n, data_dir=tmp_path).stdout.strip() for n in ("a", "b"))
    server = start_server("--model", "tiny", data_dir=tmp_path, fetch_allow='["127.0.0.1"]')
    payload = {"prompt": "x", "image_urls": [image_server.url("/fair-ref.png")], "image_size": "square"}
    payload["num_inference_steps"] = 8
    with server.client(a) as http:
        a_ids = [http.post(f"/v1/models/{MODEL}", json=payload).json()["request_id"] for _ in range(20)]
    with server.client(b) as http:
        b_id = http.post(f"/v1/models/{MODEL}", json=payload).json()["request_id"]
        b_done = server.wait_for(b_id, {"completed"}, key=b)
    with server.client(a) as http:
        a_jobs = [http.get(f"/v1/requests/{i}/status").json() for i in a_ids]
    submitted = datetime.fromisoformat(b_done["created_at"])
    # A's jobs that started after B's was queued, and before it: at most one.
    ahead = [
        j
        for j in a_jobs
        if j["started_at"]
        and submitted < datetime.fromisoformat(j["started_at"]) < datetime.fromisoformat(b_done["started_at"])
    ]
    assert len(ahead) <= 1
    # Not vacuous: A still had jobs waiting when B's was queued.
    waiting = [j for j in a_jobs if not j["started_at"] or datetime.fromisoformat(j["started_at"]) > submitted]
    assert len(waiting) >= 2
