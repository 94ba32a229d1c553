"""fetch_references against a real image server on 127.0.0.1; check_address as a decision.

Refusals of addresses outside loopback are tested on the decision function (or on
an injected resolver's answer), never by connecting: the `connections` fixture
records every connect and refuses non-loopback ones.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import gzip
import ipaddress
import socket
from collections.abc import Iterator

import pytest

from _fixtures_images import ImageServer
from fluxedit.config import Settings
from fluxedit.errors import ImageInputError
from fluxedit.images.fetch import Fetcher, check_address, fetch_references

ip = ipaddress.ip_address


@pytest.fixture
def image_server() -> Iterator[ImageServer]:
    """A fresh server for each test here (not the session's): these tests count its requests."""
    with ImageServer() as server:
        yield server.add_defaults()


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path, fetch_allow=["127.0.0.1"])


def refused(urls, settings, code, **kwargs) -> ImageInputError:
    with pytest.raises(ImageInputError) as caught:
        fetch_references(urls, settings, **kwargs)
    assert caught.value.code == code, caught.value.message
    return caught.value


def fake_dns(table: dict[str, list[str]], calls: list[str] | None = None):
    """A resolver answering from `table`; names not in it do not exist."""

    def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return resolve


# --- the decision, without connecting ----------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("0.0.0.0", "unspecified"),
        ("127.0.0.1", "loopback"),
        ("100.64.0.1", "non-public"),  # carrier-grade NAT
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("fec0::1", "site-local"),  # deprecated, still routed inside some sites
        ("feff:ffff::1", "site-local"),  # the last of fec0::/10
        ("ff02::1", "multicast"),
        ("::", "unspecified"),
        ("::ffff:10.0.0.1", "private"),  # IPv4-mapped
        ("::ffff:127.0.0.1", "loopback"),
        ("64:ff9b::a00:1", "private"),  # NAT64 to 10.0.0.1
        ("2002:a00:1::1", "private"),  # 6to4 from 10.0.0.1
    ],
)
def test_addresses_inside_the_network_are_forbidden(address, kind):
    with pytest.raises(ImageInputError) as caught:
        check_address("images.example", ip(address), [])
    assert caught.value.code == "input_forbidden"
    assert f"images.example resolves to {ip(address)}, a {kind} address" in caught.value.message
    assert "FLUXEDIT_FETCH_ALLOW" in caught.value.message


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "64:ff9b::5db8:d822"])
def test_public_addresses_pass_the_decision(address):
    assert check_address("example.com", ip(address), []) is None


def test_allowed_networks_cover_addresses_whatever_the_name():
    allow = ["10.0.0.0/8", "fd00::/8"]
    check_address("images.internal", ip("10.1.2.3"), allow)
    check_address("10.1.2.3", ip("10.1.2.3"), allow)
    check_address("other.internal", ip("::ffff:10.1.2.3"), allow)  # IPv4-mapped counts as IPv4
    check_address("v6.internal", ip("fd12::5"), allow)
    with pytest.raises(ImageInputError, match="192.168.0.1 is a private address"):
        check_address("192.168.0.1", ip("192.168.0.1"), allow)


def test_allowed_host_names_cover_that_name_only():
    allow = ["images.internal"]
    check_address("images.internal", ip("10.1.2.3"), allow)
    check_address("Images.Internal.", ip("10.1.2.3"), allow)  # DNS names: case and final dot
    for host in ("other.internal", "cdn.images.internal", "10.1.2.3"):
        with pytest.raises(ImageInputError) as caught:
            check_address(host, ip("10.1.2.3"), allow)
        assert caught.value.code == "input_forbidden"


# --- fetching from the loopback image server -----------------------------------------


def test_fetches_allowed_urls_concurrently_in_order(image_server, settings):
    a = image_server.add_image("/a.png", color=(255, 0, 0))
    b = image_server.add_image("/b.jpg", color=(0, 255, 0), fmt="JPEG")
    data_uri = "data:image/png;base64," + base64.b64encode(a).decode()
    got = fetch_references([image_server.url("/a.png"), data_uri, image_server.url("/b.jpg")], settings)
    assert got == [a, a, b]
    assert image_server.requests_for("/a.png", host="127.0.0.1") == 1


def test_loopback_is_refused_before_connecting_unless_allowed(image_server, settings, connections):
    image_server.add_image("/a.png")
    settings.fetch_allow = []
    err = refused([image_server.url("/a.png")], settings, "input_forbidden")
    assert err.index == 0
    assert image_server.url("/a.png") in err.message
    assert "127.0.0.1 is a loopback address" in err.message
    assert connections == [] and image_server.requests_for() == 0


