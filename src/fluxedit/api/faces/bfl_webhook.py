"""BFL's webhook for a finished task: the get_result answer as the body, signed with `webhook_secret`.

BFL's guides give the form: a POST to `webhook_url` when the task ends, the body
`{id, status, result: {sample, ...}, ...}` (`details` on failure), and, when the
request carried `webhook_secret`, the header `X-BFL-Signature: sha256=<hex HMAC-SHA256
of the raw body, keyed by the secret>`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time

from fluxedit.api.faces.bfl_result import task_result
from fluxedit.jobs.store import Job
from fluxedit.runtime import Runtime

SIGNATURE_HEADER = "X-BFL-Signature"


def render(answer: dict, secret: str | None, *, timestamp: float | None = None) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of one delivery of a finished task's `answer` (bfl_result.task_result)."""
    payload = {**answer, "timestamp": int(time.time() if timestamp is None else timestamp)}
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = {"content-type": "application/json"}
    if secret:
        headers[SIGNATURE_HEADER] = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return body, headers


def verify(body: bytes, signature: str | None, secret: str) -> bool:
    """What a receiver checks: the header is `sha256=` and the HMAC of the exact bytes received."""
    if not signature or not signature.startswith("sha256="):
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature.removeprefix("sha256="))


def delivery(runtime: Runtime, job: Job, base: str, secret: str | None) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of the webhook for a finished `job`, signed with the `webhook_secret` it was sent."""
    return render(task_result(base, runtime, job), secret)
