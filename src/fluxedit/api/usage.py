"""GET /v1/usage: the caller's key's usage per day."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from fluxedit.api.auth import require_key
from fluxedit.api.deps import RuntimeDep
from fluxedit.jobs.usage import MAX_DAYS, UsageReader

router = APIRouter()


class UsageDayOut(BaseModel):
    date: date
    jobs: dict[str, int] = Field(description="Jobs submitted that day, by their state now.")
    output_megapixels: float = Field(description="Completed jobs: width x height x images, in megapixels.")
    engine_seconds: float = Field(description="Completed jobs: the engine's inference seconds.")


class UsageResponse(BaseModel):
    days: list[UsageDayOut] = Field(description="Days (UTC, by submit time) with jobs, oldest first.")


@router.get("/v1/usage", response_model=UsageResponse, tags=["usage"])
def usage(
    runtime: RuntimeDep,
    key_id: Annotated[str, Depends(require_key)],
    days: Annotated[int, Query(ge=1, le=MAX_DAYS, description="How many days back, today included.")] = 30,
) -> UsageResponse:
    found = UsageReader(runtime.store.engine).days(key_id=key_id, days=days)
    return UsageResponse(
        days=[
            UsageDayOut(
                date=d.day,
                jobs=d.jobs,
                output_megapixels=round(d.output_megapixels, 4),
                engine_seconds=round(d.engine_seconds, 3),
            )
            for d in found
        ]
    )
