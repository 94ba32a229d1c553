"""What outbound traffic may reach: image fetches, BFL result downloads, webhook deliveries.

fluxedit sends requests to URLs that others name (callers' image URLs and webhooks,
BFL's result URLs), so it must not become their way into the operator's network
(SSRF). A URL is judged twice:

1. by itself, before any lookup (`check_url`): http or https, a host, and a host
   that is an IP literal must be outside the network -- what a submit can refuse
   at once;
2. at connect time: resolve the host once (`checked_addresses`) and check every
   address it resolves to; one address inside the network refuses the host. Then
   connect to a checked IP itself (`pinned_request`: the name goes in the Host
   header and TLS SNI, so certificates are still verified against it), so a DNS
   answer that changes between check and connect (rebinding) cannot slip through,
   and check the peer of the open connection once more (`check_peer`). Clients
   for this are built with `pinned_client_options`.

`allow` (`Settings.fetch_allow`) opens holes for the operator's own hosts:
- an IP address or CIDR network ("127.0.0.1", "10.20.0.0/16", "fd00::/8") allows
  every destination *address* in it, whatever host name led there;
- a host name ("images.internal") allows that exact name (not its subdomains),
  whatever addresses it resolves to -- but not the same addresses reached under
  another name or as an IP literal.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Sequence

import httpx

from fluxedit.errors import FluxeditError, InvalidInput

__all__ = [
    "ALLOW_HINT",
    "SCHEMES",
    "IPAddress",
    "OutboundForbidden",
    "Resolver",
    "check_address",
    "check_peer",
    "check_url",
    "checked_addresses",
    "is_allowed",
    "lookup",
    "pinned_client_options",
    "pinned_request",
    "redirect_location",
    "system_resolver",
    "url_port",
    "url_scheme",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> the addresses it resolves to; blocking.
Resolver = Callable[[str, int], Sequence[str]]

SCHEMES = ("http", "https")
ALLOW_HINT = "an operator can allow hosts or networks with FLUXEDIT_FETCH_ALLOW"

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_LOCATION = "fluxedit.redirect_location"
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")


class OutboundForbidden(FluxeditError):
    """A destination fluxedit does not send requests to.

    `host` is the name (or literal) the URL gave; `address` the refused address,
    `scheme` the refused scheme, whichever decided. `finding` is the fact alone
    ("x resolves to 10.0.0.1, a private address inside the network"), for callers
    that word the refusal for their own kind of URL.
    """

    code = "input_forbidden"
    status = 422

    def __init__(self, finding: str, *, host: str, address: IPAddress | None = None, scheme: str | None = None) -> None:
        rule = (
            f"outbound requests may only reach public addresses ({ALLOW_HINT})"
            if address is not None
            else "outbound requests are only sent to http and https URLs"
        )
        super().__init__(f"{finding}; {rule}")
        self.finding, self.host, self.address, self.scheme = finding, host, address, scheme


# --- the decision on one address ----------------------------------------------------------


def check_address(host: str, address: IPAddress, allow: list[str]) -> None:
    """Refuse (`OutboundForbidden`) an address inside the network unless `allow` covers it.

    Inside: loopback, private, link-local (169.254.169.254 included), site-local
    (fec0::/10), multicast, reserved, unspecified or otherwise not publicly
    routable; IPv4 addresses carried inside IPv6 (::ffff:a.b.c.d, 64:ff9b::/96,
    6to4) are judged as IPv4. `host` is the name the address was reached by.
    """
    kind = _inside_kind(address)
    if kind is None or is_allowed(host, address, allow):
        return
    where = f"{host} is" if _literal(host) == address else f"{host} resolves to {address},"
    raise OutboundForbidden(f"{where} a {kind} address inside the network", host=host, address=address)


def _as_judged(address: IPAddress) -> list[IPAddress]:
    """The addresses that decide: IPv4 for the IPv6 forms that only carry one."""
    if isinstance(address, ipaddress.IPv4Address):
        return [address]
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address in _NAT64:
        return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    if address.sixtofour is not None:  # 2002::/16 routes to its IPv4 address
        return [address, address.sixtofour]
    return [address]


def _inside_kind(address: IPAddress) -> str | None:
    """What kind of non-public address this is, or None for a public one."""
    for judged in _as_judged(address):
        for kind, inside in (
            ("unspecified", judged.is_unspecified),
            ("loopback", judged.is_loopback),
            ("link-local", judged.is_link_local),
            # Deprecated (RFC 3879) but still routed inside some sites; Python calls it global.
            ("site-local", isinstance(judged, ipaddress.IPv6Address) and judged.is_site_local),
            ("multicast", judged.is_multicast),
            ("reserved", judged.is_reserved),
            ("private", judged.is_private),
            ("non-public", not judged.is_global),
        ):
            if inside:
                return kind
    return None


def is_allowed(host: str, address: IPAddress, allow: list[str]) -> bool:
    """Whether `allow` (as `Settings.fetch_allow`, see the module doc) covers `address` reached as `host`."""
    addresses = [address, *_as_judged(address)]
    for entry in allow:
        try:
            network = ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            if _same_host(entry, host):
                return True
            continue
        if any(a.version == network.version and a in network for a in addresses):
            return True
    return False


def _same_host(a: str, b: str) -> bool:
    def norm(h: str) -> str:
        return h.strip().strip("[]").rstrip(".").lower()

    return norm(a) == norm(b)


# --- the URL alone, before any lookup -------------------------------------------------------


def url_scheme(text: str) -> str:
    """The scheme a URL text names, lower case ("" for a relative one); never fails to parse."""
    match = _SCHEME.match(text.strip())
    return match.group(1).lower() if match else ""


def check_url(text: str, allow: list[str]) -> httpx.URL:
    """The URL, if it may be requested as far as it alone tells: no name is looked up.

    Refuses (`OutboundForbidden`) a scheme other than http and https and an IP
    literal host inside the network (unless `allow` covers it); a text that is
    not a URL with a host is `InvalidInput`. A host name still needs
    `checked_addresses` at connect time.
    """
    scheme = url_scheme(text)
    if scheme not in SCHEMES:
        kind = f"a {scheme}: URL" if scheme else "a URL without a scheme"
        raise OutboundForbidden(f"{_short(text)} is {kind}", host="", scheme=scheme)
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL as exc:
        raise InvalidInput(f"{_short(text)} is not a valid URL ({exc}).") from None
    if not url.raw_host:
        raise InvalidInput(f"{_short(text)} is not a valid URL (it names no host).")
    host = url.raw_host.decode("ascii")
    literal = _literal(host)
    if literal is not None:
        check_address(host, literal, allow)
    return url


def url_port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


def _short(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- connect time -------------------------------------------------------------------------


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses getaddrinfo gives for host (blocking)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def lookup(host: str, port: int, resolver: Resolver) -> list[IPAddress]:
    """The addresses to connect to: an IP literal is itself, a name is resolved once.

    Blocking; the resolver's OSError passes through; an empty answer is an empty list.
    """
    literal = _literal(host)
    if literal is not None:
        return [literal]
    return [ipaddress.ip_address(name) for name in resolver(host, port)]


def checked_addresses(host: str, port: int, allow: list[str], resolver: Resolver) -> list[IPAddress]:
    """`lookup`, then `check_address` on every address: connect to these and no others.

    Raises OSError when the name does not resolve (or resolves to nothing),
    `OutboundForbidden` when one of its addresses is inside the network.
    """
    addresses = lookup(host, port, resolver)
    if not addresses:
        raise socket.gaierror(socket.EAI_NONAME, f"{host} resolves to no address")
    for address in addresses:
        check_address(host, address, allow)
    return addresses


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def pinned_client_options(*, asynchronous: bool = False) -> dict:
    """Keyword arguments for an httpx.Client (or AsyncClient) that sends pinned requests.

    Redirects are not followed: a redirect is a new URL that its caller checks
    like the first. Read a redirect's target with `redirect_location`.
    """
    take = _take_location_async if asynchronous else _take_location
    return {
        # No reuse: a pooled connection is keyed by IP, and must not carry a
        # request for another host name under the TLS session of the first.
        "limits": httpx.Limits(max_keepalive_connections=0),
        "follow_redirects": False,
        "trust_env": False,  # an environment proxy would connect where we did not check
        "event_hooks": {"response": [take]},
    }


def redirect_location(response: httpx.Response) -> str | None:
    """The Location of a redirect answered to a client of `pinned_client_options`, as sent."""
    return response.extensions.get(_LOCATION)


def _take_location(response: httpx.Response) -> None:
    # httpx builds the next request of every redirect, even unfollowed, and fails
    # on some Locations (data:..., http:x) with errors that are not HTTPError:
    # keep the Location out of its sight, for the caller to judge.
    if response.has_redirect_location:
        response.extensions[_LOCATION] = response.headers.pop("location")


async def _take_location_async(response: httpx.Response) -> None:
    _take_location(response)


def pinned_request(
    client: httpx.Client | httpx.AsyncClient,
    url: httpx.URL,
    address: IPAddress,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    **kwargs,
) -> httpx.Request:
    """A request for `url` that connects to `address` (checked) instead of looking the host up again.

    The Host header and TLS SNI carry the URL's host, so the server sees the name
    and its certificate is verified against it. `kwargs` go to `build_request`.
    """
    host = url.raw_host.decode("ascii")
    return client.build_request(
        method,
        url.copy_with(host=str(address)),
        headers={**(headers or {}), "Host": url.netloc.decode("ascii")},
        extensions={"sni_hostname": host} if url.scheme == "https" else {},
        **kwargs,
    )


def check_peer(response: httpx.Response, host: str, allow: list[str]) -> None:
    """`check_address` on the address the connection actually reached (belt and braces)."""
    stream = response.extensions.get("network_stream")
    peer = stream.get_extra_info("server_addr") if stream is not None else None
    if peer:
        check_address(host, ipaddress.ip_address(peer[0]), allow)
