"""fal's webhook for a finished request, signed as fal signs, with keys published as fal publishes them.

fal POSTs `{request_id, gateway_request_id, status: "OK" | "ERROR", payload, error}` to
`?fal_webhook=` when the request ends: `payload` is the output (or, on ERROR, the error
body the result URL answers). The signature is Ed25519 over the lines request id, user
id, timestamp and the hex SHA-256 of the body, sent hex-encoded in
`X-Fal-Webhook-Signature` beside `X-Fal-Webhook-Request-Id`, `-User-Id` and
`-Timestamp`. fal's receivers check it with the keys of a JWKS; here the server's one
key, derived from its URL-signing secret (so every process sharing it signs alike and
nothing more is stored), is at `/fal/.well-known/jwks.json`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fluxedit.api.faces.fal_errors import from_job
from fluxedit.api.faces.fal_render import fal_output, output_images
from fluxedit.config import Settings
from fluxedit.jobs.job import Job
from fluxedit.jobs.outbox import OutboxEvent, Webhook
from fluxedit.jobs.state import JobState
from fluxedit.runtime import Runtime
from fluxedit.storage.signing import load_secret
from fluxedit.webhooks.sender import Delivery, check_destination

FORMAT = "fal"
KEY_ID = "fluxedit-fal-webhooks-1"


def requested(url: str | None, *, allow: list[str]) -> Webhook | None:
    """The webhook `?fal_webhook=` asks for (its end only, as fal sends); a 422 naming it if unusable."""
    if url is None:
        return None
    check_destination(url, allow, field="fal_webhook")
    return Webhook(url, ("completed",), FORMAT)


def signing_key(settings: Settings) -> Ed25519PrivateKey:
    seed = hmac.new(load_secret(settings), b"fal webhook signing key", hashlib.sha256).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


def jwks(settings: Settings) -> dict:
    """The public key set receivers verify with (RFC 8037: an OKP key, `x` in base64url)."""
    public = signing_key(settings).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    x = base64.urlsafe_b64encode(public).rstrip(b"=").decode("ascii")
    return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": KEY_ID, "alg": "EdDSA", "use": "sig"}]}


def body_of(job: Job, base: str, runtime: Runtime) -> dict:
    """fal's webhook body for a finished `job`."""
    ids = {"request_id": job.id, "gateway_request_id": job.id}
    if job.state == JobState.completed:
        return {**ids, "status": "OK", "payload": fal_output(job, output_images(runtime.storage, job, base))}
    answer = from_job(job)
    error = f"Invalid status code: {answer.status_code}"
    return {**ids, "status": "ERROR", "error": error, "payload": json.loads(answer.body)}


def delivery(event: OutboxEvent, job: Job, base: str, runtime: Runtime, now: datetime) -> Delivery:
    """One attempt of `event`, signed with the server's key for this moment."""
    body = json.dumps(body_of(job, base, runtime), separators=(",", ":")).encode()
    timestamp = str(int(now.timestamp()))
    message = "\n".join((job.id, job.key_id, timestamp, hashlib.sha256(body).hexdigest())).encode()
    signature = signing_key(runtime.settings).sign(message).hex()
    headers = {
        "X-Fal-Webhook-Request-Id": job.id,
        "X-Fal-Webhook-User-Id": job.key_id,
        "X-Fal-Webhook-Timestamp": timestamp,
        "X-Fal-Webhook-Signature": signature,
    }
    return Delivery(body, headers)