@pytest.mark.parametrize("host", ["127.1", "2130706433", "0x7f.0.0.1"])
def test_numeric_spellings_of_loopback_are_caught_after_resolving(image_server, settings, host):
    image_server.add_image("/a.png")
    settings.fetch_allow = []
    err = refused([image_server.url("/a.png", host=host)], settings, "input_forbidden")
    assert "127.0.0.1, a loopback address" in err.message
    assert image_server.requests_for() == 0


def test_a_name_resolving_into_the_network_is_refused_without_connecting(image_server, settings, connections):
    calls: list[str] = []
    url = "http://images.example/cat.png"
    err = refused([url], settings, "input_forbidden", resolver=fake_dns({"images.example": ["10.0.0.1"]}, calls))
    assert calls == ["images.example"]
    assert "images.example resolves to 10.0.0.1, a private address" in err.message
    # One bad address among good ones refuses the host: nothing is tried.
    dns = fake_dns({"images.example": ["127.0.0.1", "169.254.169.254"]})
    err = refused([f"http://images.example:{image_server.port}/cat.png"], settings, "input_forbidden", resolver=dns)
    assert "169.254.169.254, a link-local address" in err.message
    assert connections == [] and image_server.requests_for() == 0


def test_allowed_network_covers_a_name_that_resolves_into_it(image_server, settings):
    cat = image_server.add_image("/cat.png")
    image_server.add_redirect("/hop", image_server.url("/cat.png", host="localhost"))
    dns = fake_dns({"localhost": ["127.0.0.1"]})
    assert fetch_references([image_server.url("/hop")], settings, resolver=dns) == [cat]
    # Connected to the checked address, but asked for the name: Host says localhost.
    assert image_server.requests_for("/cat.png", host="localhost") == 1


def test_connects_to_the_address_checked_not_to_a_second_lookup(image_server, settings, connections):
    cat = image_server.add_image("/cat.png")
    # Only the injected resolver knows images.test; a second (system) lookup would fail.
    dns = fake_dns({"images.test": ["127.0.0.1"]})
    assert fetch_references([f"http://images.test:{image_server.port}/cat.png"], settings, resolver=dns) == [cat]
    assert connections == [("127.0.0.1", image_server.port)] and connections.lookups == []
    assert image_server.requests_for("/cat.png", host="images.test") == 1


def test_allowed_network_refuses_a_name_that_also_resolves_outside_it(image_server, settings, connections):
    image_server.add_image("/cat.png")
    image_server.add_redirect("/hop", image_server.url("/cat.png", host="localhost"))
    dns = fake_dns({"localhost": ["127.0.0.1", "::1"]})
    err = refused([image_server.url("/hop")], settings, "input_forbidden", resolver=dns)
    assert f"after a redirect to {image_server.url('/cat.png', host='localhost')}" in err.message
    assert "localhost resolves to ::1, a loopback address" in err.message
    assert image_server.requests_for("/hop") == 1 and image_server.requests_for("/cat.png") == 0


def test_allowed_host_name_does_not_cover_its_address_under_another_name(image_server, settings):
    cat = image_server.add_image("/cat.png")
    image_server.add_redirect("/to-ip", image_server.url("/cat.png"))  # http://127.0.0.1:<port>/cat.png
    settings.fetch_allow = ["localhost"]
    dns = fake_dns({"localhost": ["127.0.0.1"]})
    assert fetch_references([image_server.url("/cat.png", host="localhost")], settings, resolver=dns) == [cat]
    err = refused([image_server.url("/to-ip", host="localhost")], settings, "input_forbidden", resolver=dns)
    assert "127.0.0.1 is a loopback address" in err.message
    assert image_server.requests_for("/cat.png") == 1  # only the first, allowed fetch


def test_the_system_resolver_is_used_by_default(image_server, settings):
    cat = image_server.add_image("/cat.png")
    settings.fetch_allow = ["localhost"]
    assert fetch_references([image_server.url("/cat.png", host="localhost")], settings) == [cat]


