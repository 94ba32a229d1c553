"""Download a BFL task's result: its delivery URL, fetched without the key.

Each hop resolves its host once, checks every address (`fluxedit.netpolicy`, with
`Settings.fetch_allow` read as for reference URLs) and connects to a checked one,
so a host cannot pass the check with one address and serve the download from
another (DNS rebinding). Redirects are followed by hand, each hop checked; the
body is capped at `Settings.max_image_bytes`. A bad result URL is BFL's failure
(`UpstreamError`), not the caller's.
"""

from __future__ import annotations

import functools
import threading

import httpx

from fluxedit import netpolicy
from fluxedit.config import Settings
from fluxedit.engines.bfl_errors import UpstreamError, retrying, unreachable
from fluxedit.netpolicy import IPAddress, OutboundForbidden, Resolver

__all__ = ["ResultDownloader", "check_result_address"]

_MAX_REDIRECTS = 3


def check_result_address(host: str, address: IPAddress, allow: list[str]) -> None:
    """Refuse a result host that resolves inside the network, unless `allow` covers it.

    The decision is `fluxedit.netpolicy.check_address`'s, with `allow` read as
    `Settings.fetch_allow` is for reference URLs; only the error differs: a bad
    result URL is BFL's failure, not the caller's.
    """
    try:
        netpolicy.check_address(host, address, allow)
    except OutboundForbidden as exc:
        raise _result_refused(exc) from None


def _result_refused(exc: OutboundForbidden) -> UpstreamError:
    return UpstreamError(
        f"BFL's result URL points at {exc.host} ({exc.address}), an address inside the network; "
        "fluxedit refused to fetch it (allow it with FLUXEDIT_FETCH_ALLOW if it is a trusted proxy).",
    )


class ResultDownloader:
    """Downloads result URLs on a pinned HTTP client of its own, which never carries the key.

    `resolver` replaces getaddrinfo for result hosts. Thread-safe.
    """

    def __init__(self, settings: Settings, resolver: Resolver, *, timeout: httpx.Timeout) -> None:
        self._settings = settings
        self._resolver = resolver
        self._timeout = timeout
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(timeout=self._timeout, **netpolicy.pinned_client_options())

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
            self._client = None

    def download(self, url: str) -> bytes:
        """The result's bytes, within its 10-minute life, capped in bytes; retries reuse the checked addresses."""
        for _ in range(_MAX_REDIRECTS + 1):
            target, addresses = self._result_target(url)
            data, location = retrying(functools.partial(self._fetch_result, target, addresses), url, self._settings)
            if location is None:
                return data
            url = self._redirected(target, location)
        raise UpstreamError(f"Black Forest Labs' result URL redirected more than {_MAX_REDIRECTS} times.")

    def _result_target(self, url: str) -> tuple[httpx.URL, list[IPAddress]]:
        """The result URL parsed, and the checked addresses to connect to for it."""
        scheme = netpolicy.url_scheme(url)
        if scheme not in netpolicy.SCHEMES:
            raise UpstreamError(
                f"Black Forest Labs gave a result URL that is not an http(s) URL ({scheme or 'none'}:)."
            )
        try:
            target = httpx.URL(url)
        except httpx.InvalidURL:
            raise UpstreamError("Black Forest Labs gave a result URL that is not a valid URL.") from None
        host = target.raw_host.decode("ascii")
        if not host:
            raise UpstreamError("Black Forest Labs gave a result URL that names no host.")
        allow = self._settings.fetch_allow
        try:
            addresses = netpolicy.checked_addresses(host, netpolicy.url_port(target), allow, self._resolver)
        except OutboundForbidden as exc:
            raise _result_refused(exc) from None
        except (OSError, ValueError):
            raise unreachable("host name not resolved", 1, url, self._settings.bfl_api_key) from None
        if scheme != "https" and not all(netpolicy.is_allowed(host, a, allow) for a in addresses):
            raise UpstreamError(
                f"Black Forest Labs gave a result URL on {host} that is not https; fluxedit refused it."
            )
        return target, addresses

    def _redirected(self, url: httpx.URL, location: str) -> str:
        scheme = netpolicy.url_scheme(location)
        if scheme not in ("", *netpolicy.SCHEMES):  # "": relative, the page's own scheme
            raise UpstreamError(f"Black Forest Labs' result URL redirected to a {scheme}: URL; fluxedit refused it.")
        try:
            return str(url.join(location))
        except httpx.InvalidURL:
            raise UpstreamError("Black Forest Labs' result URL redirected to an invalid URL.") from None

    def _fetch_result(self, url: httpx.URL, addresses: list[IPAddress]) -> tuple[bytes, str | None]:
        """(body, None), or (b"", location) for a redirect; tries the checked addresses in turn."""
        client = self._http()
        last_error: httpx.ConnectError | None = None
        for address in addresses:
            try:
                response = client.send(netpolicy.pinned_request(client, url, address), stream=True)
            except httpx.ConnectError as exc:
                last_error = exc  # try the host's next address
                continue
            try:
                return self._read_result(response, url.raw_host.decode("ascii"))
            finally:
                response.close()
        assert last_error is not None  # checked_addresses gives at least one
        raise last_error  # a transport error: retried (with the same addresses) by `retrying`

    def _read_result(self, response: httpx.Response, host: str) -> tuple[bytes, str | None]:
        try:
            netpolicy.check_peer(response, host, self._settings.fetch_allow)
        except OutboundForbidden as exc:
            raise _result_refused(exc) from None
        location = netpolicy.redirect_location(response)
        if location is not None:
            return b"", location
        if response.status_code != 200:
            raise UpstreamError(
                f"Black Forest Labs' result URL answered HTTP {response.status_code} "
                "(results expire 10 minutes after the task finishes)."
            )
        return self._read_capped(response), None

    def _read_capped(self, response: httpx.Response) -> bytes:
        cap = self._settings.max_image_bytes
        buf = bytearray()
        for chunk in response.iter_bytes():
            buf += chunk
            if len(buf) > cap:
                raise UpstreamError(f"Black Forest Labs' result is larger than the {cap}-byte limit.")
        return bytes(buf)

    def _http(self) -> httpx.Client:
        if self._client is None:
            self.open()
        assert self._client is not None
        return self._client
