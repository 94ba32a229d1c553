"""BflEngine against a local server speaking BFL's documented protocol (see _fixtures_bfl)."""

from __future__ import annotations

import ipaddress
import logging
import socket

import pytest
from PIL import Image

from fluxedit.config import Settings
from fluxedit.engines.base import EditRequest, Engine
from fluxedit.engines.bfl import BflEngine, make_slots
from fluxedit.engines.bfl_results import check_result_address
from fluxedit.errors import EditCancelled, FluxeditError, InvalidInput, ModelUnavailable


def refs(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (64 + 16 * i, 80), (40 * i % 256, 90, 160)) for i in range(n)]


def edit_request(prompt: str = "put the cat on the sofa", n: int = 1, **kw) -> EditRequest:
    return EditRequest(prompt=prompt, images=refs(n), width=kw.pop("width", 128), height=kw.pop("height", 96), **kw)


def failure(engine: BflEngine, prompt: str) -> FluxeditError:
    with pytest.raises(FluxeditError) as info:
        engine.edit(edit_request(prompt))
    return info.value


def test_three_reference_edit_returns_image_of_asked_size(fake_bfl, bfl_settings):
    engine = BflEngine("flux-2-pro", bfl_settings)
    calls: list[tuple[int, int]] = []

    images = engine.edit(
        edit_request(n=3, width=256, height=192, seed=7, output_format="png"),
        lambda step, total: calls.append((step, total)) and False,
    )

    assert isinstance(engine, Engine) and engine.kind == "bfl" and engine.loaded
    assert [im.size for im in images] == [(256, 192)]
    assert images[0].mode == "RGB"
    sent = fake_bfl.accepted[-1]
    assert sent["model"] == "flux-2-pro"
    assert sent["images"] == ["input_image", "input_image_2", "input_image_3"]
    assert (sent["width"], sent["height"], sent["seed"], sent["output_format"]) == (256, 192, 7, "png")
    assert "steps" not in sent["fields"] and "guidance" not in sent["fields"]
    assert calls[0] == (0, 100) and calls[-1] == (100, 100)
    assert fake_bfl.downloads == [next(iter(fake_bfl.tasks))]


def test_num_images_is_one_task_each_with_its_own_seed(fake_bfl, bfl_settings):
    calls: list[tuple[int, int]] = []

    images = BflEngine("flux-2-pro", bfl_settings).edit(
        edit_request(seed=7, num_images=2), lambda step, total: calls.append((step, total)) and False
    )

    assert len(images) == 2 and all(image.size == (128, 96) for image in images)
    assert [sent["seed"] for sent in fake_bfl.accepted] == [7, 8]
    steps = [step for step, _ in calls]
    assert steps == sorted(steps) and steps[-1] == 100, "one rising progress over both tasks"


def test_flex_forwards_steps_guidance_and_safety_tolerance(fake_bfl, bfl_settings):
    engine = BflEngine("flux-2-flex", bfl_settings)

    engine.edit(edit_request(steps=20, guidance=4.5, extra={"safety_tolerance": 4}))

    sent = fake_bfl.accepted[-1]
    assert (sent["model"], sent["steps"], sent["guidance"], sent["safety_tolerance"]) == ("flux-2-flex", 20, 4.5, 4)


def test_slow_task_reports_rising_progress(fake_bfl, bfl_settings):
    calls: list[tuple[int, int]] = []

    BflEngine("flux-2-max", bfl_settings).edit(
        edit_request("[slow] a lighthouse"), lambda s, t: calls.append((s, t)) and False
    )

    steps = [s for s, _ in calls]
    assert steps == sorted(steps) and len(steps) >= 8
    assert 1 < steps[-2] < 100 and steps[-1] == 100


@pytest.mark.parametrize(
    ("prompt", "code", "words"),
    [
        ("[moderated-request] x", "content_moderated", "moderation refused the prompt or reference images"),
        ("[moderated-content] x", "content_moderated", "moderation refused the generated image"),
        ("[error] x", "upstream_failed", "Internal generation failure"),
        ("[failed] x", "upstream_failed", "could not finish"),
        ("[not-found] x", "upstream_failed", "no longer knows the task"),
    ],
)
def test_bfl_outcomes_map_to_codes(fake_bfl, bfl_settings, prompt, code, words):
    err = failure(BflEngine("flux-2-pro", bfl_settings), prompt)

    assert err.code == code
    assert words in err.message
    assert fake_bfl.downloads == []  # nothing fetched, so no image (black or otherwise) comes back


def test_busy_submit_is_retried_then_succeeds(fake_bfl, bfl_settings):
    images = BflEngine("flux-2-pro", bfl_settings).edit(edit_request("[429x2] a bridge"))

    assert [s["answer"] for s in fake_bfl.submits] == [429, 429, 200]
    assert images[0].size == (128, 96)


