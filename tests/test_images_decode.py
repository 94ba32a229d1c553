"""decode_reference / encode_image on real files written by Pillow."""

from __future__ import annotations

import io
import math
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import ExifTags, Image

from fluxedit.errors import ImageInputError
from fluxedit.images.decode import decode_reference, encode_image

MP = 1024 * 1024


def save(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def noisy(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def png_with_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, followed by almost no pixel data."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def refused(data: bytes, code: str, **kwargs) -> ImageInputError:
    with pytest.raises(ImageInputError) as caught:
        decode_reference(data, **kwargs)
    assert caught.value.code == code, caught.value.message
    return caught.value


# --- orientation and modes ---------------------------------------------------------


def test_exif_orientation_6_is_applied():
    image = Image.new("RGB", (320, 160), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 32, 32))  # red in the stored top-left corner
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # "rotate 90 degrees clockwise to display"
    out = decode_reference(save(image, "JPEG", exif=exif, quality=95)).image
    assert out.size == (160, 320)
    r, g, b = out.getpixel((160 - 8, 8))  # the corner is now top-right
    assert r > 200 and g < 60 and b < 60
    r, g, b = out.getpixel((8, 8))
    assert b > 200 and r < 60


def test_rgba_png_transparent_pixels_become_white():
    image = Image.new("RGBA", (128, 128), (0, 0, 0, 0))  # transparent black
    image.paste((200, 10, 10, 255), (64, 0, 128, 128))  # opaque red on the right
    out = decode_reference(save(image, "PNG")).image
    assert out.mode == "RGB" and out.size == (128, 128)
    assert out.getpixel((10, 10)) == (255, 255, 255)
    assert out.getpixel((100, 10)) == (200, 10, 10)


def test_cmyk_jpeg_colours_convert_to_rgb():
    image = Image.new("CMYK", (128, 128), (255, 0, 0, 0))  # pure cyan ink
    image.paste((0, 255, 255, 0), (0, 0, 64, 128))  # magenta + yellow = red
    out = decode_reference(save(image, "JPEG", quality=95)).image
    assert out.mode == "RGB"
    r, g, b = out.getpixel((100, 64))
    assert r < 40 and g > 215 and b > 215, (r, g, b)  # cyan
    r, g, b = out.getpixel((20, 64))
    assert r > 215 and g < 40 and b < 40, (r, g, b)  # red


def test_grayscale_png():
    out = decode_reference(save(Image.new("L", (96, 96), 100), "PNG")).image
    assert out.mode == "RGB" and out.getpixel((5, 5)) == (100, 100, 100)


def test_16_bit_png_is_scaled_not_clipped_to_white():
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (64, 1))  # black to white
    image = Image.fromarray(ramp)
    data = save(image, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = np.asarray(decode_reference(data).image)
    assert out.shape == (64, 256, 3)
    assert out[0, 0].tolist() == [0, 0, 0]
    assert out[0, 255].tolist() == [255, 255, 255]
    assert abs(int(out[0, 128, 0]) - 128) <= 2  # mid-grey stays mid-grey


def test_palette_png_with_transparency():
    image = Image.new("P", (96, 96), 0)
    image.putpalette([0, 0, 0, 0, 128, 0] + [0] * 762)  # index 0 black, 1 green
    image.paste(1, (48, 0, 96, 96))
    out = decode_reference(save(image, "PNG", transparency=0)).image
    assert out.getpixel((10, 10)) == (255, 255, 255)  # transparent black -> white
    assert out.getpixel((70, 10)) == (0, 128, 0)


# --- refusals ----------------------------------------------------------------------


def test_too_small_names_the_size():
    err = refused(save(Image.new("RGB", (50, 200)), "PNG"), "input_invalid", index=2)
    assert "50x200" in err.message and "64" in err.message
    assert err.index == 2 and "image_urls[2]" in err.message


def test_too_skewed_names_the_ratio():
    err = refused(save(Image.new("RGB", (100, 900)), "PNG"), "input_invalid")
    assert "100x900" in err.message and "9.0:1" in err.message


def test_truncated_jpeg():
    data = save(noisy((256, 256)), "JPEG", quality=90)
    err = refused(data[: len(data) // 2], "input_not_image", index=0)
    assert "truncated" in err.message


def test_random_bytes():
    err = refused(os.urandom(4096), "input_not_image")
    assert "not an image" in err.message


def test_empty_and_unsupported_format():
    assert "empty" in refused(b"", "input_not_image").message
    # PPM is an image, but not a format accepted for references.
    err = refused(save(Image.new("RGB", (96, 96)), "PPM"), "input_not_image")
    assert "PNG" in err.message


def test_decompression_bomb_refused_from_the_header():
    # 100000 x 100000 claimed in 100 bytes: 30 GB if it were ever allocated.
    err = refused(png_with_header(100_000, 100_000), "input_too_large", index=1)
    assert err.index == 1
    # Between our limit (64 MP) and Pillow's: our header check answers.
    err = refused(png_with_header(9000, 9000), "input_too_large")
    assert "9000x9000" in err.message


def test_pixel_cap_is_checked_before_pixels_are_decoded():
    data = png_with_header(2000, 2000)  # header fine, pixel data missing
    # Within the cap the pixels are decoded, and turn out missing ...
    refused(data, "input_not_image", max_pixels=64_000_000)
    # ... over the cap the answer comes from the header, before any decoding.
    err = refused(data, "input_too_large", max_pixels=1_000_000)
    assert "2000x2000" in err.message and "1,000,000" in err.message


# --- sizes -------------------------------------------------------------------------


def pipeline_size(width: int, height: int) -> tuple[int, int]:
    """What diffusers' Flux2 pipelines feed the model for a reference this size."""
    if width * height > MP:
        scale = math.sqrt(MP / (width * height))
        width, height = int(width * scale), int(height * scale)
    return width // 16 * 16, height // 16 * 16


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_large_image_becomes_about_one_megapixel_in_multiples_of_16(fmt):
    out = decode_reference(save(noisy((3000, 2000)), fmt)).image
    assert out.mode == "RGB"
    assert out.size == pipeline_size(3000, 2000) == (1248, 832)
    assert 0.9 * MP < out.width * out.height <= MP


def test_large_rotated_jpeg_keeps_orientation_through_draft_decoding():
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    out = decode_reference(save(noisy((3000, 2000)), "JPEG", exif=exif)).image
    assert out.size == (832, 1248)


def test_large_image_content_survives_the_reduced_decode():
    image = Image.new("RGB", (2400, 1600), (20, 40, 220))
    image.paste((230, 30, 30), (0, 0, 1200, 1600))  # left half red
    out = decode_reference(save(image, "JPEG", quality=90)).image
    w, h = out.size
    assert out.getpixel((w // 4, h // 2))[0] > 200
    assert out.getpixel((3 * w // 4, h // 2))[2] > 200


def test_small_image_is_only_cropped_to_multiples_of_16():
    out = decode_reference(save(noisy((150, 100)), "PNG")).image
    assert out.size == (144, 96)


def test_target_none_keeps_full_size():
    out = decode_reference(save(noisy((1500, 1000)), "PNG"), target_pixels=None).image
    assert out.size == (1500, 1000)


# --- encode ------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "magic"), [("jpeg", b"\xff\xd8\xff"), ("png", b"\x89PNG")])
def test_encode_image_round_trips(fmt, magic):
    image = Image.new("RGB", (64, 64), (10, 120, 240))
    data = encode_image(image, fmt)
    assert data.startswith(magic)
    back = Image.open(io.BytesIO(data))
    assert back.size == (64, 64)
    assert all(abs(a - b) <= 3 for a, b in zip(back.convert("RGB").getpixel((5, 5)), (10, 120, 240)))


def test_encode_image_unknown_format():
    with pytest.raises(ValueError, match="gif"):
        encode_image(Image.new("RGB", (64, 64)), "gif")


def test_multi_picture_jpeg_uses_the_first_picture():
    first, second = Image.new("RGB", (96, 96), (250, 0, 0)), Image.new("RGB", (96, 96), (0, 0, 250))
    out = decode_reference(save(first, "MPO", save_all=True, append_images=[second])).image
    r, g, b = out.getpixel((48, 48))
    assert r > 200 and b < 50


def test_embedded_icc_profile_is_applied():
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    out = decode_reference(save(Image.new("RGB", (96, 96), (30, 140, 220)), "PNG", icc_profile=srgb)).image
    assert all(abs(a - b) <= 2 for a, b in zip(out.getpixel((5, 5)), (30, 140, 220)))


def test_lab_tiff_is_converted_colorimetrically():
    # L* = 50, a* = b* = 0 (Pillow stores a and b offset by 128): a neutral mid-grey.
    out = decode_reference(save(Image.new("LAB", (96, 96), (128, 128, 128)), "TIFF")).image
    r, g, b = out.getpixel((5, 5))
    assert max(r, g, b) - min(r, g, b) <= 2 and 100 <= r <= 140
