"""Large data: URIs of a JSON submit, decoded into temporary files as the body arrives.

Parsing a body needs the body and each string parsed from it in memory at once: for a
60 MB data: URI, twice its size. So the body is read through a scanner that follows only
where JSON strings begin and end (quotes, backslash escapes) and the few characters
between them, and each element of the top-level "image_urls" that is a data: URI of at
least SPOOL_BYTES of image is decoded straight into a temporary file: the JSON kept holds
a short placeholder URL in its place. The placeholder carries a nonce drawn per request,
so no client can send one that stands for a spooled image (one sent is a URL like any
other, of a host that cannot exist).

What the scanner is not sure of it keeps as it came: a payload with an escape, a character
base64 has not, bad padding, an overlong URI or a body that ends inside it goes back byte
for byte, so the validators see the body as sent and answer as they always did.
"""

from __future__ import annotations

import binascii
import hashlib
import re
import secrets
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from starlette.exceptions import HTTPException

from fluxedit import image_url
from fluxedit.storage.space import is_no_room, no_room

SPOOL_BYTES = 1024 * 1024  # smaller images stay in the JSON: too small to matter
# A submit has a few dozen strings. Past this many the rest of the body is kept as it came:
# the scanner's work in Python is per string, and must stay small whatever the body.
MAX_STRINGS = 1_000
_HEADER_CHARS = len("data:image/") + image_url.MAX_DATA_HEADER_CHARS + len(";base64,")  # the comma is in these
# A string's content up to its closing quote, or to the chunk's end (then maybe a lone backslash).
_STRING_REST = re.compile(rb'(?:[^"\\]++|\\.)*+', re.DOTALL)
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")
_PLAIN_ASCII = re.compile(rb"[ -\[\]-~]*")  # printable, no backslash: the same text raw and parsed
_WHITESPACE = b" \t\r\n"
_KEY, _ELEMENT = "key", "element"  # what the last string was: the top-level key "image_urls", one of its elements


class SpooledImage:
    """A data: URI's payload, decoded into `file` as it arrives; `as_sent` gives back the text it came as."""

    def __init__(self, header: bytes, media_type: str, file: IO[bytes]) -> None:
        self.header = header  # up to the comma, as sent
        self.media_type = media_type
        self.file = file
        self.size = 0  # bytes in the file
        self._digest = hashlib.sha256()
        self._pending = b""  # the last 0-3 characters: part of a 4-character group
        self._chars = 0  # of the payload, padding aside
        self._padding = 0
        self._whole = 0  # bytes decoded from whole groups (the file, but the last group's)

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def take(self, text: bytes) -> bool:
        """Decode the next `text` of the payload; False, and nothing taken, if it is not plain base64."""
        body = text.rstrip(b"=")
        padding = self._padding + len(text) - len(body)
        if (self._padding and body) or padding > 2 or _NOT_BASE64.search(body):
            return False
        self._padding = padding
        self._chars += len(body)
        text = self._pending + body
        whole = len(text) - len(text) % 4
        self._pending = text[whole:]
        self._write(binascii.a2b_base64(text[:whole], strict_mode=True))
        self._whole = self.size
        return True

    def finish(self) -> bool:
        """Decode the last group; False, and nothing taken, if the URI breaks a rule of image_url's."""
        chars, padding = self._chars, self._padding
        if chars % 4 == 1 or (padding and (chars + padding) % 4):
            return False  # "cut short or wrongly padded"
        if len(self.header) + 1 + chars + padding > image_url.MAX_DATA_URI_CHARS:
            return False  # "longer than"
        if self._pending:
            self._write(binascii.a2b_base64(self._pending + b"=" * (-len(self._pending) % 4), strict_mode=True))
        return True

    def as_sent(self) -> bytes:
        """The string's content as it came: the header, the comma, then the payload encoded again."""
        self.file.seek(0)
        text = bytearray(self.header + b",")
        left = self._whole  # a multiple of 3: each piece encodes to whole groups
        while left:
            piece = self.file.read(min(left, 3 * 256 * 1024))
            text += binascii.b2a_base64(piece, newline=False)
            left -= len(piece)
        return bytes(text + self._pending + b"=" * self._padding)

    def _write(self, data: bytes) -> None:
        self._digest.update(data)
        self.file.write(data)
        self.size += len(data)