def test_redirect_to_a_non_allowed_loopback_address(image_server, settings, connections):
    image_server.add_image("/cat.png")
    err = refused([image_server.url("/redirect-to-loopback")], settings, "input_forbidden")
    assert "127.0.0.2 is a loopback address" in err.message
    assert connections and all(address[0] == "127.0.0.1" for address in connections)  # the first hop only
    assert image_server.requests_for("/cat.png") == 0


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/a.png", "gopher://127.0.0.1:70/"])
def test_other_schemes_are_refused(url, settings, connections):
    err = refused([url], settings, "input_forbidden")
    assert url in err.message and "only http, https and data: URLs" in err.message
    assert connections == []


def test_redirect_to_a_file_url_is_refused(image_server, settings):
    image_server.add_redirect("/to-file", "file:///etc/passwd")
    err = refused([image_server.url("/to-file")], settings, "input_forbidden")
    assert "redirects to file:///etc/passwd" in err.message


@pytest.mark.parametrize("payload_bytes", [16, 60_000])  # the long one is past httpx's URL length limit
def test_redirect_to_a_data_uri_is_refused_naming_the_scheme(image_server, settings, connections, payload_bytes):
    data_uri = (
        "data:image/png;base64," + base64.b64encode(image_server.add_image("/cat.png") + b"\0" * payload_bytes).decode()
    )
    image_server.add_redirect("/to-data", data_uri)
    err = refused([image_server.url("/to-data")], settings, "input_forbidden")
    assert "it redirects to data:image/png;base64,..." in err.message and "a data: URL" in err.message
    assert "only http and https redirects are followed" in err.message and len(err.message) < 300
    assert connections == [("127.0.0.1", image_server.port)]  # the first hop only


def test_redirect_to_other_schemes_is_refused_naming_them(image_server, settings):
    for n, location in enumerate(["javascript:alert(1)", "ftp://127.0.0.1/cat.png", "gopher://127.0.0.1:70/"]):
        image_server.add_redirect(f"/to-other-{n}", location)
        err = refused([image_server.url(f"/to-other-{n}")], settings, "input_forbidden")
        assert f"a {location.split(':')[0]}: URL" in err.message


def test_redirects_httpx_cannot_follow_are_judged_not_internal_errors(image_server, settings):
    cat = image_server.add_image("/cat.png")
    image_server.add_redirect("/to-broken", "http://127.0.0.1:port/cat.png")
    err = refused([image_server.url("/to-broken")], settings, "input_unreachable")
    assert "redirects to http://127.0.0.1:port/cat.png, not a valid URL" in err.message
    image_server.add_redirect("/to-schemed-relative", "http:cat.png")  # RFC 3986 5.2.2: relative
    assert fetch_references([image_server.url("/to-schemed-relative")], settings) == [cat]


def test_redirect_chains_up_to_the_limit(image_server, settings):
    cat = image_server.add_image("/cat.png")
    image_server.add_redirect_chain("/five", 5, "/cat.png")
    image_server.add_redirect_chain("/six", 6, "/cat.png")
    assert fetch_references([image_server.url("/five")], settings) == [cat]
    err = refused([image_server.url("/six")], settings, "input_unreachable")
    assert "redirected more than 5 times" in err.message
    assert image_server.requests_for("/cat.png") == 1


def test_http_errors_name_the_status_and_the_index(image_server, settings):
    image_server.add_image("/cat.png")
    err = refused([image_server.url("/cat.png"), image_server.url("/missing.png")], settings, "input_unreachable")
    assert err.index == 1
    assert image_server.url("/missing.png") in err.message and "HTTP 404" in err.message


def test_html_is_not_an_image(image_server, settings):
    err = refused([image_server.url("/page.html")], settings, "input_not_image")
    assert "text/html" in err.message


def test_body_over_the_cap_is_too_large(image_server, settings):
    err = refused([image_server.url("/huge.png")], settings, "input_too_large")  # 60 MB, 50 MB cap
    assert "52,428,800 bytes" in err.message


def test_reading_stops_at_the_cap(image_server, settings):
    image_server.add_stream("/stream.png", 60 * 1024 * 1024)
    settings.max_image_bytes = 4 * 1024 * 1024
    refused([image_server.url("/stream.png")], settings, "input_too_large")
    stats = image_server.stream("/stream.png")
    # Hung up after about 4 MB: the server could not send the rest (kernel
    # buffers hold some tens of MB at most).
    assert not stats.completed and stats.sent < 60 * 1024 * 1024


def test_declared_length_over_the_cap_is_refused_before_reading(image_server, settings):
    image_server.add_stream("/declared.png", 60 * 1024 * 1024, declare_length=True)
    err = refused([image_server.url("/declared.png")], settings, "input_too_large")
    assert "62,914,560 bytes" in err.message
    assert not image_server.stream("/declared.png").completed


