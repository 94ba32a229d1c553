"""Per-key limits, set with `fluxedit keys`, enforced by a real `fluxedit serve`."""

from __future__ import annotations

import time

import httpx
import pytest

from _fixtures_images import png_bytes
from _fixtures_server import run_cli
from fluxedit.jobs.key_cache import KeyCache
from fluxedit.jobs.keys import KeyStore
from fluxedit.jobs.limits_cache import LimitsCache

PRO = "blackforestlabs/flux-2/pro/edit"


def create_key(data_dir, name: str, *flags: str) -> str:
    done = run_cli("keys", "create", "--name", name, *flags, data_dir=data_dir)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def queue_only(tmp_path, start_server, image_server):
    """A server that only queues (no workers), with key A limited to 10 queued jobs and key B unlimited."""
    image_server.add("/limits-ref.png", png_bytes((96, 64)), "image/png")
    a = create_key(tmp_path, "batch", "--max-queued", "10")
    b = create_key(tmp_path, "person")
    server = start_server("--model", "tiny", "--no-workers", data_dir=tmp_path, fetch_allow='["127.0.0.1"]')
    return server, a, b


def submit(server, key: str, image_server) -> httpx.Response:
    payload = {"prompt": "x", "image_urls": [image_server.url("/limits-ref.png")], "image_size": "square"}
    with server.client(key) as http:
        return http.post(f"/v1/models/{PRO}", json=payload)


def test_the_eleventh_queued_job_of_a_key_limited_to_ten_is_a_429(queue_only, image_server) -> None:
    server, a, b = queue_only
    assert [submit(server, a, image_server).status_code for _ in range(10)] == [200] * 10
    refused = submit(server, a, image_server)
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"]["code"] == "key_limit_reached"
    assert "max_queued=10" in refused.json()["error"]["message"]
    # Another key is not touched by A's limit.
    assert submit(server, b, image_server).status_code == 200


def test_keys_list_shows_limits_and_update_changes_them(tmp_path) -> None:
    create_key(tmp_path, "batch", "--max-queued", "10", "--priority", "-1")
    listed = run_cli("keys", "list", data_dir=tmp_path).stdout
    assert "max_queued=10" in listed and "priority=-1" in listed
    key_id = listed.split()[0]
    updated = run_cli("keys", "update", key_id, "--requests-per-minute", "30", data_dir=tmp_path)
    assert updated.returncode == 0, updated.stderr
    listed = run_cli("keys", "list", data_dir=tmp_path).stdout
    assert "max_queued=10" in listed and "requests_per_minute=30" in listed
    bad = run_cli("keys", "update", key_id, "--max-running", "0", data_dir=tmp_path)
    assert bad.returncode == 2 and "--max-running must be at least 1" in bad.stderr


