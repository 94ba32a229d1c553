"""The FLOP model counts exactly the matmuls torch runs in a FLUX.2 transformer forward."""

from __future__ import annotations

import pytest
import torch
from diffusers import Flux2Transformer2DModel
from diffusers.models.transformers.transformer_flux2 import Flux2KVAttnProcessor, Flux2KVParallelSelfAttnProcessor
from torch.utils.flop_counter import FlopCounterMode

from fluxedit.engines.flops import (
    DEV_CONFIG,
    KLEIN_4B_CONFIG,
    KLEIN_9B_CONFIG,
    image_tokens,
    transformer_flops,
)

TINY = dict(
    in_channels=16, num_layers=2, num_single_layers=3, attention_head_dim=16, num_attention_heads=2,
    joint_attention_dim=24, axes_dims_rope=(4, 4, 4, 4), timestep_guidance_channels=32,
)  # fmt: skip


def _ids(t: int, h: int, w: int) -> torch.Tensor:
    return torch.cartesian_prod(torch.tensor([t]), torch.arange(h), torch.arange(w), torch.arange(1))


def _counted(model, *, width, height, refs, text_tokens, guidance, kv_mode=None) -> int:
    """FLOPs FlopCounterMode sees in one forward, laid out as the pipelines lay out their inputs."""
    torch.manual_seed(0)
    cfg = model.config
    img_ids = _ids(0, height // 16, width // 16)
    ref_ids = [_ids(10 + 10 * i, h // 16, w // 16) for i, (w, h) in enumerate(refs)]
    img = torch.randn(1, len(img_ids), cfg.in_channels)
    ref = torch.randn(1, sum(len(r) for r in ref_ids), cfg.in_channels)
    txt = torch.randn(1, text_tokens, cfg.joint_attention_dim)
    txt_ids = torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(text_tokens))
    common = dict(
        encoder_hidden_states=txt,
        timestep=torch.tensor([0.7]),
        txt_ids=txt_ids[None],
        guidance=torch.tensor([3.5]) if guidance else None,
        return_dict=False,
    )
    all_ref_ids = torch.cat(ref_ids) if ref_ids else torch.zeros(0, 4, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with torch.no_grad():
        if kv_mode is None:  # plain pipelines: [img, ref]
            hidden, ids = torch.cat([img, ref], 1), torch.cat([img_ids, all_ref_ids])
            with counter:
                model(hidden_states=hidden, img_ids=ids[None], **common)
        else:  # KV pipeline: [ref, img] with the reference count
            hidden, ids = torch.cat([ref, img], 1), torch.cat([all_ref_ids, img_ids])
            extract = dict(kv_cache_mode="extract", num_ref_tokens=ref.shape[1])
            if kv_mode == "extract":
                with counter:
                    model(hidden_states=hidden, img_ids=ids[None], **common, **extract)
            else:
                _, cache = model(hidden_states=hidden, img_ids=ids[None], **common, **extract)
                with counter:
                    model(hidden_states=img, img_ids=img_ids[None], kv_cache=cache, kv_cache_mode="cached", **common)
    return counter.get_total_flops()


def _model(*, kv: bool = False, **overrides) -> Flux2Transformer2DModel:
    torch.manual_seed(0)
    model = Flux2Transformer2DModel(**{**TINY, **overrides}).eval()
    if kv:  # what Flux2KleinKVPipeline does to its transformer
        for block in model.transformer_blocks:
            block.attn.set_processor(Flux2KVAttnProcessor())
        for block in model.single_transformer_blocks:
            block.attn.set_processor(Flux2KVParallelSelfAttnProcessor())
    # The math backend runs attention as plain matmuls, which FlopCounterMode
    # sees on CPU (it has no formula for the fused CPU SDPA kernel).
    model.set_attention_backend("_native_math")
    return model


@pytest.mark.parametrize(
    "overrides, refs, guidance",
    [
        (dict(guidance_embeds=False), [], False),  # [klein]-like, text to image
        (dict(guidance_embeds=False), [(64, 48)], False),  # one reference of another size
        (dict(guidance_embeds=True), [(48, 48), (32, 64)], True),  # [dev]-like, two references
        (dict(guidance_embeds=True, mlp_ratio=2.0, num_attention_heads=3), [(32, 32)], True),
    ],
)
def test_matches_flop_counter(overrides, refs, guidance):
    model = _model(**overrides)
    width, height, text = 64, 48, 7
    counted = _counted(model, width=width, height=height, refs=refs, text_tokens=text, guidance=guidance)
    modelled = transformer_flops(model.config, width=width, height=height, references=refs, text_tokens=text)
    assert modelled == counted


@pytest.mark.parametrize("kv_mode", ["extract", "cached"])
def test_matches_flop_counter_for_kv_steps(kv_mode):
    model = _model(kv=True, guidance_embeds=False)
    refs = [(48, 32), (32, 32)]
    counted = _counted(model, width=32, height=48, refs=refs, text_tokens=5, guidance=False, kv_mode=kv_mode)
    modelled = transformer_flops(model.config, width=32, height=48, references=refs, text_tokens=5, kv_mode=kv_mode)
    assert modelled == counted


def test_full_size_models_match_the_design_numbers():
    # DESIGN.md: 1024x1024 output, one 1024x1024 reference, 512 text tokens.
    tflop = {
        name: transformer_flops(cfg, width=1024, height=1024, references=1) / 1e12
        for name, cfg in [("dev", DEV_CONFIG), ("klein-4b", KLEIN_4B_CONFIG), ("klein-9b", KLEIN_9B_CONFIG)]
    }
    assert round(tflop["dev"]) == 583
    assert round(tflop["klein-4b"]) == 77
    assert round(tflop["klein-9b"]) == 161


def test_kv_cache_saves_what_the_reference_tokens_cost():
    # 4 references: the cached steps skip the reference tokens' projections and
    # their rows of attention, so 4 KV steps cost far less than 4 plain ones.
    plain = transformer_flops(KLEIN_9B_CONFIG, width=1024, height=1024, references=4)
    extract = transformer_flops(KLEIN_9B_CONFIG, width=1024, height=1024, references=4, kv_mode="extract")
    cached = transformer_flops(KLEIN_9B_CONFIG, width=1024, height=1024, references=4, kv_mode="cached")
    assert cached < extract < plain
    assert 2.4 < 4 * plain / (extract + 3 * cached) < 2.7


def test_token_count():
    assert image_tokens(1024, 1024) == 4096
    assert image_tokens(1024, 576) == 64 * 36
