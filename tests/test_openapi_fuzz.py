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
from fluxedit.schema import EditInput

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
    if case.meta.generation.mode.is_positive and _over_the_size_rules(case.body):
        # Width and height each within their bounds, but together over 4 MP (or over JPEG's
        # side): a rule relating two fields, which JSON Schema cannot state (the document
        # gives it in x-size-rules). The server must refuse it, naming image_size.
        answer = case.call(base_url=fuzzed_server.base_url, headers=fuzzed_server.headers())
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["field"] == "image_size", answer.text
        return
    case.call_and_validate(base_url=fuzzed_server.base_url, headers=fuzzed_server.headers())


def _over_the_size_rules(body: object) -> bool:
    """Whether EditInput refuses `body` for its image_size alone."""
    if not isinstance(body, dict) or not isinstance(body.get("image_size"), dict):
        return False
    try:
        EditInput.model_validate(body)
    except ValidationError as exc:
        return all(error["loc"][0] == "image_size" for error in exc.errors())
    return False
