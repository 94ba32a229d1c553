"""The playground's views, at a desktop's 1280 x 900 and a phone's 390 x 844, in Debian's Chromium
against a live `fluxedit serve --model tiny`: the run and the result in view, the result beside
its references with before/after and zoom, history cards, "Show code", words and ids."""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from _fixtures_playground import (
    DESKTOP,
    PHONE,
    WAIT_MS,
    add_url,
    open_with_key,
    pick_size,
    references,
    wait_for_models,
)

pytestmark = pytest.mark.browser
VIEWPORTS = pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["1280", "390"])

# True when all of `el` can be seen: inside the window and inside every scrolling box around it.
WHOLLY_IN_VIEW = """(el) => {
  const r = el.getBoundingClientRect();
  if (!r.width || !r.height) return false;
  const boxes = [{top: 0, left: 0, bottom: innerHeight, right: innerWidth}];
  for (let p = el.parentElement; p; p = p.parentElement) {
    if (getComputedStyle(p).overflowY !== "visible") boxes.push(p.getBoundingClientRect());
  }
  return boxes.every((b) => r.top >= b.top - 1 && r.bottom <= b.bottom + 1 && r.left >= b.left - 1 && r.right <= b.right + 1);
}"""

BLUE = (70, 120, 200)  # tower.png, reference 1 in these tests (its darker square is near the middle)


def fill_edit(page: Page, picture_server, *, steps: int, urls=("tower.png", "field.jpg")) -> None:
    page.get_by_label("Prompt", exact=True).fill("Put the tower in the field at dusk")
    for name in urls:
        add_url(page, picture_server.url(name))
    expect(references(page)).to_have_count(len(urls))
    pick_size(page, "landscape_4_3")
    page.get_by_text("Advanced").click()
    page.get_by_label("Steps", exact=True).fill(str(steps))


def finished_edit(page: Page, server, picture_server) -> None:
    """A person's whole edit: key, two references, Edit image, until the result shows."""
    open_with_key(page, server)
    wait_for_models(page)
    fill_edit(page, picture_server, steps=2)
    page.get_by_role("button", name="Edit image").click()
    expect(page.locator("#runs li.job .job-state").first).to_have_text("Completed", timeout=WAIT_MS)
    page.wait_for_function("document.querySelector('img.result-image')?.complete")


def box_of(locator) -> dict:
    box = locator.bounding_box()
    assert box, f"{locator} is not laid out"
    return box


def boxes_of(*locators) -> list[dict]:
    """The boxes of several elements read in one frame, so a smooth scroll between reads cannot skew them."""
    handles = [locator.element_handle() for locator in locators]
    return locators[0].page.evaluate(
        "(els) => els.map((e) => { const r = e.getBoundingClientRect();"
        " return {x: r.x, y: r.y, width: r.width, height: r.height}; })",
        handles,
    )


def mean_color(png: bytes, x: float, y: float) -> tuple[float, ...]:
    """The mean color of a 9 x 9 patch at (x, y), as fractions of the picture's width and height."""
    with Image.open(io.BytesIO(png)) as picture:
        rgb = picture.convert("RGB")
        cx, cy = int(x * rgb.width), int(y * rgb.height)
        patch = [rgb.getpixel((i, j)) for i in range(cx - 4, cx + 5) for j in range(cy - 4, cy + 5)]
    return tuple(sum(p[c] for p in patch) / len(patch) for c in range(3))


def near(color, target, tolerance: float = 25) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(color, target))


@VIEWPORTS
def test_progress_then_result_come_into_view_after_edit_image(
    open_page, playground_server, picture_server, viewport, artifacts_dir
):
    watched = open_page(playground_server, viewport)
    page = watched.page
    open_with_key(page, playground_server)
    wait_for_models(page)
    fill_edit(page, picture_server, steps=8)
    page.evaluate("window.scrollTo(0, 0)")
    submit = page.get_by_role("button", name="Edit image")
    assert box_of(submit)["y"] > viewport["height"], "Edit image starts below the fold"

    # Whether the new run's progress bar was ever wholly in view, checked at every frame.
    page.evaluate(
        f"""() => {{
          const inView = {WHOLLY_IN_VIEW};
          window.__barSeen = false;
          const look = () => {{
            const bar = document.querySelector("#runs li.job [role=progressbar]");
            if (bar && inView(bar)) window.__barSeen = true;
            else requestAnimationFrame(look);
          }};
          requestAnimationFrame(look);
        }}"""
    )
    submit.click()  # Playwright scrolls down to it first, as a person does
    page.wait_for_function("window.__barSeen", timeout=WAIT_MS)
    page.screenshot(path=str(artifacts_dir / f"in-view-progress-{viewport['width']}.png"))

    run = page.locator("#runs li.job").first
    expect(run.locator(".job-state")).to_have_text("Completed", timeout=WAIT_MS)
    image = page.locator("img.result-image")
    page.wait_for_function(WHOLLY_IN_VIEW, arg=image.element_handle(), timeout=WAIT_MS)
    box = box_of(image)
    assert 0 <= box["y"] and box["y"] + box["height"] <= viewport["height"] + 0.5, box  # half a pixel: rounding
    assert 0 <= box["x"] and box["x"] + box["width"] <= viewport["width"] + 0.5, box
    page.screenshot(path=str(artifacts_dir / f"in-view-result-{viewport['width']}.png"))


