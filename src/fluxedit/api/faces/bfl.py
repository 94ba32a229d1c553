"""BFL's API under /bfl, over the one native queue: `x-key`, `POST /v1/flux-2-*`, `get_result`.

fluxedit's own BFL engine works against it (FLUXEDIT_BFL_BASE_URL=<server>/bfl), as
any client written for api.bfl.ai does. It owns no state: submits go through
queue_job, results are read from the JobStore. Errors are `{"detail": ...}`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from fluxedit.api.auth import ANONYMOUS_KEY_ID, Unauthorized
from fluxedit.api.deps import RuntimeDep
from fluxedit.api.faces import bfl_webhook
from fluxedit.api.faces.bfl_input import edit_input, served_id
from fluxedit.api.faces.bfl_result import PREFIX, detail, not_found, polling_url, task_result
from fluxedit.api.faces.errors import face_route
from fluxedit.api.routes import base_url, queue_job


def require_x_key(request: Request, runtime: RuntimeDep) -> str:
    """The key id of the caller from BFL's `x-key` header, or 401."""
    if request.app.state.allow_unauthenticated:
        return ANONYMOUS_KEY_ID
    secret = request.headers.get("x-key", "").strip()
    if not secret:
        raise Unauthorized("An API key is required: send the header 'x-key: <key>'.")
    key_id = runtime.key_cache.verify(secret)
    if key_id is None:
        raise Unauthorized("The API key is not valid or has been revoked.")
    return key_id


router = APIRouter(prefix=PREFIX, tags=["bfl"], route_class=face_route(detail))
KeyId = Annotated[str, Depends(require_x_key)]


@router.get("/v1/get_result")
def get_result(
    request: Request, runtime: RuntimeDep, key_id: KeyId, id: Annotated[str, Query(min_length=1, max_length=200)]
) -> dict:
    job = runtime.store.get(id, key_id=key_id)
    if job is None:
        request.app.state.guesses.miss(key_id, id)
        return not_found(id)
    return task_result(base_url(request), runtime, job)


@router.post("/v1/{model}")
async def submit(
    request: Request, runtime: RuntimeDep, model: str, key_id: KeyId, body: Annotated[dict[str, Any], Body()]
) -> dict:
    """Queue an edit on the served model at this path; answers `{id, polling_url}`."""
    model_id = served_id(model, set(runtime.models))
    edit = edit_input(body)
    webhook = bfl_webhook.requested(body, allow=runtime.settings.fetch_allow)
    job = await run_in_threadpool(queue_job, request, model_id, edit, key_id, None, webhook)
    return {"id": job.id, "polling_url": polling_url(request, job.id)}