class BodyScanner:
    """Feed it a JSON body's chunks in order, then call `end`: the JSON to parse, in which
    `spooled` maps each placeholder to its image. `close` closes the files, whatever happened."""

    def __init__(self, spool_dir: Path) -> None:
        self.spooled: dict[str, SpooledImage] = {}
        self._dir = spool_dir
        # A URL, so the placeholder passes EditInput's checks as the data: URI did; .invalid never resolves.
        self._prefix = f"https://spooled.invalid/{secrets.token_urlsafe(16)}/"
        self._kept = bytearray()
        self._files: list[IO[bytes]] = []
        self._strings = 0
        self._depth = 0  # of the brackets between strings
        self._gap = b""  # what came between the last string and this point, whitespace left out (3 bytes tell)
        self._after: str | None = None  # _KEY, _ELEMENT or None: what the last string was
        self._in_string = False
        self._escaped = False  # the last chunk ended inside a string on a lone backslash
        self._head = b""  # the string's first bytes: is it the key "image_urls"?
        self._element = False  # this string is an element of the top-level image_urls
        self._sink: bytearray | SpooledImage | None = None  # where the string's content goes, None: the JSON kept

    def feed(self, chunk: bytes) -> None:
        # Called on the event loop, a chunk (about 64 KB from uvicorn) at a time: the work per chunk
        # is a few C-speed passes, and the loop gets its turn between chunks.
        try:
            pos = 0
            while pos < len(chunk):
                if self._strings >= MAX_STRINGS and not self._in_string:
                    self._kept += chunk[pos:]
                    return
                pos = self._inside(chunk, pos) if self._in_string else self._between(chunk, pos)
        except OSError as exc:
            if not is_no_room(exc):
                raise
            # An HTTPException: the one error FastAPI passes on from reading a body (any other is a 400).
            raise HTTPException(507, no_room(f"the data directory {self._dir}").message) from exc

    def end(self) -> bytes:
        if self._in_string:  # the body ends inside a string: it goes back as it came, for the parser to refuse
            self._put_back(b"")
        kept, self._kept = bytes(self._kept), bytearray()
        return kept

    def close(self) -> None:
        for file in self._files:
            file.close()

    def _between(self, chunk: bytes, pos: int) -> int:
        quote = chunk.find(b'"', pos)
        gap = chunk[pos:] if quote < 0 else chunk[pos:quote]
        self._kept += gap
        self._depth += gap.count(b"{") + gap.count(b"[") - gap.count(b"}") - gap.count(b"]")
        self._gap = (self._gap + gap.translate(None, _WHITESPACE))[:3]
        if quote < 0:
            return len(chunk)
        self._kept += b'"'
        self._strings += 1
        self._in_string, self._head = True, b""
        self._element = (self._after, self._gap) in ((_KEY, b":["), (_ELEMENT, b","))
        self._sink = bytearray() if self._element else None
        return quote + 1

    def _inside(self, chunk: bytes, pos: int) -> int:
        end = _STRING_REST.match(chunk, pos + self._escaped).end()
        closed = end < len(chunk) and chunk[end] == ord('"')
        self._escaped = not closed and end < len(chunk)  # stopped at a lone backslash, the chunk's last byte
        piece = chunk[pos:end] if closed else chunk[pos:]
        if len(self._head) < 11:
            self._head += piece[:11]
        self._take(piece)
        if not closed:
            return len(chunk)
        self._close()
        return end + 1

    def _take(self, piece: bytes) -> None:
        sink = self._sink
        if sink is None:
            self._kept += piece
        elif isinstance(sink, bytearray):
            sink += piece
            if len(sink) >= _HEADER_CHARS:
                self._start_spooling(sink)
        elif not sink.take(piece):
            self._put_back(piece)

    def _start_spooling(self, head: bytearray) -> None:
        """Spool the string, `head` its start so far, if that is a well-formed data: URI header."""
        comma = head.find(b",", 0, _HEADER_CHARS)
        header = bytes(head[:comma]) if comma > 0 else b""
        # The header's rules are image_url's: asked of the header with a stand-in payload.
        parts = image_url.data_uri(header.decode() + ",AAAA") if _PLAIN_ASCII.fullmatch(header) else None
        if not parts:
            self._kept += head
            self._sink = None
            return
        file = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES, dir=self._dir)  # nameless: gone once closed
        self._files.append(file)
        self._sink = SpooledImage(header, parts.media_type, file)
        self._take(bytes(head[comma + 1 :]))

    def _put_back(self, piece: bytes) -> None:
        """The string so far, then `piece`, into the JSON kept as they came; the rest follows as it comes."""
        sink = self._sink
        if isinstance(sink, SpooledImage):
            self._kept += sink.as_sent()
            sink.file.close()
        elif sink is not None:
            self._kept += sink
        self._kept += piece
        self._sink = None

    def _close(self) -> None:
        sink = self._sink
        if isinstance(sink, SpooledImage) and sink.size >= SPOOL_BYTES and sink.finish():
            placeholder = f"{self._prefix}{len(self.spooled)}"
            self.spooled[placeholder] = sink
            self._kept += placeholder.encode()
        else:
            self._put_back(b"")
        self._kept += b'"'
        self._in_string, self._sink, self._gap = False, None, b""
        self._after = _ELEMENT if self._element else _KEY if self._depth == 1 and self._head == b"image_urls" else None


def as_sent(kept: bytes, spooled: Mapping[str, SpooledImage]) -> bytes:
    """The body as it came, each placeholder in `kept` replaced by its string: for an error's position."""
    for placeholder, image in spooled.items():
        kept = kept.replace(b'"%s"' % placeholder.encode(), b'"%s"' % image.as_sent(), 1)
    return kept
