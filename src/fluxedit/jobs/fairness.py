"""The order queued jobs start in: per-key priority, then round-robin across keys, oldest first within a key.

One pure function decides it (`fair_order`), fed by one query (`fair_queue`): which job a
free worker takes (`JobStore.claim_next`) and a page's queue positions. One job's position
(every status poll) is counted by the same rule in `fluxedit.jobs.position`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from fluxedit.jobs.db import jobs_table, key_limits_table
from fluxedit.jobs.state import JobState

NEVER = datetime.min  # a key never served goes before any key served, at the same round


@dataclass(frozen=True)
class Queued:
    seq: int
    key_id: str


def fair_order(queued: Iterable[Queued], last_started: dict[str, datetime], priority: dict[str, int]) -> list[Queued]:
    """`queued` (any order) in the order they will start.

    Higher priority first; within one priority, in rounds: each key's n-th oldest job is
    in round n; within a round, the key that started a job least recently goes first
    (then the older job). A key with 20 queued jobs and a key with one: the one is
    at most second.
    """
    rank: dict[str, int] = {}
    keyed = []
    for job in sorted(queued, key=lambda j: j.seq):
        rank[job.key_id] = rank.get(job.key_id, 0) + 1
        since = last_started.get(job.key_id)
        keyed.append(((-priority.get(job.key_id, 0), rank[job.key_id], naive(since), job.seq), job))
    return [job for _, job in sorted(keyed, key=lambda pair: pair[0])]


def at_max_running(own_max: int | None, running: int, default_max: int | None = None) -> bool:
    """Whether a key runs as many jobs as it may (its own max_running, else the default): its queued jobs wait."""
    cap = own_max if own_max is not None else default_max
    return cap is not None and running >= cap


def naive(moment: datetime | None) -> datetime:
    # Compared with NEVER, which has no zone; the store's times are all UTC.
    return NEVER if moment is None else moment.replace(tzinfo=None)


_J = jobs_table.c
_L = key_limits_table.c


def fair_queue(
    conn: sa.Connection, model_ids: Sequence[str], *, default_max_running: int | None = None
) -> list[Queued]:
    """The in_queue jobs of `model_ids` in the order they start (`fair_order`), read on `conn`.

    With `default_max_running` (or any key's own max_running), the jobs of keys that
    have that many jobs in_progress already are left out: they wait for one to end.
    """
    ids = list(model_ids)
    queued = [
        Queued(row.seq, row.key_id)
        for row in conn.execute(
            sa.select(_J.seq, _J.key_id).where(_J.state == JobState.in_queue.value, _J.model_id.in_(ids))
        )
    ]
    keys = _key_states(conn, {q.key_id for q in queued}, ids, default_max_running)
    if not keys:
        return []
    return fair_order([q for q in queued if q.key_id not in keys.full], keys.last_started, keys.priority)


def _last_started(conn: sa.Connection, keys: list[str], model_ids: list[str]) -> dict[str, datetime]:
    """When each key last had a job of `model_ids` start (keys never served are left out).

    One index lookup per key and model (`ix_jobs_key_started`), not a scan of each key's
    jobs: a key's history, and its queued jobs, can be long."""

    def latest(key: str, model_id: str) -> sa.ScalarSelect:
        return sa.select(sa.func.max(_J.started_at)).where(_J.key_id == key, _J.model_id == model_id).scalar_subquery()

    last = {}
    for start in range(0, len(keys), _KEYS_PER_QUERY):
        rows = [
            sa.select(sa.literal(key).label("key_id"), *(latest(key, m) for m in model_ids))
            for key in keys[start : start + _KEYS_PER_QUERY]
        ]
        for row in conn.execute(sa.union_all(*rows)):
            times = [t for t in row[1:] if t is not None]
            if times:
                last[row[0]] = max(times)
    return last


_KEYS_PER_QUERY = 100  # SQLite allows at most 500 SELECTs in one UNION


@dataclass(frozen=True)
class _KeyStates:
    last_started: dict[str, datetime]  # when each key last had a job of these models start
    priority: dict[str, int]
    full: set[str]  # keys at their max_running: their queued jobs wait


def _key_states(
    conn: sa.Connection,
    keys: set[str],
    ids: list[str],
    default_max_running: int | None,
) -> _KeyStates | None:
    if not keys:
        return None
    keys_ = sorted(keys)
    started = _last_started(conn, keys_, ids)
    limits = {r.key_id: r for r in conn.execute(sa.select(key_limits_table).where(_L.key_id.in_(keys_)))}
    # Every key's running jobs (few: one per worker), found from the state; filtering on the
    # keys here would let the planner walk each key's whole history instead.
    running = dict(
        conn.execute(
            sa.select(_J.key_id, sa.func.count()).where(_J.state == JobState.in_progress.value).group_by(_J.key_id)
        ).all()
    )
    full = {
        key
        for key in keys_
        if at_max_running(limits[key].max_running if key in limits else None, running.get(key, 0), default_max_running)
    }
    return _KeyStates(
        last_started=started,
        priority={k: r.priority for k, r in limits.items() if r.priority is not None},
        full=full,
    )
