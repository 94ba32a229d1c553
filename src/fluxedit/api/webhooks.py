"""Webhooks on the API: asking for them at submit, the key's signing secret, a request's deliveries."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import ValidationError

from fluxedit.api.auth import require_key
from fluxedit.api.deps import RuntimeDep
from fluxedit.errors import InvalidInput, NotFound
from fluxedit.jobs.outbox import DEFAULT_FILTER, Attempt, OutboxEvent, Webhook
from fluxedit.schema import (
    ErrorResponse,
    WebhookAttempt,
    WebhookEventLog,
    WebhookLog,
    WebhookRequest,
    WebhookSecret,
    invalid_input,
)
from fluxedit.webhooks.sender import check_destination

router = APIRouter()
KeyId = Annotated[str, Depends(require_key)]
ERRORS = {code: {"model": ErrorResponse} for code in (401, 404)}
EVENT_ORDER = ("start", "progress", "completed")
# A URL in the query string must leave the request line within what the HTTP server reads
# (uvicorn answers a plain-text 400 to a line of tens of KB, before the app sees it):
# 2048 characters stay under that even percent-encoded at 12 bytes each. Longer: the body.
MAX_QUERY_URL_CHARS = 2048

# The submit body is the model's input (EditInput) plus these fields: documented on the route.
WEBHOOK_BODY_DOC = {
    "requestBody": {
        "content": {"application/json": {"schema": {"properties": WebhookRequest.model_json_schema()["properties"]}}}
    }
}


async def requested_webhook(
    request: Request,
    runtime: RuntimeDep,
    webhook: Annotated[
        str | None,
        Query(
            max_length=MAX_QUERY_URL_CHARS,
            description="Where to POST this request's events (or the body's `webhook`, for a longer URL).",
        ),
    ] = None,
) -> Webhook | None:
    """The webhook a submit asks for, from `?webhook=` or the body; a 422 naming the field if it is not acceptable."""
    fields = _webhook_fields(await _json_body(request))
    if webhook and fields.webhook and webhook != fields.webhook:
        raise InvalidInput("webhook: the query and the body name different webhooks; give one.", field="webhook")
    url = webhook or fields.webhook
    if url is None:
        if fields.webhook_events_filter is not None:
            raise InvalidInput(
                "webhook_events_filter needs a webhook URL to send the events to.", field="webhook_events_filter"
            )
        return None
    check_destination(url, runtime.settings.fetch_allow)
    asked = set(fields.webhook_events_filter or DEFAULT_FILTER)
    return Webhook(url, tuple(name for name in EVENT_ORDER if name in asked))


async def _json_body(request: Request) -> Any:
    try:
        return await request.json()  # already parsed for the body's model: this is the cached value
    except ValueError:
        return None


def _webhook_fields(body: Any) -> WebhookRequest:
    try:
        return WebhookRequest.model_validate(body if isinstance(body, dict) else {})
    except ValidationError as exc:
        raise invalid_input(exc.errors()) from None


RequestedWebhook = Annotated[Webhook | None, Depends(requested_webhook)]


@router.get("/v1/webhooks/secret", response_model=WebhookSecret, tags=["webhooks"], responses=ERRORS)
def webhook_secret(runtime: RuntimeDep, key_id: KeyId) -> WebhookSecret:
    """The secret that signs this API key's webhooks (verify them with the `standardwebhooks` package)."""
    return WebhookSecret(secret=runtime.webhook_secret(key_id))


@router.get("/v1/requests/{request_id}/webhooks", response_model=WebhookLog, tags=["webhooks"], responses=ERRORS)
def request_webhooks(runtime: RuntimeDep, request_id: str, key_id: KeyId) -> WebhookLog:
    """Each webhook event of this request and each attempt to deliver it: time, HTTP status or error, next try."""
    job = runtime.store.get(request_id, key_id=key_id)
    if job is None:
        raise NotFound(f"No request {request_id!r} for this API key.")
    events = runtime.outbox.events_for(job.id)
    return WebhookLog(request_id=job.id, webhook=job.webhook_url, events=[_event_log(e, a) for e, a in events])


def _event_log(event: OutboxEvent, attempts: list[Attempt]) -> WebhookEventLog:
    return WebhookEventLog(
        id=event.id,
        type=event.type,
        created_at=event.created_at,
        state=event.state,
        next_attempt_at=event.next_attempt_at,
        attempts=[
            WebhookAttempt(
                number=a.number,
                started_at=a.started_at,
                finished_at=a.finished_at,
                status_code=a.status_code,
                error=a.error,
                next_attempt_at=a.next_attempt_at,
            )
            for a in attempts
        ],
    )
