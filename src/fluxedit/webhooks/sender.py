"""Sending one webhook attempt, through the outbound address policy (fluxedit.netpolicy).

A destination is judged at submit by its URL alone (`check_destination`), and again
at every attempt on the addresses it resolves to and on the address connected (the
connection is pinned to a checked address). A refusal is final; redirects are not
followed (a 3xx is a failed attempt).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import httpx

from fluxedit import __version__, netpolicy
from fluxedit.errors import FluxeditError, InvalidInput
from fluxedit.jobs.outbox import Outcome
from fluxedit.netpolicy import ALLOW_HINT, OutboundForbidden, Resolver, system_resolver

MAX_ADDRESSES = 3  # of a host's addresses, tried in turn within the one timeout


@dataclass(frozen=True)
class Delivery:
    """What goes on the wire for one attempt."""

    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def check_destination(url: str, allow: list[str], *, field: str = "webhook") -> str:
    """`url` if a webhook may be sent there as far as the URL alone tells; a 422 naming `field` if not."""
    try:
        netpolicy.check_url(url, allow)
    except OutboundForbidden as exc:
        rule = (
            f"webhooks may only be sent to public addresses ({ALLOW_HINT})"
            if exc.address is not None
            else "webhooks are only sent to http and https URLs"
        )
        raise FluxeditError(f"{field}: {exc.finding}; {rule}.", code=exc.code, status=422, field=field) from None
    except InvalidInput as exc:
        raise InvalidInput(f"{field}: {exc.message}", field=field) from None
    return url


def post(
    url: str, delivery: Delivery, *, allow: list[str], timeout_s: float, resolver: Resolver = system_resolver
) -> Outcome:
    """POST `delivery` to `url` once; how it went. Never raises for the network or the receiver."""
    try:
        parsed = netpolicy.check_url(url, allow)
        host = parsed.raw_host.decode("ascii")
        addresses = netpolicy.checked_addresses(host, netpolicy.url_port(parsed), allow, resolver)
    except (OutboundForbidden, InvalidInput) as exc:
        return Outcome("refused", error=exc.message)
    except OSError as exc:
        return Outcome("failed", error=f"could not look up {url}: {exc}")
    deadline = time.monotonic() + timeout_s
    headers = {"Content-Type": "application/json", "User-Agent": f"fluxedit-webhooks/{__version__}"}
    last_error: Exception | None = None
    with httpx.Client(timeout=timeout_s, **netpolicy.pinned_client_options()) as client:
        for address in addresses[:MAX_ADDRESSES]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            request = netpolicy.pinned_request(
                client,
                parsed,
                address,
                method="POST",
                headers={**headers, **delivery.headers},
                content=delivery.body,
                timeout=remaining,
            )
            try:
                response = client.send(request, stream=True)
            except httpx.ConnectError as exc:
                last_error = exc  # the host's next address
                continue
            except httpx.TimeoutException:
                return Outcome("failed", error=f"no answer within {timeout_s:g} s")
            except httpx.HTTPError as exc:
                return Outcome("failed", error=f"{type(exc).__name__}: {exc}")
            try:
                netpolicy.check_peer(response, host, allow)
            except OutboundForbidden as exc:
                return Outcome("refused", error=exc.message)
            finally:
                response.close()
            return answered(response)
    if last_error is None:
        return Outcome("failed", error=f"no answer within {timeout_s:g} s")
    return Outcome("failed", error=f"could not connect to {host}: {last_error}")


def answered(response: httpx.Response) -> Outcome:
    """The outcome of a receiver's answer: 2xx delivered, 410 gone, anything else a failed attempt."""
    status = response.status_code
    if 200 <= status < 300:
        return Outcome("delivered", status_code=status)
    if status == 410:
        return Outcome("gone", status_code=status, error="the receiver answered 410 Gone: no more tries")
    location = netpolicy.redirect_location(response)
    if location is not None:
        return Outcome("failed", status_code=status, error=f"redirect to {location[:200]} not followed")
    return Outcome("failed", status_code=status, error=f"the receiver answered {status}")
