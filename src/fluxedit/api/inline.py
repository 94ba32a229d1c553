"""Inline images (data: URIs) are stored at submit, as uploads are: a job row holds URLs, not pixels.

A job's input is read by every /result and listing and written to the database once
per job; a 40 MB data: URI in it makes each of those 40 MB. Stored as a file under
uploads/<key_id>/, the image is read once, by the worker (which resolves the signed
/files/ URL from storage, as for an upload).
"""

from __future__ import annotations

import binascii
import hashlib
from collections.abc import Callable

from fluxedit import image_url
from fluxedit.errors import ImageInputError
from fluxedit.storage.base import Storage

# The payload is decoded a piece at a time into one buffer: no second copy of a 50 MB string.
CHUNK_CHARS = 4 * 1024 * 1024
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
    urls: list[str], *, key_id: str, storage: Storage, max_bytes: int, url_for: Callable[[str], str]
) -> list[str]:
    """`urls` with each data: URI replaced by `url_for(key)` of the image stored under `key`.

    The forms were checked by EditInput. The key is the image's SHA-256: the same image
    sent again is the same file under the same path, so an idempotent replay compares
    equal (its signature aside). Raises ImageInputError (input_too_large) for an image
    over `max_bytes`.
    """
    stored = []
    for index, url in enumerate(urls):
        parts = image_url.data_uri(url)
        if parts is None:
            stored.append(url)
            continue
        size = parts.decoded_size(url)
        if size > max_bytes:
            raise ImageInputError(
                f"image_urls[{index}] holds {size:,} bytes; at most {max_bytes:,} bytes are accepted.",
                code="input_too_large",
                field=f"image_urls[{index}]",
                index=index,
            )
        data = _decode(url, parts.start, size)
        ext = _TYPES.get(parts.media_type, "bin")
        key = f"uploads/{key_id}/inline-{hashlib.sha256(data).hexdigest()}.{ext}"
        storage.put(key, data, parts.media_type if ext != "bin" else "application/octet-stream")
        del data
        stored.append(url_for(key))
    return stored


def _decode(url: str, start: int, size: int) -> bytearray:
    data = bytearray(size)
    view, filled = memoryview(data), 0
    for offset in range(start, len(url), CHUNK_CHARS):
        piece = url[offset : offset + CHUNK_CHARS]
        piece += "=" * (-len(piece) % 4)  # only the last piece can be short
        decoded = binascii.a2b_base64(piece, strict_mode=True)
        view[filled : filled + len(decoded)] = decoded
        filled += len(decoded)
    view.release()
    return data
