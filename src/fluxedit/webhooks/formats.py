"""Webhook formats: how an outbox event becomes a signed request body, by the event's `format`.

"native" is the Standard Webhooks form: {"type", "timestamp", "data"}, `data`
exactly the GET .../result body at the event's moment, rendered from its snapshot,
and the webhook-id, webhook-timestamp and webhook-signature headers made with the
`standardwebhooks` package and the API key's secret. The compatibility faces add
their own shapes here, keyed by the format they store on their events.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from math import floor

from standardwebhooks.webhooks import Webhook

from fluxedit.api.render import result_response
from fluxedit.jobs.outbox import NATIVE_FORMAT, OutboxEvent
from fluxedit.jobs.store import Job
from fluxedit.storage.base import Storage
from fluxedit.webhooks.sender import Delivery


@dataclass(frozen=True)
class RenderContext:
    """What rendering needs besides the event: storage for output URLs, secrets, the job's input."""

    storage: Storage
    public_url: str | None
    secret_for: Callable[[str], str]  # API key id -> its whsec_ signing secret
    input_for: Callable[[str], dict]  # job id -> its input (never in a snapshot: it does not change)

    def job(self, event: OutboxEvent) -> Job:
        return Job.from_snapshot(event.snapshot, self.input_for(event.job_id))

    def base_url(self, job: Job) -> str:
        return (self.public_url or job.base_url or "").rstrip("/")


Format = Callable[[OutboxEvent, RenderContext, datetime], Delivery]


def native(event: OutboxEvent, context: RenderContext, now: datetime) -> Delivery:
    job = context.job(event)
    data = result_response(job, context.base_url(job), context.storage).model_dump(mode="json")
    body = json.dumps(
        {"type": event.type, "timestamp": event.created_at.isoformat(), "data": data}, separators=(",", ":")
    )
    return Delivery(body.encode(), standard_headers(context.secret_for(event.key_id), event.id, now, body))


def standard_headers(secret: str, message_id: str, now: datetime, body: str) -> dict[str, str]:
    """The Standard Webhooks headers for `body` sent at `now`, signed with `secret`."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(floor(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, now, body),
    }


FORMATS: dict[str, Format] = {NATIVE_FORMAT: native}


def render(event: OutboxEvent, context: RenderContext, now: datetime) -> Delivery:
    """The request for one attempt of `event`, in its format."""
    try:
        make = FORMATS[event.format]
    except KeyError:
        raise ValueError(f"webhook event {event.id} has the unknown format {event.format!r}") from None
    return make(event, context, now)
