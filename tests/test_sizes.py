"""Output sizes as a user asks for them: presets, auto, custom; each gives exactly its pixels."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from _fixtures_engine import reference_image
from fluxedit import sizes
from fluxedit.engines.base import EditRequest
from fluxedit.errors import InvalidInput
from fluxedit.schema import EditInput

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def edit_input(**change) -> EditInput:
    return EditInput(prompt="x", image_urls=["https://example.com/a.png"], **change)


@pytest.mark.parametrize("preset", sorted(sizes.PRESETS))
def test_every_preset_gives_its_exact_pixel_size(tiny_engine, preset):
    width, height = edit_input(image_size=preset).output_size((640, 480))
    assert (width, height) == sizes.PRESETS[preset]
    [image] = tiny_engine.edit(EditRequest("x", [reference_image(0)], width, height, steps=1))
    assert image.size == sizes.PRESETS[preset]


def test_the_hosted_presets_table():
    assert sizes.PRESETS == {
        "square_hd": (1024, 1024),
        "square": (512, 512),
        "portrait_4_3": (768, 1024),
        "portrait_16_9": (576, 1024),
        "landscape_4_3": (1024, 768),
        "landscape_16_9": (1024, 576),
    }


@pytest.mark.parametrize(
    ("reference", "expected"),
    [((600, 900), (832, 1248)), ((900, 600), (1248, 832)), ((512, 512), (1024, 1024)), ((100, 800), (368, 2896))],
)
def test_auto_follows_the_first_reference_at_about_one_megapixel(reference, expected):
    width, height = edit_input().output_size(reference)
    assert (width, height) == expected
    assert width % 16 == 0 and height % 16 == 0
    assert abs(width * height / 2**20 - 1) < 0.05
    assert (width > height) == (reference[0] > reference[1]) or reference[0] == reference[1]


@pytest.mark.parametrize(
    ("asked", "got"), [((1000, 700), (992, 688)), ((64, 64), (64, 64)), ((2048, 2048), (2048, 2048))]
)
def test_custom_sizes_round_down_to_multiples_of_16(asked, got):
    assert edit_input(image_size={"width": asked[0], "height": asked[1]}).output_size((1, 1)) == got


@pytest.mark.parametrize(
    ("size", "says"),
    [
        ({"width": 3, "height": 5}, "greater than or equal to 64"),
        ({"width": 5000, "height": 5000}, "megapixels"),
        ({"width": 2049, "height": 2064}, "megapixels"),
        ("huge", "square_hd"),
        ({"width": 512}, "height"),
    ],
)
def test_bad_sizes_name_the_field_and_what_is_allowed(size, says):
    with pytest.raises(ValidationError) as caught:
        edit_input(image_size=size)
    [error] = caught.value.errors()[:1]
    assert error["loc"][0] == "image_size"
    assert says in error["msg"] or says in str(error["loc"])


def test_cli_size_argument():
    assert sizes.parse_size_arg("landscape_4_3") == "landscape_4_3"
    assert sizes.parse_size_arg("1000x700") == (992, 688)
    with pytest.raises(InvalidInput, match="not a size"):
        sizes.parse_size_arg("big")


def test_openapi_carries_the_size_rules_the_playground_reads():
    from fastapi import FastAPI

    from fluxedit.api.routes import router

    app = FastAPI()
    app.include_router(router)
    field = app.openapi()["components"]["schemas"]["EditInput"]["properties"]["image_size"]
    assert {k: (v["width"], v["height"]) for k, v in field["x-presets"].items()} == sizes.PRESETS
    assert field["x-size-rules"]["max_pixels"] == sizes.MAX_PIXELS
    assert field["x-size-rules"]["multiple"] == 16
