"""Replicate's predictions API under /replicate, driven by the `replicate` package against a real server."""

from __future__ import annotations

import io
import time

import httpx
import pytest
import replicate
from PIL import Image
from replicate.exceptions import ReplicateError
from replicate.helpers import FileOutput
from replicate.webhook import InvalidSignatureError, Webhooks, WebhookSigningSecret

from _fixtures_images import png_bytes
from _fixtures_server import LiveServer
from fluxedit.api.faces.replicate_input import version_id

PRO = "black-forest-labs/flux-2-pro"


@pytest.fixture(scope="module")
def server(tiny_server, image_server):
    image_server.add("/replicate-ref.png", png_bytes((96, 64)), "image/png")
    return tiny_server


@pytest.fixture(scope="module")
def client(server) -> replicate.Client:
    return replicate.Client(api_token=server.api_key, base_url=f"{server.base_url}/replicate")


def small_input(image_server, **extra) -> dict:
    return {
        "prompt": "a red hat",
        "input_images": [image_server.url("/replicate-ref.png")],
        "aspect_ratio": "custom",
        "width": 128,
        "height": 96,
        "output_format": "png",
        "seed": 7,
        **extra,
    }


def test_run_gives_output_the_client_reads(client, image_server) -> None:
    output = client.run(PRO, input=small_input(image_server))
    # Over plain http the client leaves the URL a string (it wraps only https: and data:); its
    # FileOutput reads it as it reads Replicate's own outputs.
    assert isinstance(output, str) and output.startswith("http://127.0.0.1:")
    image = Image.open(io.BytesIO(FileOutput(output, client).read()))
    assert (image.format, image.size) == ("PNG", (128, 96))


def test_over_tls_run_gives_the_clients_file_output(tls, tmp_path_factory, image_server) -> None:
    image_server.add("/replicate-ref.png", png_bytes((96, 64)), "image/png")
    server = LiveServer(
        tmp_path_factory.mktemp("replicate-tls"),
        ("--model", "tiny", *tls.serve_args()),
        {"fetch_allow": '["127.0.0.1"]'},
        verify=tls.context(),
    ).start()
    try:
        # The client builds its own transport: the test CA goes in through it.
        trusting = httpx.HTTPTransport(verify=tls.context())
        client = replicate.Client(api_token=server.api_key, base_url=f"{server.base_url}/replicate", transport=trusting)
        output = client.run(PRO, input=small_input(image_server))
        # Over https the client wraps the URL in its FileOutput, as it does Replicate's own outputs.
        assert isinstance(output, FileOutput) and output.url.startswith(f"{server.base_url}/")
        image = Image.open(io.BytesIO(output.read()))
    finally:
        server.stop()
    assert (image.format, image.size) == ("PNG", (128, 96))


def test_create_then_wait_get_and_list(client, image_server, server) -> None:
    prediction = client.models.predictions.create(model="black-forest-labs/flux-2-dev", input=small_input(image_server))
    assert prediction.status in ("starting", "processing")
    assert prediction.model == "black-forest-labs/flux-2-dev"
    prediction.wait()
    assert prediction.status == "succeeded"
    assert prediction.metrics["predict_time"] >= 0 and prediction.completed_at
    again = client.predictions.get(prediction.id)
    assert (again.status, again.output) == ("succeeded", prediction.output)
    assert prediction.id in [p.id for p in client.predictions.list().results]
    # The same job is in the native history.
    with server.client() as http:
        native = http.get(f"/v1/requests/{prediction.id}/result").json()
    assert native["status"] == "completed" and native["model_id"] == "blackforestlabs/flux-2/dev/edit"


def test_prefer_wait_answers_with_the_finished_prediction(client, image_server, server) -> None:
    prediction = client.models.predictions.create(model=PRO, input=small_input(image_server), wait=60)
    assert prediction.status == "succeeded" and prediction.output.startswith("http://")
    with httpx.Client(timeout=90) as http:
        answer = http.post(
            f"{server.base_url}/replicate/v1/models/{PRO}/predictions",
            json={"input": small_input(image_server)},
            headers={**server.headers(), "Prefer": "wait=60"},
        )
    assert answer.status_code == 201 and answer.headers["Preference-Applied"] == "wait=60"
    assert answer.json()["status"] == "succeeded"


def test_predictions_by_version_and_models_get(client, image_server) -> None:
    model = client.models.get(PRO)
    assert model.latest_version.id == version_id("blackforestlabs/flux-2/pro/edit")
    prediction = client.predictions.create(version=model.latest_version.id, input=small_input(image_server))
    prediction.wait()
    assert prediction.status == "succeeded"


