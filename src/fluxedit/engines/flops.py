"""Matmul FLOPs of one FLUX.2 transformer forward, from the model's config.

The count is every matrix product the diffusers `Flux2Transformer2DModel`
runs (2*m*n*k each): the timestep (and guidance) embedders, the three shared
modulation layers, the image and text input projections, every double-stream
and single-stream block (projections, feed-forward, attention's QK^T and AV),
the output norm's modulation and the output projection. Elementwise work
(norms, RoPE, SwiGLU, softmax, gating) is left out: it is memory-bound and not
what MFU measures. `tests/test_flops.py` checks the count against
`torch.utils.flop_counter.FlopCounterMode` on tiny models.

Token counts follow the pipelines: one token per 16x16 pixels (VAE 8x, 2x2
patches), references cost their own tokens, the text is padded to
`text_tokens` (512 in all FLUX.2 pipelines).

Three kinds of forward exist:

- ``kv_mode=None``: the plain [dev]/[klein] step; reference tokens go through
  every block (and the output projection, whose reference rows the pipeline
  then drops).
- ``"extract"``: the [klein] 9B-KV first step; reference tokens are modulated
  with a fixed timestep (a second timestep embedding and modulation) and attend
  only to themselves; their keys/values are stored.
- ``"cached"``: the later 9B-KV steps; only text and image tokens run, and they
  attend to the stored reference keys/values as well.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

PIXELS_PER_TOKEN = 16  # VAE 8x down, then 2x2 patches

KvMode = Literal["extract", "cached"] | None


def image_tokens(width: int, height: int) -> int:
    return (width // PIXELS_PER_TOKEN) * (height // PIXELS_PER_TOKEN)


def _config_dict(config: Any) -> Mapping[str, Any]:
    if isinstance(config, Mapping):
        return config
    # a diffusers FrozenDict / ConfigMixin config, or a model that has one
    return dict(getattr(config, "config", config))


def transformer_flops(
    config: Mapping[str, Any] | Any,
    *,
    width: int,
    height: int,
    references: int | Sequence[tuple[int, int]] = 0,
    text_tokens: int = 512,
    batch: int = 1,
    guidance: bool | None = None,
    kv_mode: KvMode = None,
) -> int:
    """Matmul FLOPs of one transformer forward at this output size.

    `references` is a number of references the size of the output, or their
    (width, height) list. `guidance` says whether the guidance embedder runs;
    default: whenever the config has one ([dev]). `batch` is the transformer's
    batch (2 for a CFG pair only if the pipeline batches it; the FLUX.2
    pipelines run CFG as two forwards of batch 1).
    """
    cfg = _config_dict(config)
    heads = int(cfg.get("num_attention_heads", 48))
    head_dim = int(cfg.get("attention_head_dim", 128))
    dim = heads * head_dim
    mlp_hidden = int(dim * float(cfg.get("mlp_ratio", 3.0)))
    in_channels = int(cfg.get("in_channels", 128))
    out_channels = int(cfg.get("out_channels") or in_channels)
    patch = int(cfg.get("patch_size", 1))
    joint_dim = int(cfg.get("joint_attention_dim", 15360))
    time_channels = int(cfg.get("timestep_guidance_channels", 256))
    double_layers = int(cfg.get("num_layers", 8))
    single_layers = int(cfg.get("num_single_layers", 48))
    has_guidance = bool(cfg.get("guidance_embeds", True)) if guidance is None else guidance

    if isinstance(references, int):
        refs = [(width, height)] * references
    else:
        refs = list(references)
    txt = text_tokens
    img = image_tokens(width, height)
    ref = sum(image_tokens(w, h) for w, h in refs)
    if kv_mode == "extract" and ref == 0:
        kv_mode = None  # the model runs a plain forward when there is nothing to cache
    if kv_mode not in (None, "extract", "cached"):
        raise ValueError(f"kv_mode must be None, 'extract' or 'cached', not {kv_mode!r}")

    def mm(m: int, k: int, n: int) -> int:
        return 2 * batch * m * k * n

    # timestep (+ guidance) embedding: Linear(time_channels, dim), Linear(dim, dim)
    embed = mm(1, time_channels, dim) + mm(1, dim, dim)
    temb = embed * (2 if has_guidance else 1)
    # shared modulation: double img (6 dim), double txt (6 dim), single (3 dim)
    flops = temb + mm(1, dim, 15 * dim)
    if kv_mode == "extract":
        # reference tokens' fixed-timestep embedding and their img/single modulations
        flops += temb + mm(1, dim, 9 * dim)

    # tokens in the image stream: the reference tokens run only when not cached
    stream = img + (ref if kv_mode != "cached" else 0)
    flops += mm(stream, in_channels, dim)  # x_embedder
    flops += mm(txt, joint_dim, dim)  # context_embedder

    # Per token, both block kinds do 4*dim^2 (q, k, v, out) + 3*dim*mlp_hidden
    # (SwiGLU in: 2*mlp_hidden wide, out: mlp_hidden wide) multiply-adds:
    # a double block splits them over its two streams, a single block fuses
    # them into to_qkv_mlp_proj and to_out.
    per_layer = mm(txt + stream, 1, 4 * dim * dim + 3 * dim * mlp_hidden)
    # attention: QK^T and AV, each 2 * queries * keys * dim over all heads
    if kv_mode is None:
        pairs = (txt + stream) ** 2
    elif kv_mode == "extract":
        pairs = (txt + img) * (txt + ref + img) + ref * ref
    else:  # cached: text and image queries, stored reference keys included
        pairs = (txt + img) * (txt + ref + img)
    per_layer += 2 * mm(pairs, 1, dim)
    flops += (double_layers + single_layers) * per_layer

    flops += mm(1, dim, 2 * dim)  # norm_out's modulation
    # proj_out runs on every image-stream token the forward returns: the plain
    # forward returns reference rows too (the pipeline drops them afterwards)
    out_tokens = img + (ref if kv_mode is None else 0)
    flops += mm(out_tokens, dim, patch * patch * out_channels)
    return flops


# The full-size configs (diffusers' transformer/config.json of each model).
DEV_CONFIG: dict[str, Any] = dict(
    num_layers=8, num_single_layers=48, num_attention_heads=48, attention_head_dim=128,
    joint_attention_dim=15360, in_channels=128, mlp_ratio=3.0, guidance_embeds=True,
    timestep_guidance_channels=256, axes_dims_rope=(32, 32, 32, 32), patch_size=1,
)  # fmt: skip
KLEIN_4B_CONFIG: dict[str, Any] = dict(
    DEV_CONFIG, num_layers=5, num_single_layers=20, num_attention_heads=24,
    joint_attention_dim=7680, guidance_embeds=False,  # Qwen3-4B: 3 x 2560
)  # fmt: skip
KLEIN_9B_CONFIG: dict[str, Any] = dict(
    DEV_CONFIG, num_layers=8, num_single_layers=24, num_attention_heads=32,
    joint_attention_dim=12288, guidance_embeds=False,  # Qwen3-8B: 3 x 4096
)  # fmt: skip
