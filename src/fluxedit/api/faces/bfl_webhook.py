"""BFL's webhook for a finished task: the get_result answer as the body, signed with `webhook_secret`.

BFL's guides give the form: a POST to `webhook_url` when the task ends, the body
`{id, status, result: {sample, ...}, ...}` (`details` on failure), and, when the
request carried `webhook_secret`, the header `X-BFL-Signature: sha256=<hex HMAC-SHA256
of the raw body, keyed by the secret>`. Deliveries go through the events outbox
like native ones, in this format; only the end is sent.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime

from fluxedit.api.faces.bfl_result import task_result
from fluxedit.errors import InvalidInput
from fluxedit.jobs.job import Job
from fluxedit.jobs.outbox import OutboxEvent, Webhook
from fluxedit.runtime import Runtime
from fluxedit.webhooks.sender import Delivery, check_destination

FORMAT = "bfl"
SIGNATURE_HEADER = "X-BFL-Signature"
MAX_SECRET_CHARS = 512


def requested(body: dict, *, allow: list[str]) -> Webhook | None:
    """The webhook a BFL submit asks for (`webhook_url`, `webhook_secret`); a 422 naming the field if unusable."""
    url, secret = body.get("webhook_url"), body.get("webhook_secret")
    if secret is not None and (not isinstance(secret, str) or not 0 < len(secret) <= MAX_SECRET_CHARS):
        raise InvalidInput(
            f"webhook_secret must be a string of 1 to {MAX_SECRET_CHARS} characters.", field="webhook_secret"
        )
    if url is None:
        if secret is not None:
            raise InvalidInput("webhook_secret needs a webhook_url to sign for.", field="webhook_secret")
        return None
    if not isinstance(url, str):
        raise InvalidInput("webhook_url must be a URL.", field="webhook_url")
    check_destination(url, allow, field="webhook_url")
    return Webhook(url, ("completed",), FORMAT, secret)


def sign(body: bytes, secret: str | None) -> dict[str, str]:
    """The headers of one delivery of `body`: the signature when the request gave a secret."""
    if not secret:
        return {}
    return {SIGNATURE_HEADER: "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}


def delivery(event: OutboxEvent, job: Job, base: str, runtime: Runtime, now: datetime) -> Delivery:
    """One attempt of `event`: the task's result as the event saw it, with the delivery's time."""
    answer = {**task_result(base, runtime, job), "timestamp": int(now.timestamp())}
    body = json.dumps(answer, separators=(",", ":")).encode()
    return Delivery(body, sign(body, job.webhook_secret))
