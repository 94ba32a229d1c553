"""Download one reference image: an http(s) URL, every hop checked; data: URIs decoded.

The server fetches URLs that callers name, so every hop -- the URL and each
redirect -- goes through `fluxedit.netpolicy` (what outbound traffic may reach):

1. scheme: http or https only (data: URIs are decoded, never fetched);
2. resolve the host once (in a thread) and check every address it resolves to;
   one address inside the network refuses the host;
3. connect to the checked IP itself (Host header and TLS SNI carry the name), so
   a DNS answer that changes between check and connect (rebinding) cannot slip
   through; the peer address of the open connection is checked once more;
4. read the body as a stream and stop at `settings.max_image_bytes`.

`settings.fetch_allow` opens holes for the operator's own image hosts (see
`fluxedit.netpolicy` for how entries are read). Refusals are `ImageInputError`
with code `input_forbidden`, worded for image URLs.

Many references at once, and URLs this server issued, are `fluxedit.images.fetch`'s.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import urllib.parse
from collections.abc import Callable, Iterator

import httpx

from fluxedit import netpolicy
from fluxedit.config import Settings
from fluxedit.errors import ImageInputError
from fluxedit.netpolicy import ALLOW_HINT, SCHEMES, IPAddress, OutboundForbidden, Resolver

__all__ = ["Downloader", "ResolveLocal", "UrlFailure", "capped", "check_address", "decode_data_uri"]

ResolveLocal = Callable[[str], bytes | None]


def check_address(host: str, address: IPAddress, allow: list[str]) -> None:
    """`netpolicy.check_address`, refused as an image input (`ImageInputError`, input_forbidden)."""
    try:
        netpolicy.check_address(host, address, allow)
    except OutboundForbidden as exc:
        raise ImageInputError(_image_refusal(exc), code=exc.code) from None


def _image_refusal(exc: OutboundForbidden) -> str:
    return f"{exc.finding}; image URLs may only point to public addresses ({ALLOW_HINT})"


# --- one URL -------------------------------------------------------------------------------


class Downloader:
    """What one network fetch shares between its URLs: a client (opened at the first connection) and lookups.

    `open_client` makes the client (`Fetcher.open_client`); `resolve_local` reads a
    redirect that lands on a URL this server issued; `resolver` replaces getaddrinfo.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        open_client: Callable[[], httpx.AsyncClient],
        resolve_local: ResolveLocal | None = None,
        resolver: Resolver,
    ) -> None:
        self.settings = settings
        self.resolve_local = resolve_local
        self.resolver = resolver
        self._open_client = open_client
        self._client: httpx.AsyncClient | None = None
        self.lookups = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="fluxedit-dns")

    async def __aenter__(self) -> Downloader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        # A lookup past its timeout may still hang in getaddrinfo: do not wait for it.
        self.lookups.shutdown(wait=False, cancel_futures=True)
        if self._client is not None:
            await self._client.aclose()

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = self._open_client()
        return self._client

    async def download(self, url: str, index: int) -> bytes:
        """The bytes at `url` (`index`: its place in image_urls); `ImageInputError` if it fails."""
        try:
            async with asyncio.timeout(self.settings.fetch_total_timeout_s):
                return await self._fetch_http(url)
        except UrlFailure as failure:
            raise failure.error(url, index) from None
        except TimeoutError:
            raise UrlFailure(
                "input_unreachable", f"could not be fetched within {self.settings.fetch_total_timeout_s:g} s"
            ).error(url, index) from None

    async def _fetch_http(self, text: str) -> bytes:
        url = _parse_url(text)
        hops = self.settings.fetch_max_redirects
        for hop in range(hops + 1):
            if hop and self.resolve_local is not None:  # the URL itself was tried by Fetcher._read_offline (fetch.py)
                local = await asyncio.to_thread(self.resolve_local, str(url))
                if local is not None:
                    return capped(local, self.settings.max_image_bytes)
            via = f"after a redirect to {_display(str(url))}, " if hop else ""
            answer = await self._get(url, via)
            if isinstance(answer, bytes):
                return answer
            if hop == hops:
                raise UrlFailure("input_unreachable", f"was redirected more than {hops} times; stopped following")
            url = _next_url(url, answer)
        raise AssertionError("unreachable")

    async def _get(self, url: httpx.URL, via: str) -> bytes | str:
        """One hop: the body, or the redirect's Location."""
        host = url.raw_host.decode("ascii")
        addresses = await self._checked_addresses(host, netpolicy.url_port(url), via)
        last_error: Exception | None = None
        for address in addresses:
            request = netpolicy.pinned_request(self.client, url, address)  # the address checked, not a new lookup
            try:
                response = await self.client.send(request, stream=True)
            except httpx.ConnectError as exc:
                last_error = exc  # try the host's next address
                continue
            except httpx.HTTPError as exc:
                raise _http_failure(exc, via) from exc
            try:
                return await self._handle(response, host, via)
            except httpx.HTTPError as exc:
                raise _http_failure(exc, via) from exc
            finally:
                await response.aclose()
        raise UrlFailure("input_unreachable", f"{via}could not connect to {host} ({last_error})")

    async def _checked_addresses(self, host: str, port: int, via: str) -> list[IPAddress]:
        addresses = await self._lookup(host, port, via)
        with _refusals(via):
            for address in addresses:
                netpolicy.check_address(host, address, self.settings.fetch_allow)
        return addresses

    async def _lookup(self, host: str, port: int, via: str) -> list[IPAddress]:
        try:
            lookup = asyncio.get_running_loop().run_in_executor(
                self.lookups, netpolicy.lookup, host, port, self.resolver
            )
            addresses = await asyncio.wait_for(lookup, self.settings.fetch_connect_timeout_s)
        except TimeoutError:
            raise UrlFailure("input_unreachable", f"{via}looking up {host} timed out") from None
        except OSError as exc:
            raise UrlFailure("input_unreachable", f"{via}its host {host} could not be resolved ({exc})") from None
        if not addresses:
            raise UrlFailure("input_unreachable", f"{via}its host {host} resolves to no address")
        return addresses

    async def _handle(self, response: httpx.Response, host: str, via: str) -> bytes | str:
        # Belt and braces: the address the connection actually reached.
        with _refusals(via):
            netpolicy.check_peer(response, host, self.settings.fetch_allow)
        location = netpolicy.redirect_location(response)
        if location is not None:
            return location
        if not response.is_success:
            raise UrlFailure(
                "input_unreachable",
                f"{via}could not be fetched: the server answered HTTP {response.status_code} "
                f"{response.reason_phrase}".rstrip(),
            )
        content_type = response.headers.get("content-type", "")
        if _clearly_not_image(content_type):
            raise UrlFailure("input_not_image", f"{via}is not an image: the server sent {content_type.split(';')[0]}")
        return await _read_capped(response, self.settings.max_image_bytes, via)


