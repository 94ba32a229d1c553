"""Decode reference images safely into exactly what the model takes as input.

Untrusted bytes go through three gates, cheapest first:

1. the header alone (Pillow's `Image.open` is lazy): the format must be one we
   accept, the pixel count must be under `max_pixels`, each side at least 64 px and
   the aspect ratio at most 8:1 -- all refused before a single pixel is allocated;
2. the pixel data: decoded at reduced scale where the format allows (JPEG DCT
   scaling through `Image.draft`), because the model downsizes anyway;
3. normalisation: EXIF orientation, colour profile, any mode to RGB (alpha on
   white, 16-bit scaled, not clipped), then resized to about `target_pixels` and
   centre-cropped to multiples of 16, as FLUX.2's pipelines do.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageCms, ImageOps

from fluxedit.errors import ImageInputError

__all__ = ["Reference", "decode_reference", "encode_image", "open_header", "check_pixels", "ACCEPTED_FORMATS"]

# Raster formats people send as references. Restricting Pillow's plugins keeps
# obscure parsers (and EPS, which would run Ghostscript) away from untrusted bytes.
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")

MIN_SIDE = 64
MAX_ASPECT = 8.0
MULTIPLE = 16  # one latent token covers 16x16 pixels
JPEG_QUALITY = 95
# zlib level for output PNGs. Measured on 4 MP photo-like pictures on the project's 2-core machine:
# level 3 takes a third of the default level 6's time (1.2 s against 3.5 to 4 s) for 0 to 9% more bytes;
# level 1 saves another 0.4 s for up to 18% more.
PNG_COMPRESS_LEVEL = 3

_SRGB = ImageCms.createProfile("sRGB")


@dataclass(frozen=True)
class Reference:
    """A decoded reference: the model's input image, and the size a person sees (before resize and crop)."""

    image: Image.Image
    source_size: tuple[int, int]


def decode_reference(
    data: bytes,
    *,
    index: int | None = None,
    max_pixels: int = 64_000_000,
    target_pixels: int | None = 1024 * 1024,
) -> Reference:
    """Decode one reference image into the RGB image the model takes as input.

    `index` is the image's position in `image_urls`; it goes into errors. With
    `target_pixels=None` the image keeps its full size (no resize, no crop).
    `source_size` is the (width, height) before resizing and cropping.

    Raises `ImageInputError` with code `input_not_image` (not an image, truncated,
    unsupported format), `input_too_large` (more than `max_pixels` pixels) or
    `input_invalid` (a side under 64 px, aspect ratio over 8:1).
    """
    image = open_header(data, index=index, max_pixels=max_pixels)
    width, height = image.size
    check_pixels(width, height, index=index, max_pixels=max_pixels)
    _check_shape(width, height, index=index)

    # The size a person sees (EXIF orientation applied), before any resize or crop:
    # "auto" output sizes follow its aspect ratio, not the cropped one.
    swaps_sides = _swaps_sides(image)
    source_size = (height, width) if swaps_sides else (width, height)
    size = None
    if target_pixels is not None and width * height > target_pixels:
        # From the header's size, as diffusers' Flux2ImageProcessor computes it.
        size = _target_size(width, height, target_pixels)
        # DCT scaling: a JPEG decodes at 1/2, 1/4 or 1/8 scale, never below the
        # size asked for (a no-op for other formats).
        image.draft("RGB", size)
        if swaps_sides:
            size = size[::-1]
    try:
        ImageOps.exif_transpose(image, in_place=True)  # loads the pixels
        image = _to_srgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_large(index, f"{exc}") from exc
    except Exception as exc:  # Pillow's decoders raise many types on corrupt data
        raise _not_image(index, f"its data is damaged or truncated ({exc})") from exc

    if target_pixels is not None:
        if size is not None:
            image = image.resize(size, _resample(image.size, size))
        image = _crop16(image)
    return Reference(image, source_size)


def encode_image(image: Image.Image, fmt: str) -> bytes:
    """Encode an output image as "jpeg" (quality 95) or "png"."""
    buffer = io.BytesIO()
    if fmt == "jpeg":
        if image.mode != "RGB":
            image = _rgb(image)
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    elif fmt == "png":
        image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        raise ValueError(f'output format must be "jpeg" or "png", not {fmt!r}')
    return buffer.getvalue()


# --- the gates -----------------------------------------------------------------


def _label(index: int | None) -> str:
    return "The reference image" if index is None else f"image_urls[{index}]"


def _not_image(index: int | None, why: str) -> ImageInputError:
    return ImageInputError(f"{_label(index)} cannot be used: {why}.", code="input_not_image", index=index)


def _too_large(index: int | None, why: str) -> ImageInputError:
    return ImageInputError(f"{_label(index)} is too large: {why}", code="input_too_large", index=index)


