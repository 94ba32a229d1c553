"""The Storage protocol and the key rules every backend shares.

Keys are relative, slash-separated paths such as "outputs/<job_id>/0.png" or
"uploads/<key_id>/<uuid>.jpeg". They are validated once, here, so that a key
can never name a file outside the local root nor an object outside the prefix.
"""

from __future__ import annotations

import mimetypes
import re
from typing import BinaryIO, Protocol, runtime_checkable

from fluxedit.errors import FluxeditError

MAX_KEY_CHARS = 512
# One path segment: starts with a letter or digit (no ".", "..", hidden names), then a safe charset.
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")


class InvalidKey(FluxeditError, ValueError):
    """A storage key that is not a safe relative path."""

    code = "invalid_key"
    status = 404  # the API answers as if absent: a bad key names no stored object


def check_key(key: str) -> str:
    """Return `key` if it is safe; raise InvalidKey naming what is wrong otherwise."""
    if not isinstance(key, str) or not key:
        raise InvalidKey("storage key is empty")
    if len(key) > MAX_KEY_CHARS:
        raise InvalidKey(f"storage key is longer than {MAX_KEY_CHARS} characters")
    if key.startswith("/") or "\\" in key:
        raise InvalidKey(f"storage key {key!r} must be a relative path with '/' separators")
    for segment in key.split("/"):
        if not _SEGMENT.match(segment):
            raise InvalidKey(
                f"storage key {key!r} has an unsafe part {segment!r}: each part must start with a "
                "letter or digit and use only letters, digits, '.', '_' and '-'"
            )
    return key


# Python's own table, not the host's /etc/mime.types: LocalStorage stores no type a key's name
# implies, so every process sharing a files directory must read the same type from the same name.
_BUILTIN_TYPES = mimetypes.MimeTypes()


def guess_content_type(key: str) -> str:
    """The content type for a key from its extension (application/octet-stream if unknown)."""
    return _BUILTIN_TYPES.guess_type(key, strict=False)[0] or "application/octet-stream"


@runtime_checkable
class Storage(Protocol):
    """Where output and uploaded images live. Implementations: LocalStorage, S3Storage."""

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store `data` under `key`, replacing any previous object atomically.

        Raises InsufficientStorage (507) when the disk is full or read-only; nothing
        stored before is lost then."""

    def put_file(self, key: str, file: BinaryIO, content_type: str) -> None:
        """Store what is left to read of `file` under `key`, read a piece at a time, as put() does."""

    def check_writable(self) -> None:
        """Raise InsufficientStorage when nothing new could be stored now (a full or read-only disk)."""

    def get(self, key: str) -> bytes:
        """The bytes stored under `key`; FileNotFoundError if absent."""

    def content_type(self, key: str) -> str:
        """The content type given at put(); FileNotFoundError if absent."""

    def delete(self, key: str) -> None:
        """Remove `key`; no error if it is already gone."""

    def url(self, key: str, base_url: str) -> str:
        """An absolute, expiring URL that serves `key` (signed /files/ path or presigned)."""

    def sweep(self, max_age_s: float) -> int:
        """Remove objects older than `max_age_s` seconds; return how many were removed."""