@VIEWPORTS
def test_result_beside_its_references_with_before_after_and_zoom(
    open_page, playground_server, picture_server, viewport, artifacts_dir
):
    page = open_page(playground_server, viewport).page
    finished_edit(page, playground_server, picture_server)
    result = page.locator("#result")
    image = result.locator("img.result-image")

    # The references, named as people count them, beside the output (below it on a phone).
    refs = result.get_by_role("list", name="The references of this edit").get_by_role("listitem")
    expect(refs).to_have_count(2)
    expect(refs.nth(0)).to_have_text("Reference 1")
    expect(refs.nth(1)).to_have_text("Reference 2")
    image_box, refs_box = boxes_of(image, refs.nth(0))
    if viewport is DESKTOP:
        assert refs_box["x"] >= image_box["x"] + image_box["width"], "the references stand beside the output"
    else:
        assert refs_box["y"] >= image_box["y"] + image_box["height"], "on a phone, below it"

    # Before/after: the slider uncovers reference 1 over the output, from the left.
    stage = result.locator(".result-stage")
    assert not near(mean_color(stage.screenshot(), 0.1, 0.9), BLUE), "the output is not the reference"
    compare = result.get_by_role("button", name="Compare with reference 1")
    compare.click()
    expect(compare).to_have_attribute("aria-pressed", "true")
    slider = result.get_by_role("slider", name=re.compile("^Before and after"))
    covered, shown = boxes_of(result.locator("img.compare-before"), image)
    assert all(abs(covered[k] - shown[k]) <= 1 for k in ("x", "y", "width", "height")), (
        "reference 1 lies over the output"
    )
    slider.fill("100")
    shot = stage.screenshot()
    assert near(mean_color(shot, 0.1, 0.9), BLUE) and near(mean_color(shot, 0.9, 0.9), BLUE)
    slider.fill("40")
    shot = stage.screenshot()
    assert near(mean_color(shot, 0.1, 0.9), BLUE) and not near(mean_color(shot, 0.9, 0.9), BLUE)
    page.screenshot(path=str(artifacts_dir / f"compare-{viewport['width']}.png"))
    compare.click()
    expect(slider).to_be_hidden()

    # Click to zoom: fitted to the screen, then at its actual pixels; Escape closes it.
    zoom_button = result.get_by_role("button", name="Zoom the result")
    zoom_button.click()
    dialog = page.get_by_role("dialog", name="Zoomed image")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Result · 1024 × 768")
    zoomed = dialog.locator("img")
    fitted = box_of(zoomed)
    assert fitted["width"] <= viewport["width"] and fitted["height"] <= viewport["height"]
    page.screenshot(path=str(artifacts_dir / f"zoom-{viewport['width']}.png"))
    dialog.get_by_role("button", name="Actual size").click()
    expect(dialog.get_by_role("button", name="Fit to screen")).to_be_visible()
    assert round(box_of(zoomed)["width"]) == 1024
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(zoom_button).to_be_focused()

    # A reference zooms the same way, under its name.
    refs.nth(1).get_by_role("button").click()
    expect(dialog).to_contain_text("Reference 2 · field.jpg")
    dialog.get_by_role("button", name="Close").click()
    expect(dialog).to_be_hidden()