def test_compressed_bodies_count_at_their_decoded_size(image_server, settings):
    bomb = gzip.compress(b"\0" * (4 * 1024 * 1024))  # a few kB on the wire
    image_server.add("/bomb.png", bomb, headers={"Content-Encoding": "gzip"})
    settings.max_image_bytes = 1024 * 1024
    refused([image_server.url("/bomb.png")], settings, "input_too_large")


def test_slow_server_times_out(image_server, settings):
    settings.fetch_total_timeout_s = 0.5
    err = refused([image_server.url("/slow.png")], settings, "input_unreachable")
    assert "within 0.5 s" in err.message


def test_unreachable_port_and_unknown_host(settings):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    err = refused([f"http://127.0.0.1:{port}/a.png"], settings, "input_unreachable")
    assert "could not connect to 127.0.0.1" in err.message
    err = refused(["https://no-such-host.example/a.png"], settings, "input_unreachable", resolver=fake_dns({}))
    assert "no-such-host.example could not be resolved" in err.message


def test_data_uris(settings):
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n fake").decode()
    assert fetch_references([f"data:image/png;base64,{png}"], settings) == [b"\x89PNG\r\n\x1a\n fake"]
    assert fetch_references(["data:,hello%20there"], settings) == [b"hello there"]
    err = refused(["data:text/html;base64," + "A" * 5000], settings, "input_not_image")
    assert "text/html" in err.message
    assert len(err.message) < 300  # the 5,000 characters are not repeated
    refused(["data:image/png;base64,!!not base64!!"], settings, "input_not_image")
    settings.max_image_bytes = 1024
    refused(["data:image/png;base64," + "A" * 4000], settings, "input_too_large")


def test_long_urls_are_shortened_in_messages(image_server, settings):
    url = image_server.url("/" + "x" * 5000)
    err = refused([url], settings, "input_unreachable")
    assert "HTTP 404" in err.message and len(err.message) < 300


def test_urls_this_server_issued_are_read_without_http(settings, connections):
    issued = "https://fluxedit.example/files/uploads/k/1.png?expires=1&sig=x"
    calls: list[str] = []

    def resolve_local(url: str) -> bytes | None:
        calls.append(url)
        return b"stored bytes" if url == issued else None

    assert fetch_references([issued], settings, resolve_local=resolve_local) == [b"stored bytes"]
    assert calls == [issued] and connections == []


def test_safe_from_worker_threads_and_from_a_running_loop(image_server, settings):
    cat = image_server.add_image("/cat.png")
    urls = [image_server.url("/cat.png")] * 3
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: fetch_references(urls, settings), range(4)))
    assert results == [[cat] * 3] * 4

    async def from_async_code() -> list[bytes]:
        return fetch_references(urls, settings)

    assert asyncio.run(from_async_code()) == [cat] * 3


def test_a_fetcher_opens_no_client_for_data_uris_and_issued_urls(settings, connections):
    issued = "https://fluxedit.example/files/uploads/k/1.png?expires=1&sig=x"
    fetcher = Fetcher(settings, resolve_local=lambda url: b"stored bytes" if url == issued else None)
    assert fetcher.fetch(["data:,hello", issued]) == [b"hello", b"stored bytes"]
    assert (fetcher.clients_opened, fetcher.tls_contexts_made) == (0, 0)
    assert connections == [] and connections.lookups == []


def test_a_fetcher_makes_its_tls_context_once_for_all_its_fetches(image_server, settings):
    cat = image_server.add_image("/cat.png")
    fetcher = Fetcher(settings)
    for _ in range(3):
        assert fetcher.fetch([image_server.url("/cat.png"), "data:,x"]) == [cat, b"x"]
    assert (fetcher.clients_opened, fetcher.tls_contexts_made) == (3, 1)


def test_a_failing_data_uri_before_a_url_wins_without_fetching_the_url(image_server, settings):
    cat = image_server.add_image("/cat.png")
    err = refused(["data:text/html,<p>", image_server.url("/cat.png")], settings, "input_not_image")
    assert err.index == 0
    assert image_server.requests_for("/cat.png") == 0
    # A failing URL before a failing data: URI is the one reported.
    err = refused([image_server.url("/missing.png"), "data:text/html,<p>"], settings, "input_unreachable")
    assert err.index == 0
    assert fetch_references(["data:,x", image_server.url("/cat.png")], settings) == [b"x", cat]
