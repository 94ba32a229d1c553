"""netpolicy: what outbound traffic may reach, judged on the decision (given an address).

Nothing here connects outside loopback: the `connections` fixture records every
connect and lookup and refuses non-loopback ones; pinned requests go to the
loopback image server.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator

import httpx
import pytest

from _fixtures_images import ImageServer
from fluxedit.errors import ImageInputError, InvalidInput
from fluxedit.netpolicy import (
    OutboundForbidden,
    check_address,
    check_peer,
    check_url,
    checked_addresses,
    pinned_client_options,
    pinned_request,
    redirect_location,
)

ip = ipaddress.ip_address


@pytest.fixture
def image_server() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server


def answers(table: dict[str, list[str]], calls: list[str]):
    def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return resolve


# --- one address -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("10.0.0.1", "private"),
        ("169.254.169.254", "link-local"),
        ("fec0::1", "site-local"),
        ("fed0:1::2", "site-local"),
    ],
)
def test_refusals_name_host_address_and_kind_and_are_not_image_errors(address, kind):
    with pytest.raises(OutboundForbidden) as caught:
        check_address("hooks.example", ip(address), [])
    err = caught.value
    assert not isinstance(err, ImageInputError)
    assert err.code == "input_forbidden" and err.status == 422
    assert f"hooks.example resolves to {ip(address)}, a {kind} address inside the network" in err.message
    assert "FLUXEDIT_FETCH_ALLOW" in err.message
    assert (err.host, err.address) == ("hooks.example", ip(address))


def test_site_local_is_allowed_like_any_network_when_listed():
    check_address("hooks.example", ip("fec0::1"), ["fec0::/10"])


# --- the URL alone ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("data:image/png;base64," + "A" * 80_000, "data"),  # past httpx's URL length: judged all the same
        ("file:///etc/passwd", "file"),
        ("javascript:alert(1)", "javascript"),
        ("FTP://127.0.0.1/x", "ftp"),
    ],
)
def test_check_url_refuses_other_schemes_naming_them(url, scheme, connections):
    with pytest.raises(OutboundForbidden) as caught:
        check_url(url, [])
    assert f"a {scheme}: URL" in caught.value.message and "only sent to http and https URLs" in caught.value.message
    assert caught.value.scheme == scheme and len(caught.value.message) < 300
    assert connections == [] and connections.lookups == []


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://127.0.0.1:8000/hook", "127.0.0.1"),
        ("https://[::1]/hook", "::1"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254"),
        ("https://[fec0::5]/hook", "fec0::5"),
        ("http://[::ffff:10.0.0.1]/hook", "::ffff:10.0.0.1"),
    ],
)
def test_check_url_refuses_ip_literals_inside_without_a_lookup(url, address, connections):
    with pytest.raises(OutboundForbidden) as caught:
        check_url(url, [])
    assert f"{address} is a " in caught.value.message and caught.value.address == ip(address)
    assert connections == [] and connections.lookups == []


def test_check_url_passes_public_literals_names_and_allowed_literals_without_a_lookup(connections):
    assert check_url("https://93.184.216.34/hook", []).host == "93.184.216.34"
    assert check_url("https://hooks.example/x?y=1", []).host == "hooks.example"  # its addresses: at connect time
    assert check_url("http://10.1.2.3:9000/hook", ["10.0.0.0/8"]).port == 9000
    assert connections == [] and connections.lookups == []


@pytest.mark.parametrize(("url", "says"), [("https://", "names no host"), ("http://x:port/", "Invalid port")])
def test_check_url_calls_a_broken_url_invalid(url, says):
    with pytest.raises(InvalidInput, match=f"is not a valid URL.*{says}"):
        check_url(url, [])


# --- connect time ---------------------------------------------------------------------


def test_checked_addresses_resolve_once_and_check_every_address(connections):
    calls: list[str] = []
    dns = answers({"hooks.example": ["93.184.216.34", "10.0.0.7"], "ok.example": ["93.184.216.34"]}, calls)
    with pytest.raises(OutboundForbidden, match="hooks.example resolves to 10.0.0.7, a private address"):
        checked_addresses("hooks.example", 443, [], dns)
    assert checked_addresses("ok.example", 443, [], dns) == [ip("93.184.216.34")]
    assert checked_addresses("127.0.0.1", 80, ["127.0.0.1"], dns) == [ip("127.0.0.1")]  # a literal: no lookup
    assert calls == ["hooks.example", "ok.example"]
    with pytest.raises(OSError):
        checked_addresses("nowhere.example", 443, [], dns)
    with pytest.raises(OSError, match="resolves to no address"):
        checked_addresses("empty.example", 443, [], answers({"empty.example": []}, calls))
    assert connections == []


def test_a_pinned_request_reaches_the_checked_address_under_the_name(image_server, connections):
    image_server.add("/hook", b"ok", "text/plain")
    calls: list[str] = []
    url = httpx.URL(f"http://hooks.test:{image_server.port}/hook")
    dns = answers({"hooks.test": ["127.0.0.1"]}, calls)
    [address] = checked_addresses("hooks.test", image_server.port, ["127.0.0.1"], dns)
    with httpx.Client(**pinned_client_options()) as client:
        response = client.send(pinned_request(client, url, address), stream=True)
        try:
            check_peer(response, "hooks.test", ["127.0.0.1"])
            with pytest.raises(OutboundForbidden, match="hooks.test resolves to 127.0.0.1, a loopback"):
                check_peer(response, "hooks.test", [])  # the peer is judged as the name's address
            assert response.read() == b"ok"
        finally:
            response.close()
    assert calls == ["hooks.test"] and "hooks.test" not in connections.lookups  # the IP literal is no lookup
    assert connections == [("127.0.0.1", image_server.port)]
    assert [r.host for r in image_server.requests] == ["hooks.test"]


@pytest.mark.parametrize("location", ["data:image/png;base64," + "A" * 80_000, "http:x", "http://x:port/"])
def test_redirects_are_handed_over_as_sent_whatever_they_say(image_server, location):
    image_server.add("/moved", b"", "text/plain", status=302, headers={"Location": location})
    url = httpx.URL(image_server.url("/moved"))
    with httpx.Client(**pinned_client_options()) as client:
        response = client.send(pinned_request(client, url, ip("127.0.0.1")))
    assert response.status_code == 302 and redirect_location(response) == location
