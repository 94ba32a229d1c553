"""Fixtures for the playground's browser tests: a live tiny-model server with a key made by
`fluxedit keys create`, pictures on the loopback image server, and Debian's Chromium through
Playwright."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from _fixtures_images import ImageServer
from _fixtures_server import LiveServer, run_cli

CHROMIUM = Path("/usr/bin/chromium")
WAIT_MS = 120_000  # a job on a busy 2-core machine; never a timing assertion, only a ceiling
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def picture(size: tuple[int, int], color: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    """A small test picture: a flat color with a darker square, so it is not one plain value."""
    image = Image.new("RGB", size, color)
    image.paste(tuple(c // 2 for c in color), (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


class Pictures:
    """The playground tests' pictures, under /playground/ on the shared loopback image server."""

    def __init__(self, server: ImageServer) -> None:
        self.server = server
        server.add("/playground/tower.png", picture((320, 480), (70, 120, 200)), "image/png")
        server.add("/playground/field.jpg", picture((480, 320), (90, 170, 80), "JPEG"), "image/jpeg")

    def url(self, name: str) -> str:
        """URL of a picture by name; other names (e.g. missing.png) answer 404."""
        return self.server.url(f"/playground/{name}")


@pytest.fixture(scope="module")
def picture_server(image_server: ImageServer) -> Pictures:
    return Pictures(image_server)


@pytest.fixture(scope="module")
def picture_files(tmp_path_factory) -> list[Path]:
    """Two local image files to upload from the browser, of different sizes."""
    folder = tmp_path_factory.mktemp("uploads")
    files = [folder / "red.png", folder / "yellow.jpg"]
    files[0].write_bytes(picture((400, 300), (200, 60, 50)))
    files[1].write_bytes(picture((300, 400), (220, 190, 40), "JPEG"))
    return files


@pytest.fixture(scope="module")
def playground_server(tmp_path_factory) -> Iterator[LiveServer]:
    """`fluxedit serve --model tiny`, allowed to fetch references from loopback (the picture
    server), with a key of its own made by `fluxedit keys create`."""
    data_dir = tmp_path_factory.mktemp("playground-server")
    server = LiveServer(data_dir, ("--model", "tiny"), {"fetch_allow": '["127.0.0.1"]'})
    server.start()
    try:
        created = run_cli("keys", "create", "--name", "playground", data_dir=data_dir)
        assert created.returncode == 0, created.stderr
        server.api_key = created.stdout.split()[0]
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def no_auth_server(tmp_path_factory) -> Iterator[LiveServer]:
    """`fluxedit serve --model tiny --no-auth` on 127.0.0.1: no key at all."""
    server = LiveServer(
        tmp_path_factory.mktemp("no-auth-server"), ("--model", "tiny", "--no-auth"), {"fetch_allow": '["127.0.0.1"]'}
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def chromium():
    """Debian's Chromium, headless, through Playwright (never a downloaded browser build)."""
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's Chromium at /usr/bin/chromium: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()


@pytest.fixture
def browser_page(chromium, playground_server):
    """A fresh browser profile (empty localStorage) at 1280 x 900; fails the test on any script error."""
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=playground_server.base_url)
    page = context.new_page()
    script_errors: list[str] = []
    page.on("pageerror", lambda error: script_errors.append(str(error)))
    yield page
    context.close()
    assert not script_errors, f"the page threw: {script_errors}"


PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


@dataclass
class WatchedPage:
    """A page and what it did: console errors, every request's URL, every answer's status."""

    page: object
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    answers: list[tuple[int, str]] = field(default_factory=list)
    script_errors: list[str] = field(default_factory=list)


@pytest.fixture
def open_page(chromium):
    """open_page(server, viewport=DESKTOP) -> WatchedPage: a fresh profile; a phone viewport gets
    touch and mobile emulation too. Fails the test on any script error."""
    contexts, pages = [], []

    def open_(server, viewport=DESKTOP) -> WatchedPage:
        phone = viewport["width"] < 600
        context = chromium.new_context(viewport=viewport, is_mobile=phone, has_touch=phone, accept_downloads=True)
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.base_url)
        contexts.append(context)
        watched = WatchedPage(context.new_page())
        page = watched.page
        page.on("console", lambda m: m.type == "error" and watched.console_errors.append(m.text))
        page.on("request", lambda r: watched.requests.append(r.url))
        page.on("response", lambda r: watched.answers.append((r.status, r.url)))
        page.on("pageerror", lambda error: watched.script_errors.append(str(error)))
        pages.append(watched)
        return watched

    yield open_
    for context in contexts:
        context.close()
    thrown = [error for watched in pages for error in watched.script_errors]
    assert not thrown, f"the page threw: {thrown}"


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


# --- what a person does on the page ---------------------------------------------------


def open_with_key(page: Page, server, key: str | None = None) -> None:
    """Open the root URL and paste the key, as a person would."""
    page.goto(server.base_url + "/")
    expect(page.get_by_role("heading", name="Edit")).to_be_visible()
    page.get_by_label("API key", exact=True).fill(key or server.api_key)
    page.get_by_role("button", name="Use key").click()
    assert (key or server.api_key) not in page.url, "the key never goes into a URL"


def wait_for_models(page: Page) -> None:
    expect(page.locator("#key-message")).to_have_text("Key accepted; it is kept in this browser only.")
    expect(page.locator("#model option[value='blackforestlabs/flux-2/klein-4b/edit']")).to_have_count(1)


def references(page: Page):
    return page.locator("#ref-list li.ref")


def add_url(page: Page, url: str) -> None:
    page.get_by_placeholder("…or paste an image URL (https://…)").fill(url)
    page.get_by_role("button", name="Add URL").click()


def pick_size(page: Page, value: str) -> None:
    """Click the size card whose radio has `value` (e.g. landscape_4_3), as a person clicks it."""
    page.locator(f"label.size-option:has(input[value='{value}'])").click()
