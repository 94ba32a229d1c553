"""Replicate's and BFL's inputs as fluxedit's edit input: names, sizes, formats, and the errors that name their field."""

from __future__ import annotations

import base64

import pytest

from _fixtures_images import png_bytes
from fluxedit.api.faces import bfl_input, replicate_input
from fluxedit.errors import InvalidInput, NotFound
from fluxedit.schema import CustomImageSize

REF = "https://example.com/ref.png"


def replicate(**fields) -> dict:
    return {"prompt": "a hat", "input_images": [REF], **fields}


def test_replicate_names_become_the_edit_input() -> None:
    edit = replicate_input.edit_input(
        replicate(seed=5, output_format="jpg", steps=12, guidance=3.5, safety_tolerance=2, go_fast=True)
    )
    assert edit.image_urls == [REF] and edit.seed == 5 and edit.output_format == "jpeg"
    assert (edit.num_inference_steps, edit.guidance_scale, edit.safety_tolerance) == (12, 3.5, 2)
    assert edit.image_size == "auto"


@pytest.mark.parametrize(
    ("fields", "size"),
    [
        ({"aspect_ratio": "1:1"}, (992, 992)),  # 1 MP: sqrt(1e6) = 1000, down to a multiple of 16
        ({"aspect_ratio": "16:9", "resolution": "1 MP"}, (1328, 736)),
        ({"aspect_ratio": "2:3", "resolution": "0.5 MP"}, (576, 864)),
        ({"aspect_ratio": "custom", "width": 640, "height": 480}, (640, 480)),
    ],
)
def test_replicate_aspect_ratio_and_resolution_set_the_size(fields, size) -> None:
    edit = replicate_input.edit_input(replicate(**fields))
    assert isinstance(edit.image_size, CustomImageSize)
    assert (edit.image_size.width, edit.image_size.height) == size


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"input_images": []}, "input_images"),
        ({"input_images": ["ftp://x/y.png"]}, "input_images"),
        ({"output_format": "webp"}, "output_format"),
        ({"aspect_ratio": "0:1"}, "aspect_ratio"),
        ({"aspect_ratio": "1:1", "resolution": "9 MP"}, "resolution"),
        ({"aspect_ratio": "custom", "width": 640}, "width"),
        ({"steps": 0}, "steps"),
    ],
)
def test_replicate_bad_inputs_name_replicates_field(fields, field) -> None:
    with pytest.raises(InvalidInput) as raised:
        replicate_input.edit_input(replicate(**fields))
    assert raised.value.field == field


def test_replicate_model_names_map_to_served_ids_with_overrides() -> None:
    table = replicate_input.model_table({"acme/edit": "my/model/edit"})
    served = {"blackforestlabs/flux-2/pro/edit", "my/model/edit"}
    assert (
        replicate_input.served_id(table, served, "black-forest-labs", "flux-2-pro") == "blackforestlabs/flux-2/pro/edit"
    )
    assert replicate_input.served_id(table, served, "acme", "edit") == "my/model/edit"
    assert replicate_input.replicate_name(table, "my/model/edit") == "acme/edit"
    with pytest.raises(NotFound, match="acme/edit"):
        replicate_input.served_id(table, served, "black-forest-labs", "flux-2-dev")


def test_bfl_fields_and_base64_become_the_edit_input() -> None:
    raw = base64.b64encode(png_bytes()).decode()
    edit = bfl_input.edit_input(
        {"prompt": "a hat", "input_image": REF, "input_image_3": raw, "width": 512, "height": 384, "steps": 20}
    )
    assert edit.image_urls[0] == REF and edit.image_urls[1] == f"data:image/png;base64,{raw}"
    assert (edit.image_size.width, edit.image_size.height, edit.num_inference_steps) == (512, 384, 20)


def test_bfl_bad_inputs_name_bfls_field() -> None:
    with pytest.raises(InvalidInput) as raised:
        bfl_input.edit_input({"prompt": "a hat", "input_image": REF, "input_image_2": "ftp://x/y.png"})
    assert raised.value.field == "input_image_2"
    with pytest.raises(InvalidInput) as raised:  # a data: URI that is not an image, after a gap
        bfl_input.edit_input({"prompt": "a hat", "input_image": REF, "input_image_4": "data:text/plain;base64,aGk="})
    assert raised.value.field == "input_image_4" and "input_image_4" in raised.value.message
    with pytest.raises(InvalidInput) as raised:
        bfl_input.edit_input({"prompt": "a hat", "input_image": REF, "width": 8, "height": 64})
    assert raised.value.field == "width"


def test_bfl_paths_map_to_served_standard_ids() -> None:
    served = {"blackforestlabs/flux-2/pro/edit", "blackforestlabs/flux-2/klein-4b/edit", "mine/edit"}
    assert bfl_input.served_id("flux-2-klein-4b", served) == "blackforestlabs/flux-2/klein-4b/edit"
    with pytest.raises(NotFound, match="flux-2-klein-4b, flux-2-pro"):
        bfl_input.served_id("flux-2-max", served)