def test_busy_beyond_the_retry_budget_is_upstream_busy(fake_bfl, bfl_settings):
    settings = bfl_settings.model_copy(update={"bfl_busy_retry_s": 0.1})

    err = failure(BflEngine("flux-2-pro", settings), "[429] a bridge")

    assert err.code == "upstream_busy"
    assert len(fake_bfl.submits) >= 2 and fake_bfl.accepted == []


def test_unreachable_api_is_upstream_unreachable(bfl_settings):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = BflEngine("flux-2-pro", bfl_settings, base_url=f"http://127.0.0.1:{port}")

    err = failure(engine, "a tree")

    assert err.code == "upstream_unreachable"
    assert "3 tries" in err.message  # 1 try + bfl_network_retries=2


def test_missing_key_is_model_unavailable(tmp_path):
    engine = BflEngine("flux-2-pro", Settings(data_dir=tmp_path, bfl_api_key=None))

    assert not engine.loaded
    with pytest.raises(ModelUnavailable, match="FLUXEDIT_BFL_API_KEY"):
        engine.load()


def test_refused_key_is_upstream_auth_and_never_echoed(fake_bfl, bfl_settings):
    wrong = "wrong-key-0123456789abcdef"
    engine = BflEngine("flux-2-pro", bfl_settings.model_copy(update={"bfl_api_key": wrong}))

    err = failure(engine, "a tree")

    assert err.code == "upstream_auth"
    assert "operator's API key" in err.message and wrong not in err.message
    assert fake_bfl.submits[-1]["answer"] == 403


def test_key_never_in_errors_or_logs(fake_bfl, bfl_settings, caplog):
    caplog.set_level(logging.DEBUG)
    engine = BflEngine("flux-2-pro", bfl_settings)
    messages = []
    for prompt in ["[error-leak] x", "[moderated-request] x", "[not-found] x", "[foreign-poll] x"]:
        err = failure(engine, prompt)
        messages += [err.message, str(err), repr(err), str(err.to_dict())]
    engine.edit(edit_request("[429x2] fine"))

    leaked = [m for m in messages if fake_bfl.api_key in m]
    assert leaked == []
    assert "[redacted]" in messages[0]  # BFL's echoed key was scrubbed from its error details
    assert caplog.text and fake_bfl.api_key not in caplog.text
    assert fake_bfl.api_key not in repr(bfl_settings)


def test_ninth_reference_is_refused_before_forwarding(fake_bfl, bfl_settings):
    engine = BflEngine("flux-2-pro", bfl_settings)

    assert engine.max_references == 8
    with pytest.raises(InvalidInput, match="at most 8 reference images; 9 were given") as info:
        engine.edit(edit_request(n=9))
    assert info.value.field == "image_urls"
    assert fake_bfl.submits == []


def test_eight_references_are_all_sent(fake_bfl, bfl_settings):
    BflEngine("flux-2-pro", bfl_settings).edit(edit_request(n=8))

    assert fake_bfl.accepted[-1]["images"][-1] == "input_image_8"
    assert len(fake_bfl.accepted[-1]["images"]) == 8


def test_stop_before_submit_cancels_without_forwarding(fake_bfl, bfl_settings):
    with pytest.raises(EditCancelled):
        BflEngine("flux-2-pro", bfl_settings).edit(edit_request(), lambda step, total: True)

    assert fake_bfl.submits == []


def test_stop_after_submit_lets_the_forwarded_task_finish(fake_bfl, bfl_settings):
    # BFL has no cancel: once forwarded, the task runs (and is billed), so its result is kept.
    images = BflEngine("flux-2-pro", bfl_settings).edit(edit_request("[slow] x"), lambda step, total: step > 0)

    assert images[0].size == (128, 96)
    assert len(fake_bfl.accepted) == 1 and len(fake_bfl.downloads) == 1


def test_result_url_inside_the_network_is_refused_unless_allowed(fake_bfl, bfl_settings):
    engine = BflEngine("flux-2-pro", bfl_settings.model_copy(update={"fetch_allow": []}))

    err = failure(engine, "a tree")

    assert err.code == "upstream_failed" and "refused to fetch" in err.message
    assert fake_bfl.downloads == []


def test_result_larger_than_the_byte_cap_is_refused(fake_bfl, bfl_settings):
    engine = BflEngine("flux-2-pro", bfl_settings.model_copy(update={"max_image_bytes": 1024}))

    with pytest.raises(FluxeditError, match="larger than the 1024-byte limit"):
        engine.edit(edit_request(width=512, height=512, output_format="png", seed=3))


def test_polling_url_on_another_origin_gets_no_key(fake_bfl, bfl_settings):
    err = failure(BflEngine("flux-2-pro", bfl_settings), "[foreign-poll] x")

    assert err.code == "upstream_failed" and "did not send the key there" in err.message
    assert all(task.polls == 0 for task in fake_bfl.tasks.values())


