"""Output sizes: the hosted providers' presets, "auto", and custom width x height."""

from __future__ import annotations

import math

from fluxedit.errors import InvalidInput

PRESETS: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
SIZE_NAMES: tuple[str, ...] = ("auto", *PRESETS)

MULTIPLE = 16  # one latent token covers 16x16 pixels
MIN_SIDE = 64
MAX_PIXELS = 4 * 1024 * 1024  # 4 megapixels
AUTO_PIXELS = 1024 * 1024  # "about one megapixel"


def custom_size(width: int, height: int, *, field: str = "image_size") -> tuple[int, int]:
    """Validate a custom size and round each side down to a multiple of 16."""
    for name, side in (("width", width), ("height", height)):
        if side < MIN_SIDE:
            raise InvalidInput(
                f"{field}.{name} is {side}; each side must be at least {MIN_SIDE} pixels.",
                field=f"{field}.{name}",
            )
    w, h = width - width % MULTIPLE, height - height % MULTIPLE
    if w * h > MAX_PIXELS:
        raise InvalidInput(
            f"{field} {width}x{height} is {w * h / 1e6:.1f} megapixels; at most {MAX_PIXELS / 1e6:.1f} "
            f"megapixels ({MAX_PIXELS} pixels, e.g. 2048x2048) are allowed.",
            field=field,
        )
    return w, h


def auto_size(reference_width: int, reference_height: int) -> tuple[int, int]:
    """The reference's aspect ratio at about one megapixel, sides multiples of 16."""
    aspect = reference_width / reference_height
    w = math.sqrt(AUTO_PIXELS * aspect)
    h = w / aspect
    w16 = max(MIN_SIDE, round(w / MULTIPLE) * MULTIPLE)
    h16 = max(MIN_SIDE, round(h / MULTIPLE) * MULTIPLE)
    return w16, h16


def resolve_size(image_size: str | tuple[int, int], first_reference: tuple[int, int] | None = None) -> tuple[int, int]:
    """(width, height) in pixels for a preset name, "auto" or a custom (width, height).

    "auto" needs the first reference's (width, height).
    """
    if isinstance(image_size, str):
        if image_size == "auto":
            if first_reference is None:
                raise ValueError('"auto" size needs the first reference image')
            return auto_size(*first_reference)
        if image_size in PRESETS:
            return PRESETS[image_size]
        raise InvalidInput(
            f"image_size {image_size!r} is not a known size; use one of {', '.join(SIZE_NAMES)} "
            'or {"width": W, "height": H}.',
            field="image_size",
        )
    width, height = image_size
    return custom_size(width, height)


def parse_size_arg(text: str) -> str | tuple[int, int]:
    """CLI form: a preset name, "auto", or "WxH"."""
    text = text.strip().lower()
    if text in SIZE_NAMES:
        return text
    parts = text.split("x")
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        return custom_size(int(parts[0]), int(parts[1]), field="--size")
    raise InvalidInput(
        f"--size {text!r} is not a size; use one of {', '.join(SIZE_NAMES)} or WxH such as 1024x768.",
        field="--size",
    )