# --- helpers -------------------------------------------------------------------------


class UrlFailure(Exception):
    """A reason a URL failed, before the URL and index are known to the message."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason

    def error(self, url: str, index: int) -> ImageInputError:
        return ImageInputError(f"image_urls[{index}] ({_display(url)}) {self.reason}.", code=self.code, index=index)


@contextlib.contextmanager
def _refusals(via: str) -> Iterator[None]:
    """netpolicy's refusals, worded for this URL."""
    try:
        yield
    except OutboundForbidden as exc:
        raise UrlFailure(exc.code, f"is refused: {via}{_image_refusal(exc)}") from None


def _http_failure(exc: httpx.HTTPError, via: str) -> UrlFailure:
    if isinstance(exc, httpx.TimeoutException):
        return UrlFailure("input_unreachable", f"{via}timed out ({type(exc).__name__})")
    return UrlFailure("input_unreachable", f"{via}could not be fetched ({type(exc).__name__}: {exc})")


def _display(url: str, limit: int = 100) -> str:
    """A URL short enough for a message; data: URIs keep only their header."""
    if url[:5].lower() == "data:":
        return f"{url.split(',', 1)[0][:40]},... ({len(url):,} characters)"
    return url if len(url) <= limit else url[: limit - 3] + "..."


def _next_url(url: httpx.URL, location: str) -> httpx.URL:
    """The URL a redirect's Location names, refused by its scheme before anything parses it."""
    if netpolicy.url_scheme(location) not in ("", *SCHEMES):  # "": relative, the page's own scheme
        _refuse_scheme(location, location=location)
    try:
        joined = str(url.join(location))
    except httpx.InvalidURL as exc:  # not an HTTPError: it would end the job as internal_error
        raise UrlFailure("input_unreachable", f"redirects to {_display(location)}, not a valid URL ({exc})") from None
    return _parse_url(joined, location=location)


