"""The OpenAPI document says what the server does: schemathesis, every check, a real server.

Every operation in the document is called with cases drawn from it (its examples, the
edges of each constraint, then random ones) against `fluxedit serve --model tiny` on
127.0.0.1, with the Bearer key. Any server error, undocumented status, answer that
breaks its schema, valid request refused or invalid request accepted fails the test.
The server runs without workers: the jobs these cases queue would fetch the random URLs
they name, and tests look up no names.

The cases are drawn at collection, before any server runs, so the document comes from
the native routes (as the server makes it); the first test checks that the server serves
those very operations and schemas. (schemathesis' lazy fixture loader, which would load
the served document at run time, does not run under pytest 9: it sets a node attribute
pytest 9 no longer has.)
"""

from __future__ import annotations

import pytest
import schemathesis
from fastapi import FastAPI
from pydantic import ValidationError

from _fixtures_server import LiveServer
from fluxedit import __version__
from fluxedit.api.routes import router
from fluxedit.engines.capabilities import capabilities_of
from fluxedit.errors import FluxeditError
from fluxedit.schema import EditInput
from fluxedit.webhooks.sender import check_destination

PRO = "blackforestlabs/flux-2/pro/edit"
MAX_EXAMPLES = 8  # random cases per operation, after its examples and edge cases


def _document() -> dict:
    app = FastAPI(title="fluxedit", version=__version__)
    app.include_router(router)
    return app.openapi()


CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True},
        # A served model, or every submit would be the 404 of an unknown one.
        "parameters": {"model_id": PRO},
        "operations": [
            {
                # An upload must be an image, which JSON Schema cannot describe (the document
                # says it in words): random "valid" bytes are rightly refused. test_api.py
                # uploads real images.
                "include-path": "/v1/files",
                "checks": {"positive_data_acceptance": {"enabled": False}},
            }
        ],
    }
)
schema = schemathesis.openapi.from_dict(_document(), config=CONFIG)


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory):
    server = LiveServer(tmp_path_factory.mktemp("fuzz"), ("--model", "tiny", "--no-workers"), {})
    yield server.start()
    server.stop()


def test_the_server_serves_the_document_fuzzed(fuzzed_server):
    with fuzzed_server.client() as http:
        served = http.get("/openapi.json").json()
    fuzzed = _document()
    assert {path: served["paths"].get(path) for path in fuzzed["paths"]} == fuzzed["paths"]
    schemas = served["components"]["schemas"]
    assert {name: schemas.get(name) for name in fuzzed["components"]["schemas"]} == fuzzed["components"]["schemas"]


@schema.parametrize()
def test_the_server_does_what_its_openapi_document_says(case, fuzzed_server):
    refused = _webhook_refusal(case) if case.meta.generation.mode.is_positive else None
    if refused:
        # A webhook destination the address policy refuses by the URL alone (no scheme, an
        # IP literal inside the network, a filter with no URL): rules on a URL's meaning,
        # which JSON Schema cannot state. The server must refuse it at submit, naming the field.
        answer = case.call(base_url=fuzzed_server.base_url, headers=fuzzed_server.headers())
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["field"] in ("webhook", "webhook_events_filter"), answer.text
        return
    refused_fields = _fields_the_model_cannot_honour(case) if case.meta.generation.mode.is_positive else []
    if refused_fields:
        # Valid fields that the served model's engine cannot honour (safety_tolerance on a local
        # model, ...): a rule of the model, not of the schema. Refused at submit, naming one.
        answer = case.call(base_url=fuzzed_server.base_url, headers=fuzzed_server.headers())
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["field"] in refused_fields, answer.text
        return
    if case.meta.generation.mode.is_positive and _over_the_size_rules(case.body):
        # Width and height each within their bounds, but together over 4 MP (or over JPEG's
        # side): a rule relating two fields, which JSON Schema cannot state (the document
        # gives it in x-size-rules). The server must refuse it, naming image_size.
        answer = case.call(base_url=fuzzed_server.base_url, headers=fuzzed_server.headers())
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["field"] == "image_size", answer.text
        return
    case.call_and_validate(base_url=fuzzed_server.base_url, headers=fuzzed_server.headers())


def _webhook_refusal(case) -> bool:
    """Whether fluxedit's own rules refuse the webhook a submit asks for (its URL, or a filter without one)."""
    if case.operation.method.upper() != "POST" or not case.operation.path.startswith("/v1/models/"):
        return False
    body = case.body if isinstance(case.body, dict) else {}
    urls = [u for u in ((case.query or {}).get("webhook"), body.get("webhook")) if u is not None]
    if not urls:
        return body.get("webhook_events_filter") is not None
    if len(set(urls)) > 1:
        return True
    try:
        check_destination(urls[0], [])
    except FluxeditError:
        return True
    return False


def _fields_the_model_cannot_honour(case) -> list[str]:
    """The body's fields that the tiny model (a local engine) refuses, by fluxedit's own capability table."""
    if case.operation.method.upper() != "POST" or not case.operation.path.startswith("/v1/models/"):
        return []
    try:
        params = EditInput.model_validate(case.body)
    except ValidationError:
        return []
    return capabilities_of("tiny").refused(params)


def _over_the_size_rules(body: object) -> bool:
    """Whether EditInput refuses `body` for its image_size alone."""
    if not isinstance(body, dict) or not isinstance(body.get("image_size"), dict):
        return False
    try:
        EditInput.model_validate(body)
    except ValidationError as exc:
        return all(error["loc"][0] == "image_size" for error in exc.errors())
    return False