def test_result_is_downloaded_from_the_address_checked_never_from_a_second_lookup(fake_bfl, bfl_settings, connections):
    calls: list[str] = []

    def rebinding_dns(host: str, port: int) -> list[str]:
        # The first answer passes the check (127.0.0.1 is allowed); any later one would not.
        calls.append(host)
        return ["127.0.0.1"] if len(calls) == 1 else ["127.0.0.2"]

    engine = BflEngine("flux-2-pro", bfl_settings, resolver=rebinding_dns)

    images = engine.edit(edit_request("[named-delivery] a tree"))

    assert images[0].size == (128, 96) and len(fake_bfl.downloads) == 1
    assert calls == ["delivery.test"] and "delivery.test" not in connections.lookups
    assert {host for host, _ in connections} == {"127.0.0.1"}


def test_result_host_resolving_inside_the_network_is_refused_without_connecting(fake_bfl, bfl_settings):
    calls: list[str] = []
    engine = BflEngine("flux-2-pro", bfl_settings, resolver=lambda host, port: calls.append(host) or ["10.0.0.5"])

    err = failure(engine, "[named-delivery] a tree")

    assert err.code == "upstream_failed" and "delivery.test (10.0.0.5), an address inside the network" in err.message
    assert calls == ["delivery.test"] and fake_bfl.downloads == []


def test_result_redirected_to_a_data_uri_is_refused_naming_the_scheme(fake_bfl, bfl_settings):
    err = failure(BflEngine("flux-2-pro", bfl_settings), "[delivery-to-data] a tree")

    assert err.code == "upstream_failed" and "redirected to a data: URL" in err.message


def test_capacity_key_is_shared_by_one_api_and_one_key_and_never_shows_the_key(tmp_path):
    settings = Settings(data_dir=tmp_path, bfl_api_key="secret-key-0123456789")
    pro, flex = BflEngine("flux-2-pro", settings), BflEngine("flux-2-flex", settings)
    other_key = BflEngine("flux-2-pro", settings.model_copy(update={"bfl_api_key": "secret-key-9876543210"}))
    other_api = BflEngine("flux-2-pro", settings.model_copy(update={"bfl_region": "eu"}))

    assert pro.capacity_key == flex.capacity_key
    assert len({pro.capacity_key, other_key.capacity_key, other_api.capacity_key}) == 3
    assert all("secret-key" not in e.capacity_key for e in (pro, other_key, other_api))
    with pytest.raises(AttributeError):
        pro.capacity_key = "mine"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("address", "allow", "refused"),
    [
        ("93.184.216.34", [], False),
        ("2606:4700::6810:84e5", [], False),
        ("127.0.0.1", [], True),
        ("10.1.2.3", [], True),
        ("192.168.0.10", [], True),
        ("169.254.169.254", [], True),
        ("::1", [], True),
        ("fd00::1", [], True),
        ("64:ff9b::7f00:1", [], True),  # 127.0.0.1 through NAT64, judged as the IPv4 it carries
        ("2002:7f00:1::1", [], True),  # 6to4 of 127.0.0.1
        ("10.1.2.3", ["10.0.0.0/8"], False),
        ("10.1.2.3", ["delivery.internal"], False),
        ("10.1.2.3", ["192.168.0.0/16", "other.host"], True),
    ],
)
def test_result_address_decision(address, allow, refused):
    ip = ipaddress.ip_address(address)
    if refused:
        with pytest.raises(FluxeditError, match="inside the network"):
            check_result_address("delivery.internal", ip, allow)
    else:
        check_result_address("delivery.internal", ip, allow)


def test_regions_and_models(tmp_path):
    settings = Settings(data_dir=tmp_path, bfl_api_key="k", bfl_region="eu")

    assert BflEngine("flux-2-pro", settings).base_url == "https://api.eu.bfl.ai"
    assert BflEngine("flux-2-pro", settings.model_copy(update={"bfl_region": "us"})).base_url == "https://api.us.bfl.ai"
    assert BflEngine("flux-2-pro", Settings(data_dir=tmp_path)).base_url == "https://api.bfl.ai"
    with pytest.raises(ModelUnavailable, match="flux-2-pro, flux-2-flex, flux-2-max"):
        BflEngine("flux-2-dev", settings)


def test_shared_slot_bound_holds_back_the_submit_and_still_honours_stop(fake_bfl, bfl_settings):
    settings = bfl_settings.model_copy(update={"bfl_max_concurrent": 1})
    slots = make_slots(settings)
    pro, flex = BflEngine("flux-2-pro", settings, slots=slots), BflEngine("flux-2-flex", settings, slots=slots)
    assert slots.acquire(blocking=False)  # the one slot is taken, as by a task in flight for the same key
    waits: list[tuple[int, int]] = []

    with pytest.raises(EditCancelled):
        pro.edit(edit_request(), lambda step, total: waits.append((step, total)) or True)
    assert waits == [(0, 100)] and fake_bfl.submits == []

    slots.release()
    flex.edit(edit_request())
    pro.edit(edit_request())
    assert [s["model"] for s in fake_bfl.accepted] == ["flux-2-flex", "flux-2-pro"]