def _parse_url(text: str, *, location: str | None = None) -> httpx.URL:
    """The URL to fetch; `location` is the Location header it came from, on a redirect."""
    if netpolicy.url_scheme(text) not in SCHEMES:
        _refuse_scheme(text, location=location)
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL as exc:
        raise UrlFailure("input_unreachable", f"is not a valid URL ({exc})") from None
    if not url.raw_host:
        raise UrlFailure("input_unreachable", "is not a valid URL (it names no host)")
    return url


def _refuse_scheme(text: str, *, location: str | None) -> None:
    scheme = netpolicy.url_scheme(text)
    kind = f"a {scheme}: URL" if scheme else "a URL without a scheme"
    if location is not None:
        reason = f"it redirects to {_display(location)}, {kind}; only http and https redirects are followed"
    else:
        reason = f"it is {kind}; only http, https and data: URLs are accepted"
    raise UrlFailure("input_forbidden", f"is refused: {reason}")


def _clearly_not_image(content_type: str) -> bool:
    """Content types no image arrives as; the decoder has the final word on the rest."""
    media = content_type.split(";")[0].strip().lower()
    main, _, sub = media.partition("/")
    if main in ("text", "audio", "video", "font", "multipart", "message", "model"):
        return True
    return main == "application" and (
        sub in ("json", "xml", "javascript", "pdf", "zip", "gzip", "x-www-form-urlencoded")
        or sub.endswith(("+json", "+xml"))
    )


def capped(data: bytes, cap: int) -> bytes:
    if len(data) > cap:
        raise UrlFailure("input_too_large", f"is {len(data):,} bytes; at most {cap:,} bytes are accepted")
    return data


async def _read_capped(response: httpx.Response, cap: int, via: str) -> bytes:
    """The body, read until it ends or passes `cap` (then the connection is dropped)."""
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > cap:
        raise UrlFailure("input_too_large", f"{via}is {int(length):,} bytes; at most {cap:,} bytes are accepted")
    body = bytearray()
    async for chunk in response.aiter_bytes():  # decoded: a gzip bomb counts at full size
        body += chunk
        if len(body) > cap:
            raise UrlFailure("input_too_large", f"{via}is larger than {cap:,} bytes, the most accepted")
    return bytes(body)


def decode_data_uri(url: str, cap: int) -> bytes:
    """data:[<media type>][;base64],<data> (RFC 2397)."""
    header, comma, payload = url[5:].partition(",")
    if not comma:
        raise UrlFailure("input_not_image", "is not a valid data: URI (it has no comma before the data)")
    media, *params = header.split(";")
    if media.strip() and _clearly_not_image(media):
        raise UrlFailure("input_not_image", f"is not an image: its media type is {media.strip()}")
    if any(p.strip().lower() == "base64" for p in params):
        payload = "".join(urllib.parse.unquote(payload).split())
        if len(payload) // 4 * 3 > cap + 3:
            raise UrlFailure("input_too_large", f"holds more than {cap:,} bytes; at most {cap:,} bytes are accepted")
        try:
            data = base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise UrlFailure("input_not_image", "is not a valid data: URI (its base64 data is damaged)") from None
    else:
        data = urllib.parse.unquote_to_bytes(payload)
    return capped(data, cap)
