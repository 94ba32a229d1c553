"""Replicate's webhooks: which events a filter asks for, and the delivery of one.

Replicate posts the prediction object itself, for the events `start`, `output`,
`logs` and `completed` that `webhook_events_filter` keeps (all of them when no
filter is given), signed the Standard Webhooks way (`webhook-id`,
`webhook-timestamp`, `webhook-signature`) with the account's `whsec_...` secret:
here the API key's own, which `GET /replicate/v1/webhooks/default/secret` answers.
Deliveries go through the events outbox like native ones, in this format.
"""

from __future__ import annotations

import json
from datetime import datetime

from fluxedit.api.faces.replicate_prediction import prediction
from fluxedit.errors import InvalidInput
from fluxedit.jobs.job import Job
from fluxedit.jobs.outbox import OutboxEvent, Webhook
from fluxedit.runtime import Runtime
from fluxedit.webhooks.formats import standard_headers
from fluxedit.webhooks.sender import Delivery, check_destination

FORMAT = "replicate"
EVENTS = ("start", "output", "logs", "completed")
# Replicate's events as the outbox filters them: logs come with each step; an edit's
# output comes with its end, so `output` asks for the end as `completed` does.
OUTBOX_EVENT = {"start": "start", "logs": "progress", "output": "completed", "completed": "completed"}


def events_filter(value: object) -> list[str]:
    """A submitted `webhook_events_filter` checked; None -> every event."""
    if value is None:
        return list(EVENTS)
    if not isinstance(value, list) or not value or any(v not in EVENTS for v in value):
        raise InvalidInput(
            f"webhook_events_filter must be a list of some of {', '.join(EVENTS)}.", field="webhook_events_filter"
        )
    return list(dict.fromkeys(value))


def requested(url: str | None, filter_: list[str] | None, *, allow: list[str]) -> Webhook | None:
    """The webhook a prediction create asks for; a 422 naming the field when it cannot be used."""
    events = events_filter(filter_)
    if url is None:
        if filter_ is not None:
            raise InvalidInput("webhook_events_filter needs a webhook URL to send to.", field="webhook_events_filter")
        return None
    check_destination(url, allow)
    asked = {OUTBOX_EVENT[name] for name in events}
    return Webhook(url, tuple(name for name in ("start", "progress", "completed") if name in asked), FORMAT)


def delivery(event: OutboxEvent, job: Job, base: str, runtime: Runtime, now: datetime) -> Delivery:
    """One attempt of `event`: the prediction as the event saw it, signed with its key's secret."""
    body = json.dumps(prediction(base, runtime, job), separators=(",", ":"))
    return Delivery(body.encode(), standard_headers(runtime.webhook_secret(job.key_id), event.id, now, body))
