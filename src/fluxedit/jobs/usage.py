"""Usage per key and day (UTC, by the day a job was submitted): jobs by state, output
megapixels and engine seconds, read from the job table."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

import sqlalchemy as sa

from fluxedit.jobs.db import Database, jobs_table

_J = jobs_table.c
MAX_DAYS = 366


@dataclass
class UsageDay:
    key_id: str
    day: date
    jobs: dict[str, int] = field(default_factory=dict)  # state -> count
    output_megapixels: float = 0.0  # completed jobs: width x height x images
    engine_seconds: float = 0.0  # completed jobs: the engine's inference time

    def add(self, state: str, width: int | None, height: int | None, outputs: list | None, timings: dict | None):
        self.jobs[state] = self.jobs.get(state, 0) + 1
        if state != "completed":
            return
        self.output_megapixels += (width or 0) * (height or 0) * len(outputs or []) / 1e6
        self.engine_seconds += float((timings or {}).get("inference_s") or 0.0)


class UsageReader(Database):
    """Reads usage from the jobs table (one database with the job store)."""

    def days(self, *, key_id: str | None = None, days: int = 30, today: date | None = None) -> list[UsageDay]:
        """The last `days` days up to `today` (UTC), oldest first; only days with jobs; all keys when key_id is None."""
        today = today or datetime.now(UTC).date()
        since = datetime.combine(today - timedelta(days=days - 1), time.min, tzinfo=UTC)
        query = sa.select(_J.key_id, _J.created_at, _J.state, _J.width, _J.height, _J.outputs, _J.timings).where(
            _J.created_at >= since
        )
        if key_id is not None:
            query = query.where(_J.key_id == key_id)
        found: dict[tuple[str, date], UsageDay] = {}
        with self._read() as conn:
            for row in conn.execute(query):
                day = row.created_at.astimezone(UTC).date()
                usage = found.setdefault((row.key_id, day), UsageDay(row.key_id, day))
                usage.add(row.state, row.width, row.height, row.outputs, row.timings)
        return [found[k] for k in sorted(found, key=lambda k: (k[1], k[0]))]
