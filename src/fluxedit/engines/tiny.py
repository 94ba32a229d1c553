"""Tiny random FLUX.2 pipelines, built offline in well under a second.

They have the real architecture of [klein], [klein] 9B-KV and [dev] (same
pipeline classes, same components, same call path, one latent token per 16x16
pixels) but a few thousand random weights, so they produce **noise, not
edits**. They exist so that the whole service (API, workers, CLI, playground)
can run and be tested on machines that have no FLUX.2 weights and no GPU.

What keeps them working through the unmodified pipelines:

- the transformer has 1 double and 1 single block, 2 heads of 16, RoPE axes
  that sum to the head width, and ``joint_attention_dim`` = 3 x the text
  encoder's width (the pipelines stack 3 hidden states of the text encoder);
- the text encoders have enough (tiny) layers for the hidden states the
  pipelines read by default: 9, 18, 27 for Qwen3 ([klein]), 10, 20, 30 for
  Mistral-3 ([dev]);
- the VAE has 4 resolution levels (scale factor 8, so with the 2x2 patches one
  token still covers 16 pixels);
- the tokenizer is a byte-level BPE with no merges and a chat template that
  takes ``enable_thinking``. [dev] normally ships a Pixtral processor, which
  needs torchvision; the tiny [dev] gets the same plain tokenizer instead.

A saved tiny model is an ordinary diffusers folder: it loads through
``Flux2Engine`` exactly as downloaded weights do.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import torch
from diffusers import (
    AutoencoderKLFlux2,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinKVPipeline,
    Flux2KleinPipeline,
    Flux2Pipeline,
    Flux2Transformer2DModel,
)
from tokenizers import AddedToken, pre_tokenizers
from transformers import (
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    Qwen2TokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from fluxedit.config import Settings

TinyVariant = Literal["klein", "klein-kv", "dev"]
VARIANTS: tuple[str, ...] = ("klein", "klein-kv", "dev")

TEXT_WIDTH = 16  # text encoder hidden size
VOCAB_SIZE = 512  # >= 256 byte tokens + the special tokens below
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# Qwen-style chat markup. Content may be a string ([klein]) or a list of
# {"type": "text", "text": ...} parts ([dev]); `enable_thinking` is accepted
# as Qwen3's own template does.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message.role + '\\n' }}"
    "{% if message.content is string %}{{ message.content }}"
    "{% else %}{% for part in message.content %}"
    "{% if part.type == 'text' %}{{ part.text }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and not enable_thinking %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}"
    "{% endif %}"
)


def build_tiny_tokenizer() -> Qwen2TokenizerFast:
    """A byte-level tokenizer: one token per UTF-8 byte, no merges."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    tokenizer = Qwen2TokenizerFast(vocab=vocab, merges=[], model_max_length=512)
    tokenizer.add_tokens([AddedToken(token, special=True) for token in SPECIAL_TOKENS])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_qwen3() -> Qwen3ForCausalLM:
    config = Qwen3Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=TEXT_WIDTH,
        intermediate_size=32,
        num_hidden_layers=28,  # the pipeline reads hidden states 9, 18 and 27
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    return Qwen3ForCausalLM(config)


def build_tiny_mistral3() -> Mistral3ForConditionalGeneration:
    config = Mistral3Config(
        text_config={
            "model_type": "mistral",
            "vocab_size": VOCAB_SIZE,
            "hidden_size": TEXT_WIDTH,
            "intermediate_size": 32,
            "num_hidden_layers": 31,  # the pipeline reads hidden states 10, 20 and 30
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 8,
            "max_position_embeddings": 1024,
            "sliding_window": None,
        },
        vision_config={
            "model_type": "pixtral",
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        spatial_merge_size=1,
    )
    return Mistral3ForConditionalGeneration(config)


def build_tiny_transformer(*, guidance_embeds: bool, num_single_layers: int = 1) -> Flux2Transformer2DModel:
    return Flux2Transformer2DModel(
        in_channels=16,  # 4 latent channels x 2x2 patch
        num_layers=1,
        num_single_layers=num_single_layers,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=3 * TEXT_WIDTH,
        axes_dims_rope=(4, 4, 4, 4),  # sums to the head width
        guidance_embeds=guidance_embeds,
    )


def build_tiny_vae() -> AutoencoderKLFlux2:
    return AutoencoderKLFlux2(
        block_out_channels=(8, 8, 8, 8),  # 4 levels: 8x down, as the real VAE
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=128,
    )


def build_tiny_scheduler() -> FlowMatchEulerDiscreteScheduler:
    # The real FLUX.2 scheduler settings; the pipelines pass `mu` for dynamic shifting.
    return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)


def build_tiny_pipeline(variant: TinyVariant = "klein", seed: int = 0) -> DiffusionPipeline:
    """A tiny random FLUX.2 pipeline (noise out, not edits): "klein", "klein-kv" or "dev"."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny variant {variant!r}; use one of {', '.join(VARIANTS)}")
    with torch.random.fork_rng(devices=[]):  # seed the weights without touching the caller's RNG
        torch.manual_seed(seed)
        common = dict(
            vae=build_tiny_vae(),
            scheduler=build_tiny_scheduler(),
            tokenizer=build_tiny_tokenizer(),
            transformer=build_tiny_transformer(guidance_embeds=variant == "dev"),
        )
        if variant == "dev":
            return Flux2Pipeline(text_encoder=build_tiny_mistral3(), **common)
        pipeline_class = Flux2KleinKVPipeline if variant == "klein-kv" else Flux2KleinPipeline
        # Like [klein] 4B/9B (not the -base models): step-distilled, 4 steps, no CFG.
        return pipeline_class(text_encoder=build_tiny_qwen3(), is_distilled=True, **common)


def save_tiny_model(variant: TinyVariant, folder: str | os.PathLike) -> Path:
    """Build a tiny model (noise, not edits) and save it as a diffusers folder (model_index.json, ...)."""
    folder = Path(folder)
    build_tiny_pipeline(variant).save_pretrained(folder)
    return folder


def ensure_tiny_model(settings: Settings) -> Path:
    """The tiny [klein] (noise, not edits) in settings.tiny_model_dir, built there on first use.

    Built into a temporary folder next to it and renamed into place, so a
    crash or a concurrent builder never leaves a half-written model behind.
    """
    target = settings.tiny_model_dir
    if (target / "model_index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    try:
        save_tiny_model("klein", staging)
        try:
            staging.rename(target)
        except OSError:
            # Another process got there first (the target exists and is not empty).
            if not (target / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
