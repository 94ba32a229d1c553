"""A job as the store returns it (`Job`), and the JSON snapshot of a job row a webhook event reports."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from fluxedit.jobs.state import JobState


@dataclass(frozen=True)
class Job:
    id: str
    seq: int
    key_id: str
    model_id: str
    state: JobState
    input: dict
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    step: int | None = None
    total_steps: int | None = None
    phase: str | None = None
    cancel_requested: bool = False
    worker_id: str | None = None
    lease_expires_at: datetime | None = None
    error_code: str | None = None
    error_message: str | None = None
    error_index: int | None = None
    outputs: list[str] = field(default_factory=list)
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    timings: dict | None = None
    idempotency_key: str | None = None
    webhook_url: str | None = None
    webhook_filter: list[str] | None = None
    webhook_format: str | None = None
    webhook_secret: str | None = None
    base_url: str | None = None

    @classmethod
    def from_row(cls, row: sa.Row, **missing: Any) -> Job:
        values = {**missing, **row._mapping}
        values["state"] = JobState(values["state"])
        values["cancel_requested"] = bool(values["cancel_requested"])
        values["outputs"] = list(values.get("outputs") or [])
        return cls(**values)

    @classmethod
    def from_snapshot(cls, snapshot: dict, input: dict) -> Job:
        """The job as `job_snapshot` saw it (the input, which never changes, is not in a snapshot)."""
        values = {k: v for k, v in snapshot.items() if k in _FIELDS}
        for name in _TIME_FIELDS:
            if values.get(name) is not None:
                values[name] = datetime.fromisoformat(values[name])
        values["state"] = JobState(values["state"])
        values["outputs"] = list(values.get("outputs") or [])
        return cls(**values, input=input)


def job_snapshot(row: sa.Row) -> dict:
    """A JSON-ready copy of a job row without its input: what a webhook event reports."""
    values = {k: v for k, v in row._mapping.items() if k != "input"}
    values["cancel_requested"] = bool(values["cancel_requested"])
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in values.items()}


_FIELDS = {f.name for f in fields(Job)} - {"input"}
_TIME_FIELDS = ("created_at", "started_at", "finished_at", "lease_expires_at")
