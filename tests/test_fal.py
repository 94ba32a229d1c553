"""fal's own Python client (fal-client) against `fluxedit serve --model tiny` over TLS.

The client is configured as docs/compat.md tells a user to: FAL_QUEUE_RUN_HOST,
FAL_RUN_HOST, FAL_KEY, and SSL_CERT_FILE for the test's own CA. It runs in a
subprocess because fal_client reads its hosts once, at import.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import textwrap
import time

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from httpx_sse import connect_sse
from PIL import Image

from _fixtures_images import png_bytes
from _fixtures_server import LiveServer
from _fixtures_tls import Tls

PRO_APP = "fal-ai/flux-2-pro/edit"
KLEIN_APP = "fal-ai/flux-2/klein/4b/edit"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tls, image_server):
    image_server.add("/fal-ref.png", png_bytes((96, 64)), "image/png")
    server = LiveServer(
        tmp_path_factory.mktemp("fal-server"),
        ("--model", "tiny", *tls.serve_args()),
        {"fetch_allow": '["127.0.0.1"]'},
        verify=tls.context(),
    ).start()
    yield server
    server.stop()


@pytest.fixture
def arguments(image_server) -> dict:
    size = {"width": 128, "height": 128}  # small: quick on the tiny model
    return {"prompt": "a red hat", "image_urls": [image_server.url("/fal-ref.png")], "image_size": size}


def fal(server: LiveServer, tls: Tls, script: str, *, wait: bool = True):
    """Run `script` with fal_client set up as a user would; it prints its findings as JSON.

    wait=False: the running process (a Popen), to talk to while it runs."""
    host = f"127.0.0.1:{server.port}"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(server.data_dir),  # no ~/.fal of the machine's user
        "FAL_KEY": server.api_key,
        "FAL_QUEUE_RUN_HOST": f"{host}/fal",
        "FAL_RUN_HOST": f"{host}/fal/run",
        "SSL_CERT_FILE": str(tls.ca_file),  # fal_client's httpx trusts this CA file
    }
    command = [sys.executable, "-c", "import json, fal_client\n" + textwrap.dedent(script)]
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)


def findings(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def blocker(server: LiveServer, image_server) -> str:
    """A long native job on the one engine, so that the next job waits in the queue."""
    body = {
        "prompt": "hold the queue",
        "image_urls": [image_server.url("/fal-ref.png")],
        "image_size": "square_hd",
        "num_inference_steps": 100,
    }
    with server.client() as http:
        request_id = http.post("/v1/models/blackforestlabs/flux-2/dev/edit", json=body).json()["request_id"]
    server.wait_for(request_id, {"in_progress"})
    return request_id


def cancel_native(server: LiveServer, request_id: str) -> None:
    with server.client() as http:
        http.post(f"/v1/requests/{request_id}/cancel")


def test_submit_status_and_result_over_tls(server, tls, arguments):
    script = f"""
    handle = fal_client.submit({PRO_APP!r}, arguments={{**{arguments!r}, "seed": 3, "output_format": "png"}})
    first = handle.status()
    result = handle.get()
    final = handle.status(with_logs=True)
    print(json.dumps({{"id": handle.request_id, "first": type(first).__name__, "final": type(final).__name__,
                      "logs": final.logs, "metrics": final.metrics, "result": result}}))
    """
    seen = findings(fal(server, tls, script))

    assert seen["first"] in {"Queued", "InProgress", "Completed"} and seen["final"] == "Completed"
    assert [line["message"] for line in seen["logs"]] == [f"Denoising step {n}/4" for n in range(1, 5)]
    assert seen["metrics"]["inference_time"] > 0
    result = seen["result"]
    [image] = result["images"]
    assert image["url"].startswith(server.base_url + "/files/outputs/")
    assert (image["width"], image["height"], image["content_type"]) == (128, 128, "image/png")
    assert (result["seed"], result["prompt"], result["has_nsfw_concepts"]) == (3, "a red hat", [False])
    assert result["timings"]["inference"] > 0
    with server.client() as http:
        downloaded = Image.open(io.BytesIO(http.get(image["url"]).content))
        native = http.get(f"/v1/requests/{seen['id']}/result").json()
    assert (downloaded.format, downloaded.size) == ("PNG", (128, 128))
    assert native["status"] == "completed" and native["model_id"] == "blackforestlabs/flux-2/pro/edit"
    unsigned = [url.split("?")[0] for url in native["output"]["images"]]
    assert unsigned == [image["url"].split("?")[0]], "the same job row as a native submit"


def test_subscribe_with_logs_sees_the_queue_then_progress(server, tls, arguments, image_server):
    ahead = blocker(server, image_server)
    script = f"""
    import sys
    updates = []
    def on_queue_update(update):
        logs = getattr(update, "logs", None) or []
        updates.append([type(update).__name__, getattr(update, "position", None), [l["message"] for l in logs]])
        if len(updates) == 1:
            print("QUEUED" if type(update).__name__ == "Queued" else "NOT QUEUED", flush=True)
    result = fal_client.subscribe({KLEIN_APP!r}, arguments={{**{arguments!r}, "num_inference_steps": 30}},
                                  with_logs=True, on_queue_update=on_queue_update)
    print(json.dumps({{"updates": updates, "images": len(result["images"])}}))
    """
    with fal(server, tls, script, wait=False) as proc:
        first_line = proc.stdout.readline()
        cancel_native(server, ahead)  # the job ahead stops at its next step; ours runs
        out, err = proc.communicate(timeout=180)
    assert first_line.strip() == "QUEUED", err
    seen = findings(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))

    kinds = [kind for kind, _, _ in seen["updates"]]
    assert seen["updates"][0][1] == 0, "next in the queue (fal counts from 0)"
    assert "InProgress" in kinds and kinds[-1] == "Completed"
    progress_logs = [logs for kind, _, logs in seen["updates"] if kind == "InProgress" and logs]
    assert progress_logs and progress_logs[-1][0] == "Denoising step 1/30"
    assert seen["images"] == 1


def test_cancel_of_a_queued_job_and_then_of_a_finished_one(server, tls, arguments, image_server):
    ahead = blocker(server, image_server)
    script = f"""
    handle = fal_client.submit({KLEIN_APP!r}, arguments={arguments!r})
    queued = handle.status()
    fal_client.cancel({KLEIN_APP!r}, handle.request_id)
    after = handle.status()
    try:
        handle.cancel()
        again = None
    except fal_client.FalClientHTTPError as exc:
        again = [exc.status_code, exc.response.json()]
    print(json.dumps({{"queued": type(queued).__name__, "after": [type(after).__name__, after.error_type],
                      "again": again}}))
    """
    try:
        seen = findings(fal(server, tls, script))
    finally:
        cancel_native(server, ahead)

    assert seen["queued"] == "Queued"
    assert seen["after"] == ["Completed", "cancelled"]
    status, body = seen["again"]
    assert status == 400 and body["status"] == "ALREADY_COMPLETED" and "finished" in body["detail"]


def test_run_answers_the_output_and_num_images_gives_two(server, tls, arguments):
    script = f"""
    result = fal_client.run({KLEIN_APP!r}, arguments={{**{arguments!r}, "num_images": 2, "seed": 11}})
    print(json.dumps(result))
    """
    result = findings(fal(server, tls, script))

    assert len(result["images"]) == 2 and result["has_nsfw_concepts"] == [False, False]
    first, second = (httpx.get(image["url"], verify=tls.context()).content for image in result["images"])
    assert first != second, "two images, each from its own noise"
    assert result["seed"] == 11


def test_bad_input_is_reported_by_the_client_with_the_field(server, tls, arguments):
    script = f"""
    errors = {{}}
    for name, app, args in [
        ("empty", {PRO_APP!r}, {{**{arguments!r}, "image_urls": []}}),
        ("webp", {PRO_APP!r}, {{**{arguments!r}, "output_format": "webp"}}),
        ("checker", {PRO_APP!r}, {{**{arguments!r}, "enable_safety_checker": True}}),
        ("unknown", "acme/nope/edit", {arguments!r}),
    ]:
        try:
            fal_client.submit(app, arguments=args)
        except fal_client.FalClientHTTPError as exc:
            errors[name] = [exc.status_code, str(exc)]
    print(json.dumps(errors))
    """
    errors = findings(fal(server, tls, script))

    assert errors["empty"][0] == 422 and "image_urls" in errors["empty"][1]
    assert errors["webp"][0] == 422 and "output_format" in errors["webp"][1]
    assert errors["checker"][0] == 422 and "enable_safety_checker" in errors["checker"][1]
    assert errors["unknown"][0] == 404 and PRO_APP in errors["unknown"][1], "lists the apps served"


def fal_signature_ok(hook, jwks: dict) -> bool:
    """A receiver's check, as fal's guide writes it, with the keys of the JWKS."""
    headers = hook.headers
    if abs(time.time() - int(headers["x-fal-webhook-timestamp"])) > 300:
        return False
    message = "\n".join(
        (
            headers["x-fal-webhook-request-id"],
            headers["x-fal-webhook-user-id"],
            headers["x-fal-webhook-timestamp"],
            hashlib.sha256(hook.body).hexdigest(),
        )
    ).encode()
    for key in jwks["keys"]:
        public = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(key["x"] + "=" * (-len(key["x"]) % 4)))
        try:
            public.verify(bytes.fromhex(headers["x-fal-webhook-signature"]), message)
            return True
        except InvalidSignature:
            continue
    return False


def test_fal_webhook_posts_the_result_signed_as_fal_signs(server, tls, arguments, webhook_receiver):
    script = f"""
    handle = fal_client.submit({PRO_APP!r}, arguments={arguments!r}, webhook_url={webhook_receiver.url("/fal")!r})
    print(json.dumps(handle.request_id))
    """
    request_id = findings(fal(server, tls, script))
    [hook] = webhook_receiver.wait_for("/fal", lambda hooks: len(hooks) >= 1)
    with server.client() as http:
        jwks = http.get("/fal/.well-known/jwks.json").json()  # public: no key needed
        output = http.get(
            f"/fal/fal-ai/flux-2-pro/requests/{request_id}", headers={"Authorization": f"Key {server.api_key}"}
        )

    assert fal_signature_ok(hook, jwks)
    tampered = dataclasses.replace(hook, body=hook.body.replace(b'"OK"', b'"ERROR"'))
    assert not fal_signature_ok(tampered, jwks)
    body = hook.json
    assert (body["request_id"], body["gateway_request_id"], body["status"]) == (request_id, request_id, "OK")
    assert body["payload"] == output.json()  # what the result URL answers


def test_an_internal_fal_webhook_is_refused_naming_it(server, tls, arguments):
    script = f"""
    try:
        fal_client.submit({PRO_APP!r}, arguments={arguments!r}, webhook_url="http://10.1.2.3/hook")
        print(json.dumps(None))
    except fal_client.FalClientHTTPError as exc:
        print(json.dumps([exc.status_code, str(exc)]))
    """
    status, message = findings(fal(server, tls, script))
    assert status == 422 and "fal_webhook" in message and "10.1.2.3" in message


def test_status_stream_sends_fal_statuses_until_completed(server, tls, arguments):
    with server.client() as http:
        submitted = http.post(f"/fal/{KLEIN_APP}", json=arguments, headers={"Authorization": f"Key {server.api_key}"})
        assert submitted.status_code == 200, submitted.text
        with connect_sse(http, "GET", submitted.json()["status_url"] + "/stream", params={"logs": 1}) as events:
            statuses = [json.loads(event.data) for event in events.iter_sse()]
    assert statuses[-1]["status"] == "COMPLETED" and statuses[-1]["logs"][-1]["message"] == "Denoising step 4/4"
    assert all(s["request_id"] == submitted.json()["request_id"] for s in statuses)


def test_models_list_the_fal_apps_of_each_model(server):
    with server.client() as http:
        models = {m["id"]: m for m in http.get("/v1/models").json()["models"]}
    assert models["blackforestlabs/flux-2/pro/edit"]["fal_apps"] == [PRO_APP]
    assert models["blackforestlabs/flux-2/klein-4b/edit"]["fal_apps"] == [KLEIN_APP]
