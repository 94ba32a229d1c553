"""Replicate's FLUX.2 edit inputs -> fluxedit's edit input, and two-part model names -> served ids.

The inputs are those of Replicate's own FLUX.2 models (black-forest-labs/flux-2-pro,
-flex, -max, -dev): `prompt`, `input_images`, `aspect_ratio` (`match_input_image`,
`custom` or `W:H`), `resolution` (`match_input_image` or `0.5 MP` .. `4 MP`),
`width`/`height` (with `custom`), `seed`, `output_format` (`jpg` | `png`; `webp` is
refused: fluxedit writes no WebP), `safety_tolerance`, and [flex]'s `steps`/`guidance`.
Inputs that change nothing here (`output_quality`, `go_fast`, `prompt_upsampling`,
`disable_safety_checker`) are accepted and ignored, as unknown names are.
"""

from __future__ import annotations

import hashlib
import math
import re

from pydantic import ValidationError

from fluxedit import sizes
from fluxedit.errors import InvalidInput, NotFound
from fluxedit.schema import EditInput, invalid_input

DEFAULT_MODELS: dict[str, str] = {
    f"black-forest-labs/flux-2-{name}": f"blackforestlabs/flux-2/{name}/edit"
    for name in ("pro", "flex", "max", "dev", "klein-4b", "klein-9b", "klein-9b-kv")
}
_RATIO = re.compile(r"^(\d{1,2}):(\d{1,2})$")
_RESOLUTION = re.compile(r"^(\d+(?:\.\d+)?) ?MP$", re.IGNORECASE)
_FORMATS = {"jpg": "jpeg", "jpeg": "jpeg", "png": "png"}
# Native field names in messages -> the names a Replicate caller sent.
_NAMES = {"image_urls": "input_images", "num_inference_steps": "steps", "guidance_scale": "guidance"}


def model_table(overrides: dict[str, str]) -> dict[str, str]:
    """Replicate model name ("owner/name") -> served model id: the defaults, then the operator's."""
    return {**DEFAULT_MODELS, **overrides}


def served_id(table: dict[str, str], served: set[str], owner: str, name: str) -> str:
    """The served model id for `owner/name`; a native id of two parts is taken as it is."""
    key = f"{owner}/{name}"
    model_id = table.get(key, key)
    if model_id not in served:
        names = ", ".join(sorted(k for k, v in table.items() if v in served))
        raise NotFound(f"Model {key} is not served here. Served models: {names or 'none'}.", field="model")
    return model_id


def replicate_name(table: dict[str, str], model_id: str) -> str:
    """The Replicate name a served id is known by (its first entry in the table), else the id itself."""
    return next((name for name, target in table.items() if target == model_id), model_id)


def version_id(model_id: str) -> str:
    """A stable 64-hex version id per served model, as Replicate's versions look."""
    return hashlib.sha256(model_id.encode()).hexdigest()


def edit_input(raw: object) -> EditInput:
    """A prediction's `input` as fluxedit's EditInput; bad values are a 422 naming Replicate's field."""
    if not isinstance(raw, dict):
        raise InvalidInput("input must be an object of the model's inputs.", field="input")
    images = raw.get("input_images", [raw["input_image"]] if raw.get("input_image") else None)
    if not images:
        raise InvalidInput("input_images is required: a list of 1 to 10 reference image URLs.", field="input_images")
    body: dict = {"prompt": raw.get("prompt"), "image_urls": images, "image_size": _image_size(raw)}
    body["output_format"] = _output_format(raw.get("output_format"))
    for ours, theirs in (
        ("seed", "seed"),
        ("safety_tolerance", "safety_tolerance"),
        ("num_inference_steps", "steps"),
        ("num_inference_steps", "num_inference_steps"),
        ("guidance_scale", "guidance"),
    ):
        if raw.get(theirs) is not None:
            body[ours] = raw[theirs]
    try:
        return EditInput.model_validate(body)
    except ValidationError as exc:
        raise _renamed(invalid_input(exc.errors())) from None


def _renamed(error: InvalidInput) -> InvalidInput:
    message, field = error.message, error.field or ""
    for ours, theirs in _NAMES.items():
        message, field = message.replace(ours, theirs), field.replace(ours, theirs)
    return InvalidInput(message, field=field or None, index=error.index)


def _output_format(value: object) -> str:
    if value is None:
        return "jpeg"
    if value not in _FORMATS:
        raise InvalidInput(
            f"output_format {value!r} is not one fluxedit writes; use jpg or png.", field="output_format"
        )
    return _FORMATS[value]


def _image_size(raw: dict) -> object:
    ratio = raw.get("aspect_ratio") or "match_input_image"
    if ratio == "match_input_image":
        return "auto"  # the first reference's aspect ratio at about 1 MP, whatever `resolution` says
    if ratio == "custom":
        width, height = raw.get("width"), raw.get("height")
        if width is None or height is None:
            raise InvalidInput('aspect_ratio "custom" needs both width and height.', field="width")
        return {"width": width, "height": height}
    match = _RATIO.match(str(ratio))
    if match is None or 0 in (int(match.group(1)), int(match.group(2))):
        raise InvalidInput(
            f"aspect_ratio {ratio!r} is not match_input_image, custom or W:H (e.g. 16:9).", field="aspect_ratio"
        )
    w, h = int(match.group(1)), int(match.group(2))
    pixels = _megapixels(raw.get("resolution")) * 1_000_000
    width = math.sqrt(pixels * w / h)
    return {"width": _side(width), "height": _side(width * h / w)}


def _megapixels(resolution: object) -> float:
    if resolution in (None, "match_input_image"):
        return 1.0
    match = _RESOLUTION.match(str(resolution))
    if match is None or not 0 < float(match.group(1)) <= sizes.MAX_PIXELS / 1_000_000:
        raise InvalidInput(f"resolution {resolution!r} is not match_input_image or 0.5 MP .. 4 MP.", field="resolution")
    return float(match.group(1))


def _side(value: float) -> int:
    return max(sizes.MIN_SIDE, int(value) // sizes.MULTIPLE * sizes.MULTIPLE)
