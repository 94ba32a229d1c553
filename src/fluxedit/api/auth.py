"""Bearer-key auth: every /v1 route needs a key; a key sees only its own jobs."""

from __future__ import annotations

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from fluxedit.api.deps import RuntimeDep
from fluxedit.errors import FluxeditError

ANONYMOUS_KEY_ID = "anonymous"


class Unauthorized(FluxeditError):
    code = "unauthorized"
    status = 401


async def require_key(request: Request, runtime: RuntimeDep) -> str:
    """FastAPI dependency: the key id of the caller, or 401. Async, so that a key remembered by
    the key cache costs no thread-pool round trip; only a cache miss reads the database there."""
    if request.app.state.allow_unauthenticated:
        return ANONYMOUS_KEY_ID
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if not header:
        raise Unauthorized("An API key is required: send the header 'Authorization: Bearer <key>'.")
    if scheme.lower() not in ("bearer", "key") or not secret.strip():
        raise Unauthorized("The Authorization header must be 'Bearer <key>'.")
    secret = secret.strip()
    key_id = runtime.key_cache.cached(secret) or await run_in_threadpool(runtime.key_cache.verify, secret)
    if key_id is None:
        raise Unauthorized("The API key is not valid or has been revoked.")
    return key_id
