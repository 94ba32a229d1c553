"""The playground in a real browser: Debian's Chromium, driven by Playwright, against a live
`fluxedit serve --model tiny`. Each test does what a person would do and checks the screen."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from urllib.parse import urlsplit

import httpx
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
from _fixtures_server import SRC

pytestmark = pytest.mark.browser


def drop_file(page: Page, selector: str, path) -> None:
    """Drop a file on an element, as the browser does when one is dragged in from the desktop."""
    page.locator(selector).evaluate(
        """(el, [name, b64, type]) => {
          const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
          const data = new DataTransfer();
          data.items.add(new File([bytes], name, {type}));
          for (const kind of ["dragenter", "dragover", "drop"]) {
            el.dispatchEvent(new DragEvent(kind, {dataTransfer: data, bubbles: true, cancelable: true}));
          }
        }""",
        [
            path.name,
            base64.b64encode(path.read_bytes()).decode(),
            "image/jpeg" if path.suffix == ".jpg" else "image/png",
        ],
    )


def record_progress(page: Page) -> None:
    """Keep every progress text the runs show, in order, as the page changes it."""
    page.evaluate(
        """() => {
          window.__steps = [];
          new MutationObserver(() => {
            for (const el of document.querySelectorAll('#runs .job-step')) {
              const text = el.textContent;
              if (text && window.__steps[window.__steps.length - 1] !== text) window.__steps.push(text);
            }
          }).observe(document.querySelector('#runs'), {subtree: true, childList: true, characterData: true});
        }"""
    )


def test_edit_with_uploads_and_a_url_shows_progress_result_and_download(
    browser_page: Page, playground_server, picture_server, picture_files, artifacts_dir, tmp_path
):
    page = browser_page
    open_with_key(page, playground_server)
    wait_for_models(page)
    page.get_by_label("Model", exact=True).select_option("blackforestlabs/flux-2/klein-4b/edit")
    page.get_by_label("Prompt", exact=True).fill("Put the red square on the yellow one, in the blue tower's light")

    # Two uploads through the file picker, one URL from the loopback picture server.
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Choose files…").click()
    chooser.value.set_files([str(path) for path in picture_files])
    expect(references(page)).to_have_count(2)
    expect(page.locator("#ref-list li.uploading")).to_have_count(0)
    add_url(page, picture_server.url("tower.png"))
    expect(references(page)).to_have_count(3)
    expect(page.locator("#ref-count")).to_have_text("3 of 10")
    expect(references(page).nth(0)).to_contain_text("red.png")
    expect(references(page).nth(0)).to_contain_text('sets "auto" size')
    expect(references(page).nth(2)).to_contain_text("tower.png")
    expect(references(page).nth(2)).to_contain_text("320 × 480")  # its thumbnail loaded
    # "auto" shows what the first reference (400 x 300) would give.
    expect(page.locator("label.size-option", has_text="Auto")).to_contain_text("≈ 1184 × 880")

    # Reorder: the URL one place earlier, then back.
    page.get_by_role("button", name="Move reference 3 earlier").click()
    expect(references(page).nth(1)).to_contain_text("tower.png")
    page.get_by_role("button", name="Move reference 2 later").click()
    expect(references(page).nth(2)).to_contain_text("tower.png")

    pick_size(page, "landscape_4_3")
    expect(page.locator("input[name=image_size][value=landscape_4_3]")).to_be_checked()
    expect(page.locator("label.size-option", has_text="Landscape 4:3")).to_contain_text("1024 × 768")
    page.get_by_label("Seed", exact=True).fill("7")
    page.get_by_text("Advanced").click()
    page.get_by_label("Steps", exact=True).fill("12")

    record_progress(page)
    page.get_by_role("button", name="Edit image").click()
    run = page.locator("#runs li.job").first
    expect(run.locator(".request-id")).to_have_text(re.compile(r"\S{8,}"))  # the request id, at once
    expect(run.locator(".job-state")).to_have_text("Completed", timeout=WAIT_MS)

    # The progress bar reached the last step, never going back on the way.
    expect(run.locator(".job-step")).to_have_text("step 12 of 12")
    expect(run.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "12")
    steps = page.evaluate("window.__steps")
    done = [int(text.split()[1]) for text in steps]
    assert done == sorted(done) and steps[-1] == "step 12 of 12", steps
    expect(run.locator(".job-elapsed")).to_contain_text("Took")

    # The result, large, at the chosen size, with seed and timings.
    result = page.locator("#result")
    expect(result.locator(".result-size")).to_have_text("1024 × 768")
    expect(result.locator(".result-seed")).to_have_text("7")
    expect(result.locator(".result-timings")).to_contain_text("inference")
    image = result.locator("img.result-image")
    expect(image).to_be_visible()
    page.wait_for_function("document.querySelector('img.result-image').complete")
    natural = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert natural == [1024, 768]

    # Download: the browser saves the JPEG, and it decodes at 1024 x 768.
    with page.expect_download() as download:
        result.get_by_role("link", name="Download").click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.suffix == ".jpg"
    with Image.open(saved) as picture:
        assert (picture.format, picture.size) == ("JPEG", (1024, 768))

    # "Use as reference" puts the result at the end of the references.
    result.get_by_role("button", name="Use as reference").click()
    expect(references(page)).to_have_count(4)
    expect(references(page).nth(3)).to_contain_text("result ")
    expect(references(page).nth(3)).to_contain_text("1024 × 768")

    # History lists the request as completed, with its thumbnail.
    entry = page.locator("#history-list .history-item").first
    expect(entry).to_contain_text("Completed")
    expect(entry).to_contain_text("Put the red square")
    expect(entry.locator("img")).to_have_count(1)

    page.screenshot(path=str(artifacts_dir / "playground-1280.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    expect(page.locator(".layout")).to_have_css("grid-template-columns", re.compile(r"^\d+(\.\d+)?px$"))
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing sticks out sideways
    page.screenshot(path=str(artifacts_dir / "playground-390.png"), full_page=True)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(artifacts_dir / "playground-390-top.png"))
    page.locator("#result-title").scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts_dir / "playground-390-result.png"))


def test_cancel_a_queued_job_then_history_lists_and_restores_both(
    browser_page: Page, playground_server, picture_server
):
    page = browser_page
    server = playground_server
    open_with_key(page, server)
    wait_for_models(page)
    page.get_by_label("Prompt", exact=True).fill("A long edit that runs first")
    add_url(page, picture_server.url("field.jpg"))
    # A big custom size and many steps, so the first job is still running while the second waits.
    pick_size(page, "custom")
    page.get_by_label("Width", exact=True).fill("2048")
    page.get_by_label("Height", exact=True).fill("2048")
    expect(page.locator("#custom-size-check")).to_have_text("Will be 2048 × 2048.")
    page.get_by_text("Advanced").click()
    page.get_by_label("Steps", exact=True).fill("100")

    runs = page.locator("#runs li.job")
    page.get_by_role("button", name="Edit image").click()
    expect(runs).to_have_count(1)
    first_id = runs.first.locator(".request-id").inner_text()
    page.get_by_label("Prompt", exact=True).fill("A second edit, cancelled while it waits")
    page.get_by_role("button", name="Edit image").click()
    expect(runs).to_have_count(2)
    second_id = runs.first.locator(".request-id").inner_text()
    assert second_id != first_id
    first = page.locator(f"#runs li.job[data-request-id='{first_id}']")
    second = page.locator(f"#runs li.job[data-request-id='{second_id}']")

    expect(second.locator(".job-state")).to_have_text("In queue")
    expect(second.locator(".job-detail")).to_have_text(re.compile(r"^(next up|\d+ jobs? ahead)$"))
    second.get_by_role("button", name="Cancel").click()
    expect(second.locator(".job-state")).to_have_text("Cancelled")
    expect(second.locator(".job-detail")).to_have_text("cancelled on request")
    expect(second.get_by_role("button", name="Cancel")).to_be_hidden()
    with server.client() as http:
        body = http.get(f"/v1/requests/{second_id}/status").json()
    assert (body["status"], body["started_at"]) == ("cancelled", None)  # it never started

    # The first one, running, stops at its next step.
    expect(first.locator(".job-state")).to_have_text("Running", timeout=WAIT_MS)
    first.get_by_role("button", name="Cancel").click()
    expect(first.locator(".job-state")).to_have_text("Cancelled", timeout=WAIT_MS)

    # History lists both, newest first, as cancelled.
    history = page.locator("#history-list .history-item")
    expect(history.nth(0)).to_have_attribute("data-request-id", second_id)
    expect(history.nth(1)).to_have_attribute("data-request-id", first_id)
    expect(history.nth(0)).to_contain_text("Cancelled")
    expect(history.nth(1)).to_contain_text("Cancelled")

    # After a reload the key is still there, and a history entry brings its inputs back.
    page.reload()
    expect(page.get_by_label("API key", exact=True)).to_have_value(server.api_key)
    assert server.api_key not in page.url
    wait_for_models(page)
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("")
    page.locator(f"#history-list .history-item[data-request-id='{first_id}']").click()
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("A long edit that runs first")
    expect(page.locator("input[name=image_size][value=custom]")).to_be_checked()
    expect(page.get_by_label("Width", exact=True)).to_have_value("2048")
    expect(page.get_by_label("Steps", exact=True)).to_have_value("100")
    expect(references(page)).to_have_count(1)
    expect(references(page).first).to_contain_text("field.jpg")
    expect(page.locator("#result")).to_contain_text("This request is cancelled.")


def test_eleventh_reference_is_refused_and_the_list_works_by_keyboard(
    browser_page: Page, playground_server, picture_server, picture_files
):
    page = browser_page
    open_with_key(page, playground_server)
    wait_for_models(page)
    # A file dropped on the drop zone is uploaded like a chosen one.
    drop_file(page, "#dropzone", picture_files[1])
    expect(references(page)).to_have_count(1)
    expect(references(page).first).to_contain_text("yellow.jpg")
    expect(references(page).first).to_contain_text("300 × 400")
    expect(page.locator("#ref-list li.uploading")).to_have_count(0)
    for n in range(9):
        add_url(page, picture_server.url(f"tower.png?n={n}"))
    expect(page.locator("#ref-count")).to_have_text("10 of 10")

    add_url(page, picture_server.url("field.jpg"))
    message = page.locator("#refs-error")
    expect(message).to_have_text("At most 10 reference images: remove one to add another (the URL was not added).")
    expect(references(page)).to_have_count(10)
    expect(page.get_by_placeholder("…or paste an image URL (https://…)")).to_have_value(picture_server.url("field.jpg"))
    page.locator("#ref-files").set_input_files([str(picture_files[0])])
    expect(message).to_have_text('At most 10 reference images: remove one to add another ("red.png" was not added).')
    expect(references(page)).to_have_count(10)

    # Remove the first with the keyboard; focus stays in the list.
    page.get_by_role("button", name="Remove reference 1", exact=True).focus()
    page.keyboard.press("Enter")
    expect(page.locator("#ref-count")).to_have_text("9 of 10")
    expect(message).to_have_text("")
    expect(page.get_by_role("button", name="Remove reference 1", exact=True)).to_be_focused()

    # Now there is room; then move the new last one earlier with the keyboard.
    page.get_by_role("button", name="Add URL").click()
    expect(references(page)).to_have_count(10)
    expect(references(page).nth(9)).to_contain_text("field.jpg")
    page.get_by_role("button", name="Move reference 10 earlier").focus()
    page.keyboard.press("Enter")
    expect(references(page).nth(8)).to_contain_text("field.jpg")
    expect(page.get_by_role("button", name="Move reference 9 earlier")).to_be_focused()
    page.keyboard.press("Enter")
    expect(references(page).nth(7)).to_contain_text("field.jpg")

    # Dragging a thumbnail onto the first one moves it to the front: it now sets "auto".
    references(page).nth(7).drag_to(references(page).nth(0))
    expect(references(page).nth(0)).to_contain_text("field.jpg")
    expect(references(page).nth(0)).to_contain_text('sets "auto" size')
    expect(page.locator("label.size-option:has(input[value=auto])")).to_contain_text("≈ 1248 × 832")


def test_wrong_key_asks_for_a_key(browser_page: Page, playground_server):
    page = browser_page
    open_with_key(page, playground_server, key="fe_not_a_key_this_server_made")
    key_input = page.get_by_label("API key", exact=True)
    expect(page.locator("#key-message")).to_have_text(
        "The API key is not valid or has been revoked. Paste a valid API key."
    )
    expect(key_input).to_have_attribute("aria-invalid", "true")
    expect(key_input).to_be_focused()
    expect(page.get_by_label("Model", exact=True)).to_have_value("")

    # Submitting anyway says what is missing, next to the model picker.
    page.get_by_label("Prompt", exact=True).fill("anything")
    page.get_by_role("button", name="Edit image").click()
    expect(page.locator("#model-error")).to_have_text("Choose a model (paste an API key first to list them).")

    # The right key, pasted, is accepted and kept in this browser only.
    key_input.fill(playground_server.api_key)
    key_input.press("Enter")
    wait_for_models(page)
    expect(key_input).not_to_have_attribute("aria-invalid", "true")
    assert page.evaluate("localStorage.getItem('fluxedit.apiKey')") == playground_server.api_key


def test_errors_show_next_to_their_cause(browser_page: Page, playground_server, picture_server):
    page = browser_page
    open_with_key(page, playground_server)
    wait_for_models(page)

    # Custom sizes are checked as they are typed, with the rules in words.
    pick_size(page, "custom")
    width, height, check = (
        page.get_by_label("Width", exact=True),
        page.get_by_label("Height", exact=True),
        page.locator("#custom-size-check"),
    )
    width.fill("3000")
    height.fill("3000")
    expect(check).to_have_text(
        "2992 × 2992 is 9.0 megapixels; at most 4.2 megapixels (4,194,304 pixels, e.g. 2048 × 2048) are allowed."
    )
    width.fill("50")
    expect(check).to_have_text("The width is 50; each side must be at least 64 pixels.")
    expect(width).to_have_attribute("aria-invalid", "true")
    width.fill("1000")
    height.fill("700")
    expect(check).to_have_text("Will be 992 × 688 (rounded down to multiples of 16).")
    expect(width).not_to_have_attribute("aria-invalid", "true")
    pick_size(page, "square")

    # Nothing filled in: each missing input says so where it is.
    page.get_by_role("button", name="Edit image").click()
    expect(page.locator("#prompt-error")).to_have_text("Write a prompt: what should happen to the references?")
    expect(page.locator("#refs-error")).to_have_text("Add at least one reference image.")
    expect(page.get_by_label("Prompt", exact=True)).to_be_focused()

    # A value only the server refuses: its message goes under that input.
    page.get_by_label("Prompt", exact=True).fill("Swap the colours")
    add_url(page, picture_server.url("field.jpg"))
    add_url(page, picture_server.url("missing.png"))
    page.get_by_text("Advanced").click()
    page.get_by_label("Guidance", exact=True).fill("25")
    page.get_by_role("button", name="Edit image").click()
    expect(page.locator("#guidance-error")).to_contain_text("guidance_scale")
    expect(page.locator("#guidance-error")).to_contain_text("20")
    expect(page.get_by_label("Guidance", exact=True)).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#runs li.job")).to_have_count(0)

    # A reference the server cannot fetch: the failed job points at reference 2.
    page.get_by_label("Guidance", exact=True).fill("")
    page.get_by_role("button", name="Edit image").click()
    run = page.locator("#runs li.job").first
    expect(run.locator(".job-state")).to_have_text("Failed", timeout=WAIT_MS)
    expect(page.locator("#guidance-error")).to_have_text("")
    expect(page.locator("#refs-error")).to_have_text(re.compile(r"^Reference 2 \(missing\.png\): \S.+"))
    expect(references(page).nth(1)).to_have_class(re.compile(r"\bhas-error\b"))
    expect(references(page).nth(0)).not_to_have_class(re.compile(r"\bhas-error\b"))


def test_show_code_runs_as_shown(browser_page: Page, playground_server, picture_server, tmp_path):
    page = browser_page
    server = playground_server
    open_with_key(page, server)
    wait_for_models(page)
    page.get_by_label("Prompt", exact=True).fill("It's a 'quoted' prompt")
    add_url(page, picture_server.url("field.jpg"))
    pick_size(page, "square")
    page.get_by_label("Seed", exact=True).fill("3")
    page.locator(".segmented label", has_text="PNG").click()
    page.get_by_text("Advanced").click()
    page.get_by_label("Steps", exact=True).fill("2")
    page.get_by_text("Show code").click()
    env = {**os.environ, "FLUXEDIT_API_KEY": server.api_key, "PYTHONPATH": SRC}

    # curl: the copied command, run by a shell, queues exactly the form's edit.
    page.locator(".code-block", has_text="curl").get_by_role("button", name="Copy").click()
    curl = page.evaluate("navigator.clipboard.readText()")
    assert curl == page.locator("#code-curl").inner_text()
    answer = subprocess.run(["bash", "-c", curl], env=env, capture_output=True, text=True, timeout=60)
    assert answer.returncode == 0, answer.stderr
    request_id = httpx.Response(200, content=answer.stdout).json()["request_id"]
    server.wait_for(request_id, {"completed"}, timeout=WAIT_MS / 1000)
    with server.client() as http:
        result = http.get(f"/v1/requests/{request_id}/result").json()
    assert (result["width"], result["height"], result["seed"]) == (512, 512, 3)
    assert result["input"]["prompt"] == "It's a 'quoted' prompt"
    assert result["input"]["output_format"] == "png"
    assert result["input"]["num_inference_steps"] == 2

    # Python: the copied snippet, run as a script, saves the edited image.
    page.locator(".code-block", has_text="Python").get_by_role("button", name="Copy").click()
    expect(page.locator(".code-block", has_text="Python").get_by_role("button", name="Copied")).to_be_visible()
    snippet = page.evaluate("navigator.clipboard.readText()")
    ran = subprocess.run(
        [sys.executable, "-c", snippet], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert ran.returncode == 0, ran.stderr
    with Image.open(tmp_path / "edited.png") as picture:
        assert (picture.format, picture.size) == ("PNG", (512, 512))


# --- a newcomer's first view ---------------------------------------------------------------


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["1280", "390"])
def test_first_view_greets_and_says_where_a_key_comes_from(open_page, playground_server, viewport, artifacts_dir):
    watched = open_page(playground_server, viewport)
    page = watched.page
    page.goto(playground_server.base_url + "/")
    message = page.locator("#key-message")
    expect(message).to_have_text(
        "Paste your API key to start: fluxedit serve prints one the first time it starts, "
        "and fluxedit keys create makes more."
    )
    expect(message).not_to_have_class(re.compile(r"\bbad\b"))
    expect(page.get_by_label("API key", exact=True)).not_to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("API key", exact=True)).not_to_be_focused()
    expect(page.locator("#history-message")).to_have_text("Your requests appear here once a key is in.")
    page.wait_for_load_state("networkidle")
    assert watched.console_errors == []
    assert [(status, url) for status, url in watched.answers if status >= 400] == []
    page.screenshot(path=str(artifacts_dir / f"first-view-{viewport['width']}.png"))

    # The key, pasted, is all it takes.
    page.get_by_label("API key", exact=True).fill(playground_server.api_key)
    page.get_by_role("button", name="Use key").click()
    wait_for_models(page)


def test_a_no_auth_server_needs_no_key(open_page, no_auth_server, picture_server, artifacts_dir):
    watched = open_page(no_auth_server)
    page = watched.page
    page.goto(no_auth_server.base_url + "/")
    expect(page.locator("#auth-note")).to_have_text(
        "No API key needed: this server was started with --no-auth on a loopback address."
    )
    expect(page.get_by_label("API key", exact=True)).to_be_hidden()
    expect(page.locator("#model option[value='blackforestlabs/flux-2/klein-4b/edit']")).to_have_count(1)

    page.get_by_label("Prompt", exact=True).fill("Make it night")
    add_url(page, picture_server.url("field.jpg"))
    pick_size(page, "square")
    page.get_by_text("Advanced").click()
    page.get_by_label("Steps", exact=True).fill("2")
    page.get_by_role("button", name="Edit image").click()
    expect(page.locator("#runs li.job .job-state").first).to_have_text("Completed", timeout=WAIT_MS)
    expect(page.locator("#result .result-size")).to_have_text("512 × 512")
    expect(page.locator("#history-list .history-item").first).to_contain_text("Make it night")
    page.screenshot(path=str(artifacts_dir / "no-auth-1280.png"))
    assert watched.console_errors == []
    assert [url for status, url in watched.answers if status == 401] == []
    # The run followed its event stream; it did not poll the status URL.
    assert [url for url in watched.requests if url.endswith("/stream")], watched.requests
    assert [url for url in watched.requests if url.endswith("/status")] == []


def test_api_docs_render_offline(open_page, playground_server, artifacts_dir):
    watched = open_page(playground_server)
    page = watched.page
    base = playground_server.base_url
    page.goto(base + "/")
    page.get_by_role("link", name="API docs").click()
    expect(page).to_have_url(base + "/docs")
    for path in ("/v1/models/{model_id}", "/v1/requests/{request_id}/status", "/v1/files"):
        expect(page.get_by_text(path, exact=True)).to_be_visible()
    page.get_by_text("/v1/models/{model_id}", exact=True).click()  # an operation opens, with its schema
    expect(page.get_by_text("EditInput").first).to_be_visible()
    page.screenshot(path=str(artifacts_dir / "docs-1280.png"))

    page.wait_for_load_state("networkidle")

    elsewhere = [
        url
        for url in watched.requests
        if urlsplit(url).scheme in ("http", "https") and urlsplit(url).hostname != "127.0.0.1"
    ]
    assert elsewhere == [], f"the docs page asked other hosts: {elsewhere}"
    assert watched.console_errors == []
    assert httpx.get(base + "/redoc").status_code == 404  # ReDoc, which would, is not offered