def open_header(data: bytes, *, index: int | None = None, max_pixels: int = 64_000_000) -> Image.Image:
    """Read the header only (pixels are decoded later, on load); ImageInputError if it is no image we take."""
    if not data:
        raise _not_image(index, "it is empty")
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own limit (global MAX_IMAGE_PIXELS, which we leave alone) fires first
        # for absurd headers, before the size is known here; a warning only arrives here
        # if the host application turned warnings into errors.
        raise _too_large(index, f"{exc} At most {max_pixels:,} pixels are accepted.") from exc
    except Image.UnidentifiedImageError as exc:
        raise _not_image(
            index,
            f"it is not an image in a supported format ({', '.join(ACCEPTED_FORMATS)}); it starts with {data[:16]!r}",
        ) from exc
    except Exception as exc:  # a damaged header can raise anything from a plugin
        raise _not_image(index, f"its header is damaged ({exc})") from exc
    if image.format == "MPO":  # the JPEG plugin opens multi-picture files as MPO
        image.seek(0)  # the primary picture of a multi-picture JPEG
    return image


def check_pixels(width: int, height: int, *, index: int | None = None, max_pixels: int) -> None:
    """Refuse (input_too_large) a header size of more than `max_pixels` pixels."""
    if width * height > max_pixels:
        raise _too_large(
            index,
            f"{width}x{height} is {width * height:,} pixels; at most {max_pixels:,} pixels are accepted.",
        )


def _check_shape(width: int, height: int, *, index: int | None) -> None:
    if min(width, height) < MIN_SIDE:
        raise ImageInputError(
            f"{_label(index)} is {width}x{height} pixels; each side must be at least {MIN_SIDE} pixels.",
            code="input_invalid",
            index=index,
        )
    aspect = max(width, height) / min(width, height)
    if aspect > MAX_ASPECT:
        raise ImageInputError(
            f"{_label(index)} is {width}x{height} pixels, an aspect ratio of {aspect:.1f}:1; "
            f"at most {MAX_ASPECT:.0f}:1 is accepted.",
            code="input_invalid",
            index=index,
        )


# --- normalisation -----------------------------------------------------------------


def _to_srgb(image: Image.Image) -> Image.Image:
    """Any mode to 8-bit sRGB; an embedded ICC profile (CMYK, Display P3) is honoured."""
    profile = image.info.get("icc_profile")
    if profile and image.mode in ("RGB", "CMYK"):
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            return ImageCms.profileToProfile(image, source, _SRGB, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError):
            pass  # a broken profile: fall back to the plain conversion
    return _rgb(image)


def _rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _wide_to_rgb(image)
    if image.mode == "LAB":  # Pillow's plain convert is not colorimetric for LAB
        lab_to_srgb = ImageCms.buildTransform(ImageCms.createProfile("LAB"), _SRGB, "LAB", "RGB")
        return ImageCms.applyTransform(image, lab_to_srgb)
    has_alpha = image.mode in ("RGBA", "RGBa", "LA", "La", "PA")
    if has_alpha or "transparency" in image.info:  # tRNS in a P, L or RGB PNG; GIF transparency
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")  # P, L, 1, CMYK (Pillow reads Adobe inverted CMYK), YCbCr


def _wide_to_rgb(image: Image.Image) -> Image.Image:
    """16/32-bit grey to 8 bits by scaling; Pillow's convert clips, turning most of it white."""
    values = np.asarray(image)
    if image.mode.startswith("I;16"):
        scaled = values.astype(np.float32) / 257.0
    elif image.mode == "F":
        top = float(values.max()) if values.size else 0.0
        scaled = values * 255.0 if top <= 1.0 else values  # 0..1 floats, else assume 0..255
    else:  # "I": 8-bit, 16-bit or wider samples stored in int32
        top = int(values.max()) if values.size else 0
        scaled = values.astype(np.float32) * (1 if top <= 255 else 255.0 / (65535 if top <= 65535 else top))
    grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def _target_size(width: int, height: int, target_pixels: int) -> tuple[int, int]:
    """About `target_pixels` with the same aspect, as diffusers' Flux2ImageProcessor computes it."""
    scale = math.sqrt(target_pixels / (width * height))
    return max(1, int(width * scale)), max(1, int(height * scale))


def _resample(source: tuple[int, int], size: tuple[int, int]) -> Image.Resampling:
    """BICUBIC for big steps; under 2x (what is left after JPEG DCT scaling) Pillow's
    antialiased BILINEAR is within a fraction of a dB of LANCZOS at a third of its cost."""
    return Image.Resampling.BILINEAR if source[0] < 2 * size[0] else Image.Resampling.BICUBIC


def _swaps_sides(image: Image.Image) -> bool:
    """Whether the EXIF orientation turns the image by 90 degrees."""
    try:
        return image.getexif().get(ExifTags.Base.Orientation) in (5, 6, 7, 8)
    except Exception:  # unreadable EXIF: exif_transpose will ignore it too
        return False


def _crop16(image: Image.Image) -> Image.Image:
    """Centre-crop to multiples of 16, as the FLUX.2 pipelines do."""
    width, height = image.size
    w16 = max(MULTIPLE, width // MULTIPLE * MULTIPLE)
    h16 = max(MULTIPLE, height // MULTIPLE * MULTIPLE)
    if (w16, h16) == (width, height):
        return image
    left, top = (width - w16) // 2, (height - h16) // 2
    return image.crop((left, top, left + w16, top + h16))