def test_requests_per_minute_answers_429_naming_the_limit(tmp_path, start_server, image_server) -> None:
    image_server.add("/limits-ref.png", png_bytes((96, 64)), "image/png")
    a = create_key(tmp_path, "chatty", "--requests-per-minute", "2")
    b = create_key(tmp_path, "other")
    server = start_server("--model", "tiny", "--no-workers", data_dir=tmp_path, fetch_allow='["127.0.0.1"]')
    assert [submit(server, a, image_server).status_code for _ in range(2)] == [200, 200]
    refused = submit(server, a, image_server)
    assert refused.status_code == 429 and "requests_per_minute=2" in refused.json()["error"]["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert submit(server, b, image_server).status_code == 200


def test_a_revoked_key_harms_no_other_keys_jobs(tmp_path, start_server, image_server) -> None:
    image_server.add("/limits-ref.png", png_bytes((96, 64)), "image/png")
    a = create_key(tmp_path, "leaving")
    b = create_key(tmp_path, "staying")
    server = start_server("--model", "tiny", data_dir=tmp_path, fetch_allow='["127.0.0.1"]')
    assert all(submit(server, a, image_server).status_code == 200 for _ in range(3))
    key_id = run_cli("keys", "list", data_dir=tmp_path).stdout.split()[0]
    assert run_cli("keys", "revoke", key_id, data_dir=tmp_path).returncode == 0
    # The server trusts a key it verified for FLUXEDIT_KEY_CACHE_S (2 s): refused within that.
    deadline = time.monotonic() + 2 + 5  # + room for a loaded machine
    while (refused := submit(server, a, image_server)).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert refused.status_code == 401, refused.text
    answer = submit(server, b, image_server)
    assert answer.status_code == 200
    assert server.wait_for(answer.json()["request_id"], {"completed", "failed"}, key=b)["status"] == "completed"


def test_a_verified_key_is_trusted_for_the_cache_time_then_read_again(tmp_path) -> None:
    keys = KeyStore(f"sqlite:///{tmp_path}/keys.db")
    keys.create_schema()
    now = [100.0]
    cache = KeyCache(keys.verify, ttl_s=2.0, clock=lambda: now[0])
    key_id, secret = keys.create("poller")
    try:
        assert cache.cached(secret) is None, "never verified: nothing to answer without a read"
        assert cache.verify(secret) == key_id
        keys.revoke(key_id)
        now[0] += 1.9
        assert cache.verify(secret) == key_id  # within the 2 s it is trusted without a read
        assert cache.cached(secret) == key_id
        now[0] += 0.2
        assert cache.cached(secret) is None
        assert cache.verify(secret) is None  # past them, the revocation is seen
        assert cache.verify("fe_not-a-key") is None and cache.verify("") is None
    finally:
        keys.dispose()


def test_a_keys_limits_are_read_again_only_after_the_cache_time(tmp_path) -> None:
    keys = KeyStore(f"sqlite:///{tmp_path}/keys.db")
    keys.create_schema()
    now = [100.0]
    reads: list[str] = []

    def read(key_id: str):
        reads.append(key_id)
        return keys.limits_of(key_id)

    cache = LimitsCache(read, ttl_s=2.0, clock=lambda: now[0])
    key_id, _ = keys.create("batch")
    try:
        keys.set_limits(key_id, max_queued=10)
        assert cache.limits_of(key_id).max_queued == 10
        keys.set_limits(key_id, max_queued=50)
        now[0] += 1.9
        assert cache.limits_of(key_id).max_queued == 10  # within the 2 s: no read, the old limit
        now[0] += 0.2
        assert cache.limits_of(key_id).max_queued == 50  # past them, the change is seen
        assert reads == [key_id, key_id]
        assert LimitsCache(keys.limits_of, ttl_s=0).limits_of(key_id).max_queued == 50  # 0: no cache
    finally:
        keys.dispose()


def test_a_limit_raised_with_keys_update_holds_on_a_running_server_within_the_cache_time(
    tmp_path, start_server, image_server
) -> None:
    image_server.add("/limits-ref.png", png_bytes((96, 64)), "image/png")
    a = create_key(tmp_path, "batch", "--max-queued", "1")
    server = start_server("--model", "tiny", "--no-workers", data_dir=tmp_path, fetch_allow='["127.0.0.1"]')
    assert [submit(server, a, image_server).status_code for _ in range(2)] == [200, 429]
    key_id = run_cli("keys", "list", data_dir=tmp_path).stdout.split()[0]
    assert run_cli("keys", "update", key_id, "--max-queued", "5", data_dir=tmp_path).returncode == 0
    # The server reads a key's limits at most FLUXEDIT_KEY_CACHE_S (2 s) ago: the new one holds within that.
    deadline = time.monotonic() + 2 + 5  # + room for a loaded machine
    while (answer := submit(server, a, image_server)).status_code == 429 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert answer.status_code == 200, answer.text


def test_the_caches_are_bounded_in_entries() -> None:
    from fluxedit.jobs.ttl_cache import TtlCache

    cache = TtlCache(ttl_s=60.0, max_entries=3)
    for n in range(10):
        cache.put(f"key{n}", n, stamp=cache.stamp())
        assert cache.get(f"key{n}") == n
        assert sum(cache.get(f"key{m}") is not None for m in range(n + 1)) <= 3
