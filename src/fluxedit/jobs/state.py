"""The states a job goes through: in_queue -> in_progress -> completed | failed | cancelled."""

from __future__ import annotations

from enum import Enum


class JobState(str, Enum):
    in_queue = "in_queue"
    in_progress = "in_progress"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.completed, JobState.failed, JobState.cancelled)
