"""The order queued jobs start in: per-key priority, then round-robin across keys, oldest first within a key.

One pure function decides it (`fair_order`), fed by one query (`fair_queue`), so that
`JobStore.claim_next` (which job a free worker takes) and `JobStore.queue_position`
(what a client is told) never disagree.
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
        keyed.append(((-priority.get(job.key_id, 0), rank[job.key_id], _naive(since), job.seq), job))
    return [job for _, job in sorted(keyed, key=lambda pair: pair[0])]


def _naive(moment: datetime | None) -> datetime:
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
    keys = sorted({q.key_id for q in queued})
    if not keys:
        return []
    last_started = dict(
        conn.execute(
            sa.select(_J.key_id, sa.func.max(_J.started_at))
            .where(_J.key_id.in_(keys), _J.model_id.in_(ids), _J.started_at.is_not(None))
            .group_by(_J.key_id)
        ).all()
    )
    limits = {r.key_id: r for r in conn.execute(sa.select(key_limits_table).where(_L.key_id.in_(keys)))}
    running = dict(
        conn.execute(
            sa.select(_J.key_id, sa.func.count())
            .where(_J.key_id.in_(keys), _J.state == JobState.in_progress.value)
            .group_by(_J.key_id)
        ).all()
    )
    priority = {k: r.priority for k, r in limits.items() if r.priority is not None}
    full = set()
    for key in keys:
        own = limits[key].max_running if key in limits else None
        cap = own if own is not None else default_max_running
        if cap is not None and running.get(key, 0) >= cap:
            full.add(key)
    last = {k: v for k, v in last_started.items() if v is not None}
    return fair_order([q for q in queued if q.key_id not in full], last, priority)
