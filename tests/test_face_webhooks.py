"""Replicate's and BFL's webhook deliveries rendered from a real job in a real store, verified as receivers verify them."""

from __future__ import annotations

import time

import pytest
from replicate.webhook import InvalidSignatureError, Webhooks, WebhookSigningSecret

from fluxedit.api.faces import bfl_webhook, replicate_webhook
from fluxedit.config import Settings
from fluxedit.runtime import open_runtime

BASE = "http://127.0.0.1:8000"
INPUT = {"prompt": "a hat", "image_urls": ["https://example.com/a.png"]}


@pytest.fixture
def runtime(tmp_path):
    runtime = open_runtime(Settings(data_dir=tmp_path), [], run_jobs=False)
    yield runtime
    runtime.close()


def test_replicate_delivery_is_the_prediction_signed_with_the_keys_secret(runtime) -> None:
    job = runtime.store.submit("key-1", "blackforestlabs/flux-2/klein-4b/edit", INPUT, max_queued=10)
    body, headers = replicate_webhook.delivery(runtime, job, BASE, "msg_1", int(time.time()))
    secret = WebhookSigningSecret(key=replicate_webhook.signing_secret(runtime.signer, "key-1"))
    Webhooks.validate(headers=headers, body=body.decode(), secret=secret)  # raises when it does not verify
    assert b'"status":"starting"' in body and job.id.encode() in body
    other = WebhookSigningSecret(key=replicate_webhook.signing_secret(runtime.signer, "key-2"))
    with pytest.raises(InvalidSignatureError):
        Webhooks.validate(headers=headers, body=body.decode(), secret=other)


def test_bfl_delivery_is_signed_with_the_webhook_secret(runtime) -> None:
    job = runtime.store.submit("key-1", "blackforestlabs/flux-2/klein-4b/edit", INPUT, max_queued=10)
    body, headers = bfl_webhook.delivery(runtime, job, BASE, "s3cret")
    assert bfl_webhook.verify(body, headers[bfl_webhook.SIGNATURE_HEADER], "s3cret")
    assert job.id.encode() in body and b'"status":"Pending"' in body