def test_cancel_a_queued_prediction(client, image_server) -> None:
    long = small_input(image_server, aspect_ratio="1:1", resolution="0.5 MP", steps=60)
    running = client.models.predictions.create(model=PRO, input=long)
    queued = client.models.predictions.create(model=PRO, input=long)
    canceled = client.predictions.cancel(queued.id)
    assert canceled.status == "canceled"
    client.predictions.cancel(running.id)  # stops at its next step
    running.wait()
    assert running.status in ("canceled", "succeeded")  # it may have ended before the cancel came
    assert client.predictions.get(queued.id).status == "canceled"


@pytest.mark.parametrize(
    ("input_", "words"),
    [
        ({"prompt": "a hat"}, "input_images is required"),
        ({"output_format": "webp"}, "output_format 'webp'"),
        ({"aspect_ratio": "wide"}, "aspect_ratio 'wide'"),
        ({"prompt": "   "}, "prompt"),
    ],
)
def test_invalid_input_is_the_clients_error_message(client, image_server, input_, words) -> None:
    base = {} if "input_images" in words else small_input(image_server)
    with pytest.raises(ReplicateError) as raised:
        client.run(PRO, input={**base, **input_})
    assert raised.value.status == 422
    assert words in raised.value.detail


def test_unknown_model_and_prediction_are_404_with_a_reason(client, image_server) -> None:
    with pytest.raises(ReplicateError) as raised:
        client.run("acme/nothing", input=small_input(image_server))
    assert raised.value.status == 404 and PRO in raised.value.detail
    with pytest.raises(ReplicateError) as raised:
        client.predictions.get("no-such-id")
    assert raised.value.status == 404 and "no-such-id" in raised.value.detail


def test_bad_key_is_refused_with_a_reason(server) -> None:
    stranger = replicate.Client(api_token="not-a-key", base_url=f"{server.base_url}/replicate")
    with pytest.raises(ReplicateError) as raised:
        stranger.predictions.list()
    assert raised.value.status == 401 and "not valid" in raised.value.detail


def test_stream_url_serves_replicate_events(client, image_server) -> None:
    prediction = client.models.predictions.create(model=PRO, input=small_input(image_server))
    events = [(e.event.value, e.data) for e in prediction.stream()]
    names = [name for name, _ in events]
    assert names[-1] == "done" and "output" in names
    prediction.reload()
    assert ("output", prediction.output) in events


def test_webhooks_arrive_as_filtered_and_verify_with_the_clients_validate(client, image_server, webhook_receiver):
    secret = client.webhooks.default.secret()
    assert secret.key.startswith("whsec_") and client.webhooks.default.secret().key == secret.key
    prediction = client.models.predictions.create(
        model=PRO,
        input=small_input(image_server),
        webhook=webhook_receiver.url("/replicate"),
        webhook_events_filter=["start", "completed"],
    )
    hooks = webhook_receiver.wait_for("/replicate", lambda hooks: any(h.json["status"] == "succeeded" for h in hooks))
    prediction.reload()

    assert [h.json["status"] for h in hooks] == ["processing", "succeeded"]
    assert hooks[-1].json["id"] == prediction.id and hooks[-1].json["output"] == prediction.output
    for hook in hooks:
        Webhooks.validate(headers=hook.headers, body=hook.body.decode(), secret=secret)  # raises if it does not verify
    forged = WebhookSigningSecret(key="whsec_" + "QUFBQUFBQUFBQUFBQUFBQQ==")
    with pytest.raises(InvalidSignatureError):
        Webhooks.validate(headers=hooks[-1].headers, body=hooks[-1].body.decode(), secret=forged)
    with pytest.raises(InvalidSignatureError):
        tampered = hooks[-1].body.decode().replace("succeeded", "failed")
        Webhooks.validate(headers=hooks[-1].headers, body=tampered, secret=secret)


def test_only_the_end_is_sent_when_only_completed_is_asked(client, image_server, webhook_receiver) -> None:
    prediction = client.models.predictions.create(
        model=PRO,
        input=small_input(image_server),
        webhook=webhook_receiver.url("/done"),
        webhook_events_filter=["completed"],
    )
    prediction.wait()
    [hook] = webhook_receiver.wait_for("/done", lambda hooks: len(hooks) >= 1)
    time.sleep(0.5)  # room for any event sent that should not have been
    assert len(webhook_receiver.hooks("/done")) == 1 and hook.json["status"] == "succeeded"


@pytest.mark.parametrize(
    ("webhook", "events", "words"),
    [
        ("http://10.1.2.3/hook", None, "10.1.2.3"),
        ("https://example.com/hook", ["finished"], "webhook_events_filter"),
        (None, ["completed"], "needs a webhook"),
    ],
)
def test_a_webhook_that_cannot_be_used_is_the_clients_error(client, image_server, webhook, events, words) -> None:
    with pytest.raises(ReplicateError) as raised:
        client.models.predictions.create(
            model=PRO, input=small_input(image_server), webhook=webhook, webhook_events_filter=events
        )
    assert raised.value.status == 422 and words in raised.value.detail
