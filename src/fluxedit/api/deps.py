"""FastAPI dependencies: the process's Runtime, typed."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from fluxedit.runtime import Runtime


async def get_runtime(request: Request) -> Runtime:  # async: no thread-pool round trip for a lookup
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
