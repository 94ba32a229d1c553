"""The forms an `image_urls` entry may take: an http(s) URL or a base64 data: URI of an image.

One rule with two spellings: `PATTERN` for the OpenAPI document (ECMA-262 and Python
read it alike), and `problem` -- plain string checks, fast on a 50 MB data: URI, with a
sentence per way of breaking the rule. tests/test_image_url.py holds them equal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_URL_CHARS = 8_192
# A data: URI carries the image itself: bounded here, the decoder enforces the byte cap.
MAX_DATA_URI_CHARS = 70 * 1024 * 1024
MAX_DATA_HEADER_CHARS = 100  # the media type and its parameters, between "data:image/" and ";base64,"

_B64_DATA = "(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{4}|[A-Za-z0-9+/]{2}(?:==)?|[A-Za-z0-9+/]{3}=?)"
PATTERN = (
    f"^(?:[hH][tT][tT][pP]://[\\s\\S]{{0,{MAX_URL_CHARS - 7}}}"
    f"|[hH][tT][tT][pP][sS]://[\\s\\S]{{0,{MAX_URL_CHARS - 8}}}"
    f"|[dD][aA][tT][aA]:[iI][mM][aA][gG][eE]/[^,]{{0,{MAX_DATA_HEADER_CHARS}}};[bB][aA][sS][eE]64,{_B64_DATA})$"
)
_B64_CHARS = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_DATA_PREFIX = "data:image/"
_BASE64_MARK = ";base64"


@dataclass(frozen=True)
class DataURI:
    """Where the parts of a well-formed data: URI are, without copying its payload."""

    media_type: str  # "image/png", as declared (lower case)
    start: int  # the payload is url[start:]
    padding: int  # how many "=" end it

    def decoded_size(self, url: str) -> int:
        chars = len(url) - self.start - self.padding
        return chars * 3 // 4


def problem(url: str) -> str | None:
    """Why `url` cannot be an image_urls entry, or None when its form is fine (fetching comes later)."""
    lower = url[:16].lower()
    if lower.startswith("data:"):
        return _data_uri_problem(url)
    if len(url) > MAX_URL_CHARS:
        return f"URL is longer than {MAX_URL_CHARS} characters"
    if not (lower.startswith("http://") or lower.startswith("https://")):
        if not url:
            return "is empty; use an https:// or http:// URL, a data: URI or an uploaded file's URL"
        scheme = url.split(":", 1)[0] if ":" in url else url[:20]
        return (
            f"scheme {scheme!r} is not allowed; use an https:// or http:// URL, a data: URI or an uploaded file's URL"
        )
    return None


def data_uri(url: str) -> DataURI | None:
    """The parts of `url` if it is a well-formed data: URI (see `problem`), else None."""
    if not url[:16].lower().startswith("data:") or _data_uri_problem(url) is not None:
        return None
    comma = url.index(",")
    media_type = url[5 : comma - len(_BASE64_MARK)].split(";", 1)[0].lower()
    return DataURI(media_type=media_type, start=comma + 1, padding=_padding(url))


def _data_uri_problem(url: str) -> str | None:
    if len(url) > MAX_DATA_URI_CHARS:
        return f"data: URI is longer than {MAX_DATA_URI_CHARS:,} characters (about 50 MB of image)"
    comma = url.find(",", 0, len(_DATA_PREFIX) + MAX_DATA_HEADER_CHARS + len(_BASE64_MARK) + 1)
    header = url[:comma].lower() if comma >= 0 else ""
    if not header.startswith(_DATA_PREFIX) or not header.endswith(_BASE64_MARK):
        return "data: URI must be a base64 image (data:image/...;base64,...)"
    if _B64_CHARS.fullmatch(url, comma + 1) is None:
        return "data: URI's base64 data may hold only A-Z, a-z, 0-9, + and / (then at most two '=')"
    padding = _padding(url)
    chars = len(url) - comma - 1 - padding
    if chars == 0 or chars % 4 == 1 or (padding and (chars + padding) % 4):
        return "data: URI's base64 data is cut short or wrongly padded"
    return None


def _padding(url: str) -> int:
    # No rstrip: that would copy a 50 MB string to count two characters.
    return 2 if url.endswith("==") else 1 if url.endswith("=") else 0
