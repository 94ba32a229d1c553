"""Inline images (data: URIs) are stored at submit, as uploads are: a job row holds URLs, not pixels.

A job's input is read by every /result and listing and written to the database once
per job; a 40 MB data: URI in it makes each of those 40 MB. Stored as a file under
uploads/<key_id>/, the image is read once, by the worker (which resolves the signed
/files/ URL from storage, as for an upload).
"""

from __future__ import annotations

import binascii
import hashlib
import io
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType

from fluxedit import image_url
from fluxedit.api.spool import SpooledImage
from fluxedit.errors import ImageInputError
from fluxedit.storage.base import Storage

# The payload is decoded a piece at a time, twice (to name it by its hash, then to store it):
# the image is never whole in memory beside the 50 MB string it came in.
CHUNK_CHARS = 1024 * 1024
_TYPES = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/jpg": "jpg",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/bmp": "bmp",
    "image/tiff": "tiff",
    "image/avif": "avif",
}


def store_inline_images(
    urls: list[str],
    *,
    key_id: str,
    storage: Storage,
    max_bytes: int,
    url_for: Callable[[str], str],
    spooled: Mapping[str, SpooledImage] = MappingProxyType({}),
) -> list[str]:
    """`urls` with each data: URI replaced by `url_for(key)` of the image stored under `key`.

    The forms were checked by EditInput. The key is the image's SHA-256: the same image
    sent again is the same file under the same path, so an idempotent replay compares
    equal (its signature aside). `spooled`: the images of the body's large data: URIs,
    by the placeholder URLs that stand for them (api/spool.py). Raises ImageInputError
    (input_too_large) for an image over `max_bytes`.
    """
    stored = []
    for index, url in enumerate(urls):
        image, parts = spooled.get(url), image_url.data_uri(url)
        if image is not None:
            url = url_for(_store_spooled(image, index, key_id, storage, max_bytes))
        elif parts is not None:
            url = url_for(_store(url, parts, index, key_id, storage, max_bytes))
        stored.append(url)
    return stored


def _store(url: str, parts: image_url.DataURI, index: int, key_id: str, storage: Storage, max_bytes: int) -> str:
    """Store one data: URI's image; its key."""
    _check_size(parts.decoded_size(url), index, max_bytes)
    digest = hashlib.sha256()
    for piece in _decoded_pieces(url, parts.start):
        digest.update(piece)
    key, content_type = _named(key_id, digest.hexdigest(), parts.media_type)
    storage.put_file(key, io.BufferedReader(_DecodingReader(url, parts.start)), content_type)
    return key


def _store_spooled(image: SpooledImage, index: int, key_id: str, storage: Storage, max_bytes: int) -> str:
    """Store one image decoded while the body arrived; its key (named as `_store` names it)."""
    _check_size(image.size, index, max_bytes)
    key, content_type = _named(key_id, image.sha256, image.media_type)
    image.file.seek(0)
    storage.put_file(key, image.file, content_type)
    return key


def _check_size(size: int, index: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ImageInputError(
            f"image_urls[{index}] holds {size:,} bytes; at most {max_bytes:,} bytes are accepted.",
            code="input_too_large",
            field=f"image_urls[{index}]",
            index=index,
        )


def _named(key_id: str, sha256: str, media_type: str) -> tuple[str, str]:
    """(key, content type) of an inline image."""
    ext = _TYPES.get(media_type, "bin")
    content_type = media_type if ext != "bin" else "application/octet-stream"
    return f"uploads/{key_id}/inline-{sha256}.{ext}", content_type


def _decoded_pieces(url: str, start: int) -> Iterator[bytes]:
    """The payload's bytes, a piece at a time (its form was checked: it decodes)."""
    for offset in range(start, len(url), CHUNK_CHARS):
        piece = url[offset : offset + CHUNK_CHARS]
        yield binascii.a2b_base64(piece + "=" * (-len(piece) % 4), strict_mode=True)  # only the last is short


class _DecodingReader(io.RawIOBase):
    """A binary file whose content is the payload, decoded as it is read: storage streams it."""

    def __init__(self, url: str, start: int) -> None:
        self._pieces = _decoded_pieces(url, start)
        self._piece = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if not self._piece:
            self._piece = memoryview(next(self._pieces, b""))
        count = min(len(buffer), len(self._piece))
        buffer[:count] = self._piece[:count]
        self._piece = self._piece[count:]
        return count
