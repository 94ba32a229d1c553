"""Webhook formats: how an outbox event becomes a signed request, by the format its job asked for.

"native" is the Standard Webhooks form: {"type", "timestamp", "data"}, `data`
exactly the GET .../result body at the event's moment, rendered from its snapshot,
and the webhook-id, webhook-timestamp and webhook-signature headers made with the
`standardwebhooks` package and the API key's secret. The compatibility faces give
their providers' shapes ("fal", "replicate", "bfl"), each a function of the same form.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from math import floor
from typing import TYPE_CHECKING

from standardwebhooks.webhooks import Webhook

from fluxedit.api.render import result_response
from fluxedit.jobs.job import Job
from fluxedit.jobs.outbox import NATIVE_FORMAT, OutboxEvent
from fluxedit.webhooks.sender import Delivery

if TYPE_CHECKING:
    from fluxedit.runtime import Runtime

# (the event, its job as the event saw it, the base of absolute URLs, the runtime, now) -> the request
Format = Callable[[OutboxEvent, Job, str, "Runtime", datetime], Delivery]


def native(event: OutboxEvent, job: Job, base: str, runtime: Runtime, now: datetime) -> Delivery:
    data = result_response(job, base, runtime.storage).model_dump(mode="json")
    body = json.dumps(
        {"type": event.type, "timestamp": event.created_at.isoformat(), "data": data}, separators=(",", ":")
    )
    return Delivery(body.encode(), standard_headers(runtime.webhook_secret(event.key_id), event.id, now, body))


def standard_headers(secret: str, message_id: str, now: datetime, body: str) -> dict[str, str]:
    """The Standard Webhooks headers for `body` sent at `now`, signed with `secret`."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(floor(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, now, body),
    }


def formats() -> dict[str, Format]:
    """Every format by name. (The faces' renderers import the runtime: imported here, when first asked for.)"""
    from fluxedit.api.faces import bfl_webhook, fal_webhook, replicate_webhook

    return {
        NATIVE_FORMAT: native,
        fal_webhook.FORMAT: fal_webhook.delivery,
        replicate_webhook.FORMAT: replicate_webhook.delivery,
        bfl_webhook.FORMAT: bfl_webhook.delivery,
    }


def render(event: OutboxEvent, runtime: Runtime, now: datetime) -> Delivery:
    """The request for one attempt of `event`, in its format."""
    try:
        make = formats()[event.format]
    except KeyError:
        raise ValueError(f"webhook event {event.id} has the unknown format {event.format!r}") from None
    stored = runtime.store.get(event.job_id)
    job = Job.from_snapshot(event.snapshot, stored.input if stored is not None else {})
    base = (runtime.settings.public_url or job.base_url or "").rstrip("/")
    return make(event, job, base, runtime, now)
