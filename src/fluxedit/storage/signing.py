"""Signed, expiring URLs for stored files: HMAC-SHA256 over key and expiry."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fluxedit.config import Settings

FILES_PREFIX = "/files/"
MAX_SIGNED_URL_CHARS = 8_192  # longer strings (a data: URI) are no URL this server signed
SECRET_FILE = "secret.key"


class UrlSigner:
    """Signs `/files/<key>` paths so the API can serve them without a bearer token.

    The signature binds the key and the expiry time; it is valid on any host, so
    API processes behind one load balancer (sharing `secret_key`) accept each other's URLs.
    """

    def __init__(self, secret: bytes, expiry_s: int = 24 * 3600) -> None:
        if len(secret) < 16:
            raise ValueError("the URL signing secret must be at least 16 bytes")
        self._secret = secret
        self.expiry_s = expiry_s

    @classmethod
    def from_settings(cls, settings: Settings) -> UrlSigner:
        return cls(load_secret(settings), settings.url_expiry_s)

    def sign(self, key: str, expires: int) -> str:
        message = f"{key}\n{expires}".encode()
        digest = hmac.new(self._secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def signed_path(self, key: str, *, expiry_s: int | None = None) -> str:
        """`/files/<key>?expires=<unix time>&sig=<signature>`, valid for `expiry_s` (default: the signer's)."""
        expires = int(time.time()) + (self.expiry_s if expiry_s is None else expiry_s)
        query = urlencode({"expires": expires, "sig": self.sign(key, expires)})
        return f"{FILES_PREFIX}{quote(key, safe='/')}?{query}"

    def signature_matches(self, key: str, expires: int, sig: str) -> bool:
        """Whether `sig` was made by this secret for (key, expires); constant time."""
        expected = self.sign(key, expires).encode("ascii")
        return hmac.compare_digest(expected, sig.encode("utf-8", "replace"))

    def verify(self, key: str, expires: int, sig: str) -> bool:
        """True when the signature matches and `expires` is not past."""
        return self.signature_matches(key, expires, sig) and expires >= time.time()


def without_signatures(value: Any) -> Any:
    """`value` (a job input) with the expiry and signature of each signed /files/ URL left out.

    The same file named again gets a fresh expiry and signature; an idempotent replay
    must still compare equal to the request it repeats.
    """
    if isinstance(value, dict):
        return {name: without_signatures(item) for name, item in value.items()}
    if isinstance(value, list):
        return [without_signatures(item) for item in value]
    if isinstance(value, str) and len(value) <= MAX_SIGNED_URL_CHARS and FILES_PREFIX in value and "&sig=" in value:
        return value.split("?", 1)[0]
    return value


def load_secret(settings: Settings) -> bytes:
    """settings.secret_key, or a random secret persisted in data_dir/secret.key (mode 0600)."""
    if settings.secret_key:
        return settings.secret_key.encode()
    path = Path(settings.data_dir) / SECRET_FILE
    if not path.exists():
        _create_secret(path)
    secret = path.read_bytes().strip()
    if len(secret) < 16:
        raise ValueError(f"{path} holds no usable secret (under 16 bytes); delete it to make a new one")
    return secret


def _create_secret(path: Path) -> None:
    # Written to a private temp file, then linked into place: two processes
    # starting at once both end up reading the one secret that won.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
