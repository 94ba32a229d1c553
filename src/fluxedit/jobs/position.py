"""One queued job's position in the fair order, counted without reading the queue behind it.

A status poll asks where one job stands. Ordering the whole queue (`fairness.fair_queue`)
costs the queue's length; this counts, by the same rule as `fairness.fair_order`, only
what can start before the job: the keys that have queued jobs (found by an index skip
scan, one seek per key), the caller's own older jobs, and of every other key at the
caller's priority at most as many jobs as there are rounds before the job's own. So a job
first in its key's line answers in a few index seeks with 100k jobs of other keys queued.
What remains linear is what must be counted: the caller's own older queued jobs, and the
whole queue of keys at a higher priority. A test holds it equal to `fair_queue`'s order.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from fluxedit.jobs.fairness import last_started, naive
from fluxedit.jobs.state import JobState

# Each key with in_queue jobs of the model (a loose index scan on ix_jobs_queue_key: the next
# key after the last one, a seek each), with its limits, its running jobs and, once, the
# caller's rank among its own queued jobs (this job is its rank-th oldest: round `rank`).
_KEYS = sa.text("""
WITH RECURSIVE queued_keys(key_id) AS (
    SELECT min(key_id) FROM jobs WHERE state = :queued AND model_id = :model_id
    UNION ALL
    SELECT (SELECT min(j.key_id) FROM jobs j
            WHERE j.state = :queued AND j.model_id = :model_id AND j.key_id > q.key_id)
    FROM queued_keys q WHERE q.key_id IS NOT NULL
),
running AS (SELECT key_id, count(*) AS n FROM jobs WHERE state = :running GROUP BY key_id)
SELECT q.key_id, l.priority, l.max_running, coalesce(r.n, 0) AS running,
       (SELECT count(*) FROM jobs
        WHERE state = :queued AND model_id = :model_id AND key_id = :key_id AND seq <= :seq) AS rank
FROM queued_keys q
LEFT JOIN key_limits l ON l.key_id = q.key_id
LEFT JOIN running r ON r.key_id = q.key_id
WHERE q.key_id IS NOT NULL
""")

# One key's in_queue jobs of the model, counted up to a bound (a LIMIT stops the index walk).
_COUNT_UP_TO = (
    "(SELECT count(*) FROM (SELECT 1 FROM jobs WHERE state = :queued AND model_id = :model_id"
    " AND key_id = :key_{n} LIMIT :limit_{n}) AS t{n})"
)
_KEYS_PER_QUERY = 100
_ALL = 2**62  # "no bound" as a LIMIT both SQLite and PostgreSQL accept


@dataclass(frozen=True)
class _Key:
    key_id: str
    priority: int
    full: bool  # at its max_running: its queued jobs wait, and are in no one's way


def queue_position(conn: sa.Connection, seq: int, key_id: str, model_id: str) -> int:
    """How many in_queue jobs of `model_id` start before the queued job `seq` of `key_id`: its
    index in `fair_queue(conn, [model_id])`, or that queue's length when its key is full.

    The rule is `fair_order`'s: higher priority first, then rounds (a key's n-th oldest job
    is in round n), then the least recently served key, then the older job.
    """
    params = {"queued": JobState.in_queue.value, "running": JobState.in_progress.value, "model_id": model_id}
    rows = conn.execute(_KEYS, {**params, "key_id": key_id, "seq": seq}).all()
    keys = {row.key_id: _Key(row.key_id, row.priority or 0, _is_full(row)) for row in rows}
    others = [key for key in keys.values() if key.key_id != key_id and not key.full]
    rank = rows[0].rank if rows else 0
    if key_id not in keys or keys[key_id].full or rank == 0:  # waits behind every key that can start
        return sum(_count_up_to(conn, params, {key.key_id: _ALL for key in others}).values())
    mine = keys[key_id]
    ahead = [key for key in others if key.priority >= mine.priority]
    # A key of the same priority: its jobs of rounds 1..rank-1 go first, and one of round `rank`
    # (counted up to rank, to see whether it has one); of a higher priority, every job.
    counts = _count_up_to(conn, params, {k.key_id: rank if k.priority == mine.priority else _ALL for k in ahead})
    before = rank - 1
    same_round = []
    for key in ahead:
        count = counts[key.key_id]
        if key.priority > mine.priority:
            before += count
            continue
        before += min(count, rank - 1)
        if count >= rank:
            same_round.append(key.key_id)
    return before + _first_in_round(conn, params, key_id, same_round, rank, seq)


def _is_full(row: sa.Row) -> bool:
    return row.max_running is not None and row.running >= row.max_running


def _count_up_to(conn: sa.Connection, params: dict, limits: dict[str, int]) -> dict[str, int]:
    """key id -> its in_queue jobs of the model, counted up to limits[key id]; a hundred keys a query."""
    keys, counts = list(limits), {}
    for start in range(0, len(keys), _KEYS_PER_QUERY):
        batch = keys[start : start + _KEYS_PER_QUERY]
        sql = "SELECT " + ", ".join(_COUNT_UP_TO.format(n=n) for n in range(len(batch)))
        bound = {f"key_{n}": key for n, key in enumerate(batch)} | {
            f"limit_{n}": limits[key] for n, key in enumerate(batch)
        }
        counts.update(zip(batch, conn.execute(sa.text(sql), {**params, **bound}).one(), strict=True))
    return counts


def _first_in_round(conn: sa.Connection, params: dict, key_id: str, others: list[str], rank: int, seq: int) -> int:
    """How many of `others` (keys with a job in this job's round) start theirs first: those served
    less recently than `key_id`, or as recently, with an older job."""
    if not others:  # (one key queued, the common case: no more queries)
        return 0
    last = last_started(conn, [key_id, *others], [params["model_id"]])
    mine = naive(last.get(key_id))
    first = 0
    for other in others:
        theirs = naive(last.get(other))
        if theirs < mine or (theirs == mine and _nth_seq(conn, params, other, rank) < seq):
            first += 1
    return first


_NTH_SEQ = sa.text(
    "SELECT seq FROM jobs WHERE state = :queued AND model_id = :model_id AND key_id = :key_id"
    " ORDER BY seq LIMIT 1 OFFSET :offset"
)


def _nth_seq(conn: sa.Connection, params: dict, key_id: str, n: int) -> int:
    """The seq of `key_id`'s n-th oldest in_queue job of the model (n from 1)."""
    return int(conn.execute(_NTH_SEQ, {**params, "key_id": key_id, "offset": n - 1}).scalar_one())
