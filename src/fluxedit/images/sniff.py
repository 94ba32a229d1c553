"""What an uploaded file is, judged from its header alone: the gate before it is stored."""

from __future__ import annotations

from fluxedit.errors import ImageInputError
from fluxedit.images.decode import check_pixels, open_header

__all__ = ["UPLOAD_TYPES", "sniff_upload"]

# Pillow format -> (content type, file extension) of the uploads we store.
UPLOAD_TYPES: dict[str, tuple[str, str]] = {
    "JPEG": ("image/jpeg", "jpg"),
    "PNG": ("image/png", "png"),
    "WEBP": ("image/webp", "webp"),
}


def sniff_upload(data: bytes, *, max_pixels: int) -> tuple[str, str]:
    """(content type, extension) of an upload.

    Raises ImageInputError (422, field "file"): `input_not_image` when it is not a JPEG,
    PNG or WebP image, `input_too_large` when its header claims more than `max_pixels`
    pixels (a decompression bomb among them) -- the decoder's own checks and words, so an
    upload is refused exactly as the same bytes sent as a data: URI are.
    """
    try:
        with open_header(data, max_pixels=max_pixels) as image:
            kind = image.format
            check_pixels(*image.size, max_pixels=max_pixels)
    except ImageInputError as exc:
        if exc.code == "input_too_large":
            exc.field = "file"
            raise
        kind = None  # not an image at all: the answer below names what is accepted
    if kind not in UPLOAD_TYPES:
        raise ImageInputError("The upload is not a JPEG, PNG or WebP image.", code="input_not_image", field="file")
    return UPLOAD_TYPES[kind]