def test_a_failure_is_told_in_words_for_people_on_the_run_and_its_history_card(
    open_page, playground_server, picture_server, artifacts_dir
):
    page = open_page(playground_server).page
    open_with_key(page, playground_server)
    wait_for_models(page)
    fill_edit(page, picture_server, steps=2, urls=("field.jpg", "missing.png"))
    page.get_by_role("button", name="Edit image").click()
    run = page.locator("#runs li.job").first
    expect(run.locator(".job-state")).to_have_text("Failed", timeout=WAIT_MS)

    # References are counted from 1 everywhere people read; image_urls[1] is only in the API's answer.
    expect(page.locator("#refs-error")).to_have_text(re.compile(r"^Reference 2 \(missing\.png\): could not be fetched"))
    expect(run.locator(".job-detail")).to_have_text(
        re.compile(r"^Reference 2 \(\S+missing\.png\) could not be fetched")
    )
    card = page.locator("#history-list .history-item").first
    expect(card).to_contain_text("Failed")
    expect(card.locator(".history-reason")).to_have_text(re.compile(r"^Reference 2 \(\S+missing\.png\) could not"))
    expect(card.locator(".history-ref")).to_have_count(2)  # the references' thumbnails
    assert "image_urls" not in page.locator("body").inner_text()
    card.screenshot(path=str(artifacts_dir / "history-failed-card-1280.png"))
    page.evaluate("window.scrollTo(0, 0)")  # the side column sticks to where the window was scrolled
    page.screenshot(path=str(artifacts_dir / "history-failed-1280.png"), full_page=True)

    page.set_viewport_size(PHONE)
    card.scroll_into_view_if_needed()
    expect(card.locator(".history-reason")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    page.screenshot(path=str(artifacts_dir / "history-failed-390.png"))


def test_example_prompts_fill_the_prompt(open_page, playground_server):
    page = open_page(playground_server).page
    open_with_key(page, playground_server)
    wait_for_models(page)
    examples = page.get_by_role("group", name="Example prompts")
    examples.get_by_role("button", name="Night").click()
    prompt = page.get_by_label("Prompt", exact=True)
    expect(prompt).to_have_value(re.compile(r"^Make it night"))
    expect(prompt).to_be_focused()
    page.get_by_text("Show code").click()
    expect(page.locator("#code-curl")).to_contain_text('"prompt": "Make it night')


@VIEWPORTS
def test_show_code_is_wide_enough_for_its_lines(open_page, playground_server, picture_server, viewport, artifacts_dir):
    page = open_page(playground_server, viewport).page
    open_with_key(page, playground_server)
    wait_for_models(page)
    page.get_by_label("Prompt", exact=True).fill("Put the tower in the field")
    add_url(page, picture_server.url("tower.png"))
    page.get_by_text("Show code").click()
    blocks = page.locator("#code-blocks pre")
    expect(blocks).to_have_count(2)
    # Nothing is hidden sideways: a line wider than the panel (on a phone, most) wraps.
    for i in range(2):
        assert blocks.nth(i).evaluate("el => el.scrollWidth <= el.clientWidth")
    assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
    if viewport is DESKTOP:
        # On a desktop the panel spans the page, and each line of both snippets fits unwrapped.
        assert box_of(page.locator("#code-panel"))["width"] > 1100
        for i in range(2):
            fits = blocks.nth(i).evaluate(
                """el => {
                  el.style.whiteSpace = "pre";
                  const fits = el.scrollWidth <= el.clientWidth;
                  el.style.whiteSpace = "";
                  return fits;
                }"""
            )
            assert fits, blocks.nth(i).inner_text()
    page.locator("#code-panel").scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts_dir / f"show-code-{viewport['width']}.png"))


@VIEWPORTS
def test_ids_stay_whole_and_phones_get_no_keyboard_hints(
    open_page, playground_server, picture_server, viewport, artifacts_dir
):
    page = open_page(playground_server, viewport).page
    finished_edit(page, playground_server, picture_server)
    request_ids = page.locator("#runs .request-id, #result code.id")
    expect(request_ids).to_have_count(2)
    model_parts = page.locator("#result .model-id .id-part")
    expect(model_parts).to_have_count(4)  # blackforestlabs/ flux-2/ <model>/ edit
    for ids in (request_ids, model_parts):
        for i in range(ids.count()):
            # One line box each (no break inside), and not cut short.
            lines, cut = ids.nth(i).evaluate("el => [el.getClientRects().length, el.scrollWidth > el.clientWidth]")
            assert (lines, cut) == (1, False), ids.nth(i).inner_text()
    text = page.locator("body").inner_text()
    if viewport is PHONE:
        assert "Ctrl+Enter" not in text
    else:
        assert "Ctrl+Enter submits." in text
    page.locator("#result").scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts_dir / f"ids-{viewport['width']}.png"))
