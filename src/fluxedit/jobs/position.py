"""One queued job's position in the fair order, counted without reading the queue.

A status poll asks where one job stands. Ordering the whole queue (`fairness.fair_queue`)
costs the queue's length; this applies `fairness.fair_order`'s rule to each key's queued
count (the counters of fluxedit.jobs.queue_counts) and the job's rank among its own key's
queued jobs, so a job answers in one statement with 100k jobs of other keys queued (and a
second only when two keys tie for its round). What stays linear is the rank: a count of
the caller's own older queued jobs. A test holds it equal to `fair_queue`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from fluxedit.jobs.db import UTCDateTime
from fluxedit.jobs.fairness import at_max_running, naive
from fluxedit.jobs.state import JobState

# Each key with in_queue jobs of the model (its counter, fluxedit.jobs.queue_counts), with its
# limits, its running jobs, when it last had a job of the model start (an index seek on
# ix_jobs_key_started) and, once, the caller's rank among its own queued jobs (this job is
# its key's rank-th oldest: it is in round `rank`).
_KEYS = sa.text("""
WITH running AS (SELECT key_id, count(*) AS n FROM jobs WHERE state = :running GROUP BY key_id)
SELECT c.key_id, c.queued, l.priority, l.max_running, coalesce(r.n, 0) AS running,
       (SELECT max(s.started_at) FROM jobs s WHERE s.key_id = c.key_id AND s.model_id = :model_id) AS last_started,
       (SELECT count(*) FROM jobs
        WHERE state = :queued AND model_id = :model_id AND key_id = :key_id AND seq <= :seq) AS rank
FROM queue_counts c
LEFT JOIN key_limits l ON l.key_id = c.key_id
LEFT JOIN running r ON r.key_id = c.key_id
WHERE c.model_id = :model_id AND c.queued > 0
""").columns(
    sa.column("key_id"),
    sa.column("queued"),
    sa.column("priority"),
    sa.column("max_running"),
    sa.column("running"),
    sa.column("last_started", UTCDateTime),  # (SQLite gives it as text)
    sa.column("rank"),
)


@dataclass(frozen=True)
class _Key:
    queued: int
    priority: int
    full: bool  # at its max_running: its queued jobs wait, and are in no one's way
    last_started: datetime  # naive UTC; NEVER for a key never served


def queue_position(conn: sa.Connection, seq: int, key_id: str, model_id: str) -> int:
    """How many in_queue jobs of `model_id` start before the queued job `seq` of `key_id`: its
    index in `fair_queue(conn, [model_id])`, or that queue's length when its key is full.

    The rule is `fair_order`'s: higher priority first, then rounds (a key's n-th oldest job
    is in round n), then the least recently served key, then the older job.
    """
    params = {"queued": JobState.in_queue.value, "running": JobState.in_progress.value, "model_id": model_id}
    rows = conn.execute(_KEYS, {**params, "key_id": key_id, "seq": seq}).all()
    keys = {
        row.key_id: _Key(
            row.queued, row.priority or 0, at_max_running(row.max_running, row.running), naive(row.last_started)
        )
        for row in rows
    }
    others = {key: k for key, k in keys.items() if key != key_id and not k.full}
    rank = rows[0].rank if rows else 0
    if key_id not in keys or keys[key_id].full or rank == 0:  # waits behind every key that can start
        return sum(k.queued for k in others.values())
    mine = keys[key_id]
    before = rank - 1
    for other, theirs in others.items():
        if theirs.priority != mine.priority:
            before += theirs.queued if theirs.priority > mine.priority else 0
            continue
        before += min(theirs.queued, rank - 1)  # their jobs of the earlier rounds
        if theirs.queued >= rank:  # and one in this job's round: it goes first if they were served
            # less recently, or as recently and it is the older job
            tie = theirs.last_started == mine.last_started
            if theirs.last_started < mine.last_started or (tie and _nth_seq(conn, params, other, rank) < seq):
                before += 1
    return before


_NTH_SEQ = sa.text(
    "SELECT seq FROM jobs WHERE state = :queued AND model_id = :model_id AND key_id = :key_id"
    " ORDER BY seq LIMIT 1 OFFSET :offset"
)


def _nth_seq(conn: sa.Connection, params: dict, key_id: str, n: int) -> int:
    """The seq of `key_id`'s n-th oldest in_queue job of the model (n from 1)."""
    return int(conn.execute(_NTH_SEQ, {**params, "key_id": key_id, "offset": n - 1}).scalar_one())
