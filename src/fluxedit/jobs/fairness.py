"""The order queued jobs start in: per-key priority, then round-robin across keys, oldest first within a key.

One pure function decides it, so that `JobStore.claim_next` (which job a free worker
takes) and `JobStore.queue_position` (what a client is told) never disagree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

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
