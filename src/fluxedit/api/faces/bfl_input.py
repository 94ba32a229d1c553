"""BFL's request body -> fluxedit's edit input, and BFL's model paths -> served ids.

BFL's FLUX.2 body: `prompt`, `input_image`, `input_image_2` .. `input_image_8` (a URL
or base64), `width`/`height`, `seed`, `output_format` (`jpeg` | `png`),
`safety_tolerance`, and [flex]'s `steps` and `guidance`. `prompt_upsampling` is
accepted and ignored, as unknown names are.
"""

from __future__ import annotations

import re

from pydantic import ValidationError

from fluxedit.errors import InvalidInput, NotFound
from fluxedit.schema import EditInput, invalid_input

IMAGE_FIELDS = ("input_image", *(f"input_image_{n}" for n in range(2, 9)))
NATIVE_ID = "blackforestlabs/flux-2/{name}/edit"
_SLUG = re.compile(r"^flux-2-([a-z0-9-]+)$")
# Base64 openings of the image types fluxedit decodes (their magic bytes, encoded).
_BASE64_TYPES = {"/9j/": "image/jpeg", "iVBORw0KGgo": "image/png", "UklGR": "image/webp"}
_NAMES = {"num_inference_steps": "steps", "guidance_scale": "guidance", "image_size.": ""}


def served_id(slug: str, served: set[str]) -> str:
    """`flux-2-pro` -> `blackforestlabs/flux-2/pro/edit`, when that id is served here."""
    match = _SLUG.match(slug)
    model_id = NATIVE_ID.format(name=match.group(1)) if match else None
    if model_id not in served:
        paths = ", ".join(sorted(bfl_slug(m) for m in served if bfl_slug(m)))
        raise NotFound(f"There is no model at /v1/{slug} here. Models served: {paths or 'none'}.", field="model")
    return model_id


def bfl_slug(model_id: str) -> str | None:
    """The BFL path of a served id of the standard form, else None."""
    match = re.fullmatch(r"blackforestlabs/flux-2/([a-z0-9-]+)/edit", model_id)
    return f"flux-2-{match.group(1)}" if match else None


def edit_input(body: object) -> EditInput:
    """A BFL request body as fluxedit's EditInput; bad values are a 422 naming BFL's field."""
    if not isinstance(body, dict):
        raise InvalidInput("The body must be a JSON object.", field="body")
    names = [name for name in IMAGE_FIELDS if body.get(name)]
    if not names:
        raise InvalidInput(
            "input_image is required: fluxedit edits reference images (a URL or base64).", field="input_image"
        )
    images = [_image_url(name, body[name]) for name in names]
    edit: dict = {"prompt": body.get("prompt"), "image_urls": images, "image_size": _size(body)}
    for ours, theirs in (
        ("seed", "seed"),
        ("output_format", "output_format"),
        ("safety_tolerance", "safety_tolerance"),
        ("num_inference_steps", "steps"),
        ("guidance_scale", "guidance"),
    ):
        if body.get(theirs) is not None:
            edit[ours] = body[theirs]
    try:
        return EditInput.model_validate(edit)
    except ValidationError as exc:
        raise _renamed(invalid_input(exc.errors()), names) from None


def _renamed(error: InvalidInput, names: list[str]) -> InvalidInput:
    """The native error with BFL's names: image_urls[i] is the i-th input_image field given."""
    message, field = error.message, error.field or ""
    reference = re.search(r"image_urls\[(\d+)\]", message)
    if field.startswith("image_urls") and reference and int(reference.group(1)) < len(names):
        field = names[int(reference.group(1))]
        message = message.replace(reference.group(0), field)
    for ours, theirs in _NAMES.items():
        message, field = message.replace(ours, theirs), field.replace(ours, theirs)
    return InvalidInput(message, field=field or None)


def _image_url(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a URL or a base64 string.", field=name)
    if value.startswith(("http://", "https://", "data:")):
        return value
    compact = re.sub(r"\s+", "", value)
    media_type = next((t for prefix, t in _BASE64_TYPES.items() if compact.startswith(prefix)), None)
    if media_type is None:
        raise InvalidInput(f"{name} is neither an http(s) URL nor a base64 JPEG, PNG or WebP image.", field=name)
    return f"data:{media_type};base64,{compact}"


def _size(body: dict) -> object:
    width, height = body.get("width"), body.get("height")
    if width is None and height is None:
        return "auto"  # the first reference's aspect ratio at about 1 MP, as BFL sizes an edit
    if width is None or height is None:
        raise InvalidInput("Give both width and height, or neither.", field="width" if width is None else "height")
    return {"width": width, "height": height}
