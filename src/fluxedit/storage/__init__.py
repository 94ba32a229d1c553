"""Where output and uploaded images live (local directory or S3) and their URLs."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from fluxedit.config import Settings
from fluxedit.errors import ImageInputError
from fluxedit.storage.base import InvalidKey, Storage, check_key, guess_content_type
from fluxedit.storage.local import LocalStorage
from fluxedit.storage.s3 import S3Storage
from fluxedit.storage.signing import FILES_PREFIX, UrlSigner, load_secret

__all__ = [
    "InvalidKey",
    "LocalStorage",
    "S3Storage",
    "Storage",
    "UrlSigner",
    "check_key",
    "guess_content_type",
    "load_secret",
    "open_storage",
    "resolve_issued_url",
]


def open_storage(settings: Settings, signer: UrlSigner | None = None) -> Storage:
    """The storage settings.storage_url names: None -> data_dir/files; s3://bucket/prefix -> S3."""
    signer = signer or UrlSigner.from_settings(settings)
    url = settings.storage_url
    if url is None or url.startswith("file:") or "://" not in url:
        root = settings.data_dir / "files" if url is None else _local_root(url)
        return LocalStorage(root, signer)
    if url.startswith("s3://"):
        return S3Storage.from_settings(settings, signer)
    raise ValueError(f"storage_url {url!r}: expected s3://bucket/prefix, file:///dir or a directory path")


def _local_root(url: str) -> Path:
    return Path(unquote(urlsplit(url).path) if url.startswith("file:") else url)


def resolve_issued_url(url: str, storage: Storage, signer: UrlSigner) -> bytes | None:
    """The stored bytes for a signed `/files/<key>?expires=&sig=` URL this service issued.

    Host-agnostic (any API process behind the load balancer issued it). None for
    any other URL, which the caller fetches as usual. A /files/ URL that carries a
    signature but a wrong or expired one is an error, never a network fetch.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or FILES_PREFIX not in parts.path:
        return None
    query = parse_qs(parts.query)
    if "sig" not in query or "expires" not in query:
        return None  # someone else's /files/ path: not ours to answer
    key = unquote(parts.path.split(FILES_PREFIX, 1)[1])
    try:
        check_key(key)
        expires = int(query["expires"][0])
    except (InvalidKey, ValueError):
        raise ImageInputError(f"{parts.path} is not a valid file URL of this server", code="input_forbidden") from None
    if not signer.signature_matches(key, expires, query["sig"][0]):
        raise ImageInputError(
            f"{parts.path} has a signature this server did not make (altered, or from another server)",
            code="input_forbidden",
        )
    if not signer.verify(key, expires, query["sig"][0]):
        raise ImageInputError(
            f"the signed URL for {parts.path} expired; request the result or upload the image again for a fresh URL",
            code="input_forbidden",
        )
    try:
        return storage.get(key)
    except FileNotFoundError:
        raise ImageInputError(f"{parts.path} names a file that is no longer stored", code="input_unreachable") from None
