"""Replicate's webhooks for a job: which events a filter lets through, the body, the signature.

Replicate posts the prediction object itself, for the events `start`, `output`,
`logs` and `completed` that `webhook_events_filter` keeps (all of them when no
filter is given), signed the Standard Webhooks way: headers `webhook-id`,
`webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256 of
"id.timestamp.body">`, keyed by the base64 part of the account's `whsec_...` secret
(`GET /v1/webhooks/default/secret`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

from fluxedit.api.faces.replicate_prediction import prediction
from fluxedit.errors import InvalidInput
from fluxedit.jobs.state import JobState
from fluxedit.jobs.store import Job
from fluxedit.runtime import Runtime
from fluxedit.storage.signing import UrlSigner

EVENTS = ("start", "output", "logs", "completed")


def events_filter(value: object) -> list[str]:
    """A submitted `webhook_events_filter` checked; None -> every event."""
    if value is None:
        return list(EVENTS)
    if not isinstance(value, list) or not value or any(v not in EVENTS for v in value):
        raise InvalidInput(
            f"webhook_events_filter must be a list of some of {', '.join(EVENTS)}.", field="webhook_events_filter"
        )
    return list(dict.fromkeys(value))


def event_for(state: JobState) -> str | None:
    """The Replicate event a job's move into `state` is: start when it runs, completed when it ends."""
    if state == JobState.in_progress:
        return "start"
    return "completed" if state.finished else None


def wanted(state: JobState, filter_: list[str]) -> bool:
    event = event_for(state)
    return event is not None and event in filter_


def signing_secret(signer: UrlSigner, key_id: str) -> str:
    """The `whsec_...` secret of one API key, derived from the server's secret (nothing stored)."""
    material = hmac.new(signer.sign(f"replicate-webhook/{key_id}", 0).encode(), b"whsec", hashlib.sha256).digest()
    return "whsec_" + base64.b64encode(material).decode("ascii")


def render(prediction: dict, secret: str, message_id: str, timestamp: int) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of one delivery: the prediction as JSON, signed as Standard Webhooks sign it."""
    body = json.dumps(prediction, separators=(",", ":")).encode()
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    signature = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")
    headers = {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": f"v1,{signature}",
    }
    return body, headers


def delivery(runtime: Runtime, job: Job, base: str, message_id: str, timestamp: int) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of the webhook for `job` as it is now, signed with its key's secret."""
    body = prediction(base, runtime, job)
    return render(body, signing_secret(runtime.signer, job.key_id), message_id, timestamp)
