"""The image formats fluxedit writes and accepts: one table from format name to file extension and content type."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageType:
    extension: str
    content_type: str


# Output formats ("jpeg", "png") and the upload formats besides them, by lower-case Pillow format name.
IMAGE_TYPES: dict[str, ImageType] = {
    "jpeg": ImageType("jpg", "image/jpeg"),
    "png": ImageType("png", "image/png"),
    "webp": ImageType("webp", "image/webp"),
}
