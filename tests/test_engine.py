"""The FLUX.2 engine on tiny random models (CPU), loaded through the real loading code."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import Flux2KleinKVPipeline, Flux2KleinPipeline, Flux2Pipeline

from _fixtures_engine import reference_image
from fluxedit.config import Settings
from fluxedit.engines.base import EditRequest, Engine
from fluxedit.engines.flux2 import Flux2Engine
from fluxedit.engines.registry import STANDARD_MODEL_IDS, make_engine, parse_model_spec
from fluxedit.engines.tiny import build_tiny_pipeline, ensure_tiny_model, save_tiny_model
from fluxedit.errors import EditCancelled, InvalidInput, ModelUnavailable

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def request(count: int = 2, width: int = 128, height: int = 128, **kwargs) -> EditRequest:
    images = [reference_image(i, (128, 96) if i % 2 else (96, 128)) for i in range(count)]
    return EditRequest(prompt="make the circle blue", images=images, width=width, height=height, **kwargs)


# --- edits -------------------------------------------------------------------


def test_engine_follows_the_protocol(tiny_engine: Flux2Engine) -> None:
    assert isinstance(tiny_engine, Engine)
    assert tiny_engine.kind == "diffusers"
    assert tiny_engine.max_references == 10
    assert tiny_engine.loaded


@pytest.mark.parametrize("count", [1, 4, 10])
def test_edit_takes_1_to_10_references(tiny_engine: Flux2Engine, count: int) -> None:
    images = tiny_engine.edit(request(count))
    assert len(images) == 1
    assert images[0].mode == "RGB" and images[0].size == (128, 128)


def test_references_change_the_output(tiny_engine: Flux2Engine) -> None:
    one = tiny_engine.edit(request(1))[0]
    four = tiny_engine.edit(request(4))[0]
    assert one.tobytes() != four.tobytes()


def test_more_than_10_references_is_refused(tiny_engine: Flux2Engine) -> None:
    with pytest.raises(InvalidInput, match="1 to 10"):
        tiny_engine.edit(request(11))


@pytest.mark.parametrize("width,height", [(64, 64), (128, 128), (192, 64), (80, 144)])
def test_output_has_exactly_the_asked_size(tiny_engine: Flux2Engine, width: int, height: int) -> None:
    assert tiny_engine.edit(request(2, width, height))[0].size == (width, height)


def test_size_not_multiple_of_16_is_refused(tiny_engine: Flux2Engine) -> None:
    with pytest.raises(InvalidInput, match="multiple of 16"):
        tiny_engine.edit(request(1, 100, 64))


def test_same_seed_same_bytes_other_seed_different(tiny_engine: Flux2Engine) -> None:
    first = tiny_engine.edit(request(2, seed=7))[0].tobytes()
    again = tiny_engine.edit(request(2, seed=7))[0].tobytes()
    other = tiny_engine.edit(request(2, seed=8))[0].tobytes()
    assert first == again
    assert first != other


def test_num_images_gives_that_many_distinct_images_in_one_call(tiny_engine: Flux2Engine) -> None:
    seen: list[tuple[int, int]] = []
    images = tiny_engine.edit(request(2, seed=7, num_images=2), lambda step, total: seen.append(step) or False)
    assert [image.size for image in images] == [(128, 128), (128, 128)]
    assert images[0].tobytes() != images[1].tobytes()
    assert seen == [1, 2, 3, 4], "one pipeline call: one pass over the steps"


def test_progress_counts_the_model_default_steps(tiny_engine: Flux2Engine) -> None:
    seen: list[tuple[int, int]] = []
    tiny_engine.edit(request(1), lambda step, total: seen.append((step, total)) or False)
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]  # distilled [klein]: 4 steps


def test_steps_from_the_request(tiny_engine: Flux2Engine) -> None:
    seen: list[tuple[int, int]] = []
    tiny_engine.edit(request(1, steps=3), lambda step, total: seen.append((step, total)) or False)
    assert seen == [(1, 3), (2, 3), (3, 3)]


# --- cancelling --------------------------------------------------------------


@pytest.mark.parametrize("variant", ["klein", "klein-kv", "dev"])
def test_stop_during_step_2_of_8_ends_after_step_2(tiny_model_dirs, variant: str) -> None:
    engine = Flux2Engine(str(tiny_model_dirs[variant]))
    engine.load()
    forwards: list[int] = []
    hook = engine.pipe.transformer.register_forward_hook(lambda *args: forwards.append(1))
    seen: list[tuple[int, int]] = []

    def progress(step: int, total: int) -> bool:
        seen.append((step, total))
        return step == 2

    try:
        with pytest.raises(EditCancelled) as cancelled:
            engine.edit(request(2, steps=8), progress)
    finally:
        hook.remove()
    assert seen == [(1, 8), (2, 8)]
    assert len(forwards) == 2  # no denoising work after the stop
    assert cancelled.value.code == "cancelled"
    # The engine stays usable.
    assert engine.edit(request(1, steps=2))[0].size == (128, 128)


# --- variants and loading ----------------------------------------------------


@pytest.mark.parametrize(
    "variant,pipeline_class,steps",
    [("klein", Flux2KleinPipeline, 4), ("klein-kv", Flux2KleinKVPipeline, 4), ("dev", Flux2Pipeline, 50)],
)
def test_each_variant_loads_its_pipeline_and_edits(tiny_model_dirs, variant, pipeline_class, steps) -> None:
    engine = Flux2Engine(str(tiny_model_dirs[variant]))
    assert not engine.loaded
    engine.load()
    assert type(engine.pipe) is pipeline_class
    assert engine.defaults.steps == steps
    images = engine.edit(request(3, 128, 64, steps=2))
    assert images[0].size == (128, 64)


@pytest.mark.parametrize("variant", ["klein", "klein-kv", "dev"])
def test_saved_tiny_model_loads_to_the_same_model(tmp_path, variant: str) -> None:
    built = build_tiny_pipeline(variant, seed=3)
    built.save_pretrained(tmp_path / variant)
    engine = Flux2Engine(str(tmp_path / variant))
    engine.load()
    built.set_progress_bar_config(disable=True)
    expected = built(
        image=request(2).images,
        prompt="make the circle blue",
        width=128,
        height=128,
        num_inference_steps=2,
        generator=torch.Generator("cpu").manual_seed(5),
        **({} if variant == "klein-kv" else {"guidance_scale": engine.defaults.guidance}),
    ).images[0]
    assert engine.edit(request(2, steps=2, seed=5))[0].tobytes() == expected.tobytes()


def test_repo_id_offline_without_weights_is_model_unavailable(offline_hub) -> None:
    engine = Flux2Engine("black-forest-labs/FLUX.2-klein-4B")
    with pytest.raises(ModelUnavailable) as unavailable:
        engine.load()
    message = unavailable.value.message
    assert unavailable.value.code == "model_unavailable"
    assert "black-forest-labs/FLUX.2-klein-4B" in message
    assert "offline" in message
    assert "--model tiny" in message and "local folder" in message
    assert "Traceback" not in message
    assert offline_hub == []  # no network attempted
    assert not engine.loaded


def test_folder_with_missing_weights_is_model_unavailable(tmp_path) -> None:
    folder = save_tiny_model("klein", tmp_path / "klein")
    (folder / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelUnavailable, match="could not be loaded") as unavailable:
        Flux2Engine(str(folder)).load()
    assert str(folder) in unavailable.value.message


@pytest.mark.parametrize(
    "make_source,reason",
    [
        (lambda tmp: str(tmp / "absent"), "no such folder"),
        (lambda tmp: str(tmp), "no model_index.json"),
        (lambda tmp: "not a repo id!", "nor a valid Hugging Face repo id"),
    ],
)
def test_unusable_sources_are_model_unavailable(tmp_path, offline_hub, make_source, reason) -> None:
    with pytest.raises(ModelUnavailable, match=reason):
        Flux2Engine(make_source(tmp_path)).load()


def test_non_flux2_model_is_model_unavailable(tmp_path) -> None:
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ModelUnavailable, match="StableDiffusionPipeline"):
        Flux2Engine(str(tmp_path)).load()


def test_engine_from_a_pipeline_built_in_memory_edits() -> None:
    engine = Flux2Engine.from_pipeline(build_tiny_pipeline("klein"))
    assert engine.loaded
    assert engine.pipe.transformer.transformer_blocks[0].attn.fused_projections  # default speed options applied
    assert engine.edit(request(1, 64, 64, steps=1))[0].size == (64, 64)


# --- the tiny model cache and the registry -------------------------------------


def test_ensure_tiny_model_builds_once(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path)
    folder = ensure_tiny_model(settings)
    assert folder == settings.tiny_model_dir
    index = folder / "model_index.json"
    assert json.loads(index.read_text())["_class_name"] == "Flux2KleinPipeline"
    built_at = index.stat().st_mtime_ns
    assert ensure_tiny_model(settings) == folder
    assert index.stat().st_mtime_ns == built_at
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]  # no staging left behind


def test_make_engine_tiny_edits(tmp_path) -> None:
    engine = make_engine("tiny", Settings(data_dir=tmp_path, default_steps=2))
    assert isinstance(engine, Flux2Engine) and not engine.loaded
    seen: list[tuple[int, int]] = []
    images = engine.edit(request(2), lambda step, total: seen.append((step, total)) or False)
    assert images[0].size == (128, 128)
    assert seen == [(1, 2), (2, 2)]  # Settings.default_steps applies


def test_make_engine_other_sources_are_flux2_engines_not_loaded(tmp_path) -> None:
    engine = make_engine("black-forest-labs/FLUX.2-klein-9B", Settings(data_dir=tmp_path))
    assert isinstance(engine, Flux2Engine)
    assert engine.source == "black-forest-labs/FLUX.2-klein-9B"
    assert not engine.loaded


def test_make_engine_bfl(tmp_path) -> None:
    pytest.importorskip("fluxedit.engines.bfl")
    engine = make_engine("bfl:flux-2-pro", Settings(data_dir=tmp_path, bfl_api_key="k"))
    assert engine.kind == "bfl"


def test_parse_model_spec() -> None:
    assert parse_model_spec("blackforestlabs/flux-2/klein-4b/edit=tiny") == (
        "blackforestlabs/flux-2/klein-4b/edit",
        "tiny",
    )
    assert parse_model_spec("pro/edit=bfl:flux-2-pro") == ("pro/edit", "bfl:flux-2-pro")
    assert parse_model_spec("x=/models/FLUX.2-klein-4B") == ("x", "/models/FLUX.2-klein-4B")
    assert "blackforestlabs/flux-2/klein-9b-kv/edit" in STANDARD_MODEL_IDS


@pytest.mark.parametrize("text", ["tiny", "=tiny", "id=", "/id=tiny", "my id=tiny"])
def test_parse_model_spec_refuses_bad_forms(text: str) -> None:
    with pytest.raises(InvalidInput, match="Model"):
        parse_model_spec(text)
