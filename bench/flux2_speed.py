"""FLUX.2 speed: full-size random-weight models through fluxedit's engine, one table.

    python bench/flux2_speed.py                       # GPU: [klein] 4B, [klein] 9B (+9B-KV), [dev]
    python bench/flux2_speed.py --models klein-4b     # a subset
    python bench/flux2_speed.py --tiny --quick        # CPU smoke run of the harness on tiny configs

Each model's transformer, VAE and text encoder are built at their real sizes
with random weights directly on the GPU in bf16 (nothing is downloaded) and
assembled into the diffusers pipeline that `Flux2Engine` runs; every timed edit
goes through `Flux2Engine.edit` (0-reference rows, which the engine refuses,
call its pipeline with the same arguments). Random weights give true timings:
nothing here skips work by looking at activations.

Per model, one instance walks a ladder of speed options (each stage keeps the
previous one's changes, because fusion, compilation and fp8 cannot be undone):

    eager         plain diffusers: PyTorch SDPA, unfused QKV, no compile
    +cudnn-attn   eager with the cuDNN SDPA backend          (then undone)
    +vae-cl       eager with the VAE in channels-last layout  (then undone)
    +fuse-qkv     eager with fused QKV projections
    lossless      all lossless options: fused QKV, regional compile, the faster
                  attention backend of the two, channels-last VAE
    +fp8          lossless plus torchao float8 dynamic quantization (lossy)

Each row: median of repeated edits after warm-up, timed with CUDA events: seconds
per denoising step, the denoising loop, the whole edit (text encoding, reference
encoding, denoising, decoding, conversion to PIL), peak GPU memory, and MFU =
the transformer's matmul FLOPs (fluxedit.engines.flops) over the denoising time,
against the bf16 matmul rate measured at the start. [dev] runs 4 timed steps
(its default is 50; the 50-step edit time is derived from the measured parts).
Its 24B text encoder does not fit beside its 32B transformer on one 80 GB GPU,
so it is timed alone first; the [dev] pipeline then carries a small stand-in
encoder with the same output width.

The script keeps to a time budget (--budget-s): the rows that matter most run
first and less important ones are skipped, and marked so, when time runs short.
Output: the table on stdout; JSON and markdown under --out (default $OUT).
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout

import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKLFlux2,
    Flux2KleinKVPipeline,
    Flux2KleinPipeline,
    Flux2Pipeline,
    Flux2Transformer2DModel,
)
from PIL import Image  # noqa: E402
from transformers import Mistral3Config, Mistral3ForConditionalGeneration, Qwen3Config, Qwen3ForCausalLM  # noqa: E402

from fluxedit.engines import tiny  # noqa: E402
from fluxedit.engines.base import EditRequest  # noqa: E402
from fluxedit.engines.flops import DEV_CONFIG, KLEIN_4B_CONFIG, KLEIN_9B_CONFIG, transformer_flops  # noqa: E402
from fluxedit.engines.flux2 import Flux2Engine, Flux2Options  # noqa: E402
from fluxedit.engines.speed import SpeedOptions, compile_blocks, fuse_qkv, quantize_fp8, warm_up  # noqa: E402

PROMPT = "Put the cat from the first image on the sofa of the second, keep the evening light, photographic"
GiB = 2**30

# --- model specs ---------------------------------------------------------------------

QWEN3_4B = dict(
    hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960,
    rope_theta=1_000_000, rms_norm_eps=1e-6, tie_word_embeddings=True,
)  # fmt: skip
QWEN3_8B = dict(QWEN3_4B, hidden_size=4096, intermediate_size=12288, tie_word_embeddings=False)
# Mistral3Config() defaults are Mistral Small 3.1 24B, the [dev] text encoder.
# The stand-in keeps the output width (3 x 5120 = 15360) and the 31 layers the
# pipeline reads, with tiny attention and MLP.
MISTRAL_STANDIN_TEXT = dict(
    model_type="mistral", hidden_size=5120, intermediate_size=256, num_hidden_layers=31,
    num_attention_heads=4, num_key_value_heads=1, head_dim=128, vocab_size=512,
    max_position_embeddings=4096, sliding_window=None,
)  # fmt: skip
TINY_VISION = dict(model_type="pixtral", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                   num_attention_heads=2, image_size=32, patch_size=8)  # fmt: skip


@dataclass
class ModelSpec:
    name: str
    transformer: dict
    family: str  # "klein" | "dev"
    text: dict | None  # Qwen3 config for [klein]; None: [dev] (Mistral, see above)
    steps: int  # denoising steps per timed edit
    warmups: int
    repeats: int
    kv: bool = False  # also run the 9B-KV pipeline on the same weights
    budget_share: float = 1.0


FULL_MODELS = {
    "klein-4b": ModelSpec("klein-4b", KLEIN_4B_CONFIG, "klein", QWEN3_4B, steps=4, warmups=1, repeats=5,
                          budget_share=0.25),
    "klein-9b": ModelSpec("klein-9b", KLEIN_9B_CONFIG, "klein", QWEN3_8B, steps=4, warmups=1, repeats=4, kv=True,
                          budget_share=0.33),
    "dev": ModelSpec("dev", DEV_CONFIG, "dev", None, steps=4, warmups=1, repeats=2, budget_share=0.42),
}  # fmt: skip

TINY_TRANSFORMER = dict(
    in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
    joint_attention_dim=3 * tiny.TEXT_WIDTH, axes_dims_rope=(4, 4, 4, 4), mlp_ratio=3.0,
)  # fmt: skip
TINY_MODELS = {
    "klein-4b": ModelSpec("klein-4b", dict(TINY_TRANSFORMER, guidance_embeds=False), "klein", {}, 4, 1, 2,
                          budget_share=0.3),
    "klein-9b": ModelSpec("klein-9b", dict(TINY_TRANSFORMER, guidance_embeds=False, num_layers=3), "klein", {}, 4,
                          1, 2, kv=True, budget_share=0.4),
    "dev": ModelSpec("dev", dict(TINY_TRANSFORMER, guidance_embeds=True), "dev", None, 4, 1, 1, budget_share=0.3),
}  # fmt: skip


# --- timing ----------------------------------------------------------------------------


class Clock:
    """CUDA events on a GPU (recorded in stream order, read after a sync), perf_counter elsewhere."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def seconds(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) / 1000 if self.cuda else end - start


@dataclass
class Budget:
    deadline: float
    model_deadline: float = math.inf
    skipped: list[str] = field(default_factory=list)

    def left(self) -> float:
        return min(self.deadline, self.model_deadline) - time.monotonic()

    def allows(self, what: str, cost_s: float, reserve_s: float = 0.0) -> bool:
        if self.left() >= cost_s + reserve_s:
            return True
        self.skipped.append(what)
        print(f"  skipped (time): {what} (needs ~{cost_s:.0f}s + {reserve_s:.0f}s reserved, {self.left():.0f}s left)")
        return False


@contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build(factory: Callable[[], torch.nn.Module], device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Create the module's weights where they will live, in their dtype, randomly initialised there."""
    with torch.device(device), default_dtype(dtype):
        module = factory()
    return module.eval().requires_grad_(False)


def free(*objects: Any) -> None:
    del objects
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def matmul_peak(device: torch.device, dtype: torch.dtype) -> dict:
    """The measured matmul rate (TFLOP/s): the median of timed products after warm-up, best shape."""
    clock = Clock(device)
    shapes = [(8192, 8192, 8192), (16384, 8192, 16384)] if clock.cuda else [(512, 512, 512)]
    rates = {}
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        for _ in range(3):
            a @ b
        times = []
        for _ in range(10):
            start = clock.mark()
            a @ b
            end = clock.mark()
            clock.sync()
            times.append(clock.seconds(start, end))
        rates[f"{m}x{k}x{n}"] = 2 * m * k * n / statistics.median(times) / 1e12
        del a, b
        free()
    return {"tflops": max(rates.values()), "shapes": rates}


# --- building the pipelines ----------------------------------------------------------------


def build_pipelines(spec: ModelSpec, device: torch.device, dtype: torch.dtype, tiny_run: bool) -> dict:
    torch.manual_seed(0)
    transformer = build(lambda: Flux2Transformer2DModel(**spec.transformer), device, dtype)
    vae = build(tiny.build_tiny_vae if tiny_run else AutoencoderKLFlux2, device, dtype)
    tokenizer = tiny.build_tiny_tokenizer()
    scheduler = tiny.build_tiny_scheduler()  # FLUX.2's scheduler settings
    if spec.family == "dev":
        if tiny_run:
            text_encoder = build(tiny.build_tiny_mistral3, device, dtype)
        else:
            config = Mistral3Config(text_config=MISTRAL_STANDIN_TEXT, vision_config=TINY_VISION, spatial_merge_size=1)
            text_encoder = build(lambda: Mistral3ForConditionalGeneration(config), device, dtype)
        parts = dict(transformer=transformer, vae=vae, tokenizer=tokenizer, scheduler=scheduler)
        return {"plain": Flux2Pipeline(text_encoder=text_encoder, **parts)}
    if tiny_run:
        text_encoder = build(tiny.build_tiny_qwen3, device, dtype)
    else:
        text_encoder = build(lambda: Qwen3ForCausalLM(Qwen3Config(**spec.text)), device, dtype)
    parts = dict(transformer=transformer, vae=vae, tokenizer=tokenizer, scheduler=scheduler, text_encoder=text_encoder)
    pipes = {"plain": Flux2KleinPipeline(**parts, is_distilled=True)}
    if spec.kv:
        # The KV pipeline installs KV-aware processors on the shared transformer;
        # without KV arguments they compute what the plain ones do.
        pipes["kv"] = Flux2KleinKVPipeline(**parts, is_distilled=True)
    return pipes


def time_text_encoder(encode: Callable[[], Any], clock: Clock, repeats: int = 5) -> float:
    for _ in range(2):
        encode()
    times = []
    for _ in range(repeats):
        start = clock.mark()
        encode()
        end = clock.mark()
        clock.sync()
        times.append(clock.seconds(start, end))
    return statistics.median(times)


def time_dev_text_encoder(device: torch.device, dtype: torch.dtype, clock: Clock, tiny_run: bool) -> dict:
    """Mistral Small 3.1 24B (Mistral3Config defaults) with random weights, alone on the GPU."""
    start = time.monotonic()
    factory = tiny.build_tiny_mistral3 if tiny_run else (lambda: Mistral3ForConditionalGeneration(Mistral3Config()))
    text_encoder = build(factory, device, dtype)
    params = sum(p.numel() for p in text_encoder.parameters())
    tokenizer = tiny.build_tiny_tokenizer()

    def encode():
        return Flux2Pipeline._get_mistral_3_small_prompt_embeds(
            text_encoder=text_encoder, tokenizer=tokenizer, prompt=PROMPT, device=device
        )

    with torch.no_grad():
        seconds = time_text_encoder(encode, clock)
    return {"params_b": params / 1e9, "seconds": seconds, "build_s": time.monotonic() - start}


# --- one edit, timed in parts ------------------------------------------------------------


def references(count: int, size: int) -> list[Image.Image]:
    rng = np.random.default_rng(count)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def timed_edit(engine: Flux2Engine, refs: list[Image.Image], size: int, steps: int, clock: Clock) -> dict:
    """One edit through the engine; marks at its start, the first transformer forward, each step's end, its end."""
    pipe = engine.pipe
    first: list[Any] = []
    step_ends: list[Any] = []

    def before_forward(module, args, kwargs):
        if not first:
            first.append(clock.mark())

    hook = pipe.transformer.register_forward_pre_hook(before_forward, with_kwargs=True)
    start = clock.mark()
    try:
        if refs:
            request = EditRequest(prompt=PROMPT, images=refs, width=size, height=size, seed=0, steps=steps)
            images = engine.edit(request, lambda step, total: step_ends.append(clock.mark()) and False)
        else:  # text to image: the engine takes 1..10 references, so call its pipeline the same way
            extra = {} if engine.defaults.guidance is None else {"guidance_scale": engine.defaults.guidance}
            images = pipe(
                prompt=PROMPT, width=size, height=size, num_inference_steps=steps,
                generator=torch.Generator("cpu").manual_seed(0),
                callback_on_step_end=lambda p, i, t, kw: step_ends.append(clock.mark()) or {}, **extra,
            ).images  # fmt: skip
    finally:
        hook.remove()
    end = clock.mark()
    clock.sync()
    marks = [first[0], *step_ends]
    step_seconds = [clock.seconds(a, b) for a, b in zip(marks, marks[1:])]
    return {
        "e2e": clock.seconds(start, end),
        "pre": clock.seconds(start, first[0]),
        "denoise": clock.seconds(first[0], step_ends[-1]),
        "post": clock.seconds(step_ends[-1], end),
        "steps": step_seconds,
        "image": images[0],
    }


def count_syncs(engine: Flux2Engine, refs: list[Image.Image], size: int, steps: int) -> dict:
    """Synchronising CUDA calls during one edit, by phase, with their most frequent Python sources."""
    phase_starts: dict[str, int] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        def before_forward(module, args, kwargs):
            phase_starts.setdefault("loop", len(caught))

        def progress(step: int, total: int) -> bool:
            if step == total:
                phase_starts["after"] = len(caught)
            return False

        hook = engine.pipe.transformer.register_forward_pre_hook(before_forward, with_kwargs=True)
        torch.cuda.set_sync_debug_mode("warn")
        try:
            request = EditRequest(prompt=PROMPT, images=refs, width=size, height=size, seed=0, steps=steps)
            engine.edit(request, progress)
        finally:
            torch.cuda.set_sync_debug_mode("default")
            hook.remove()
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    bounds = {"before": 0, "loop": phase_starts.get("loop", 0), "after": phase_starts.get("after", len(caught))}
    result = {}
    for name, (lo, hi) in {
        "before": (bounds["before"], bounds["loop"]),
        "loop": (bounds["loop"], bounds["after"]),
        "after": (bounds["after"], len(caught)),
    }.items():
        found = [w for w in caught[lo:hi] if w in syncs]
        sources = collections.Counter(f"{Path(w.filename).name}:{w.lineno}" for w in found)
        result[name] = {"count": len(found), "sources": dict(sources.most_common(4))}
    return result


# --- the ladder ---------------------------------------------------------------------------


@dataclass
class Row:
    model: str
    stage: str
    refs: int
    steps: int
    s_per_step: float
    denoise_s: float
    e2e_s: float
    pre_s: float
    post_s: float
    peak_gib: float
    tflops: float
    mfu: float
    speedup_denoise: float | None = None
    speedup_e2e: float | None = None
    note: str = ""


class ModelBench:
    def __init__(self, spec: ModelSpec, args: argparse.Namespace, peak: float, budget: Budget) -> None:
        self.spec, self.args, self.peak, self.budget = spec, args, peak, budget
        self.device = torch.device(args.device)
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.clock = Clock(self.device)
        self.size = args.size
        self.rows: list[Row] = []
        self.extra: dict[str, Any] = {"name": spec.name}
        self.eager: dict[tuple[str, int], Row] = {}
        self.unit_s = 10.0  # one 1-reference edit, until measured
        self.compile_s = 60.0 if self.device.type == "cuda" else 120.0  # until measured

    # -- helpers
    def cost(self, refs: int, runs: int) -> float:
        factor = {0: 0.6, 1: 1.0}.get(refs, 0.6 + 0.7 * refs)
        return runs * self.unit_s * factor

    def flops(self, refs: int, steps: int, kv: bool) -> int:
        common = dict(width=self.size, height=self.size, references=refs)
        if kv and refs:
            extract = transformer_flops(self.spec.transformer, **common, kv_mode="extract")
            cached = transformer_flops(self.spec.transformer, **common, kv_mode="cached")
            return extract + (steps - 1) * cached
        return steps * transformer_flops(self.spec.transformer, **common)

    def measure(self, engine: Flux2Engine, stage: str, refs: int, *, kv: bool = False, note: str = "") -> Row | None:
        spec = self.spec
        runs = spec.warmups + spec.repeats
        what = f"{spec.name} {stage} {refs}-ref{' KV' if kv else ''}"
        self.last_image = None
        if not self.budget.allows(what, self.cost(refs, runs)):
            return None
        images = references(refs, self.size)
        if self.clock.cuda:
            torch.cuda.reset_peak_memory_stats()
        for _ in range(spec.warmups):
            timed_edit(engine, images, self.size, spec.steps, self.clock)
        timings = [timed_edit(engine, images, self.size, spec.steps, self.clock) for _ in range(spec.repeats)]
        median = {k: statistics.median(t[k] for t in timings) for k in ("e2e", "pre", "denoise", "post")}
        peak_gib = torch.cuda.max_memory_allocated() / GiB if self.clock.cuda else 0.0
        flops = self.flops(refs, spec.steps, kv)
        achieved = flops / median["denoise"] / 1e12
        if kv and refs:
            firsts = [t["steps"][0] for t in timings]
            laters = [s for t in timings for s in t["steps"][1:]]
            note = (note + f" step 1 {statistics.median(firsts):.3f}s, later {statistics.median(laters):.3f}s").strip()
        row = Row(
            model=spec.name + ("-kv" if kv else ""), stage=stage, refs=refs, steps=spec.steps,
            s_per_step=median["denoise"] / spec.steps, denoise_s=median["denoise"], e2e_s=median["e2e"],
            pre_s=median["pre"], post_s=median["post"], peak_gib=peak_gib, tflops=achieved,
            mfu=achieved / self.peak, note=note,
        )  # fmt: skip
        base = self.eager.get(("plain", refs))
        if stage == "eager" and not kv:
            self.eager[("plain", refs)] = row
        elif base is not None:
            row.speedup_denoise = base.denoise_s / row.denoise_s
            row.speedup_e2e = base.e2e_s / row.e2e_s
        if refs == 1 and stage == "eager" and not kv:
            self.unit_s = row.e2e_s
        self.rows.append(row)
        self.last_image = timings[-1]["image"]
        print(
            f"  {row.model:<12} {stage:<12} {refs}-ref  {row.s_per_step:7.4f} s/step  e2e {row.e2e_s:7.3f} s  "
            f"peak {peak_gib:5.1f} GiB  MFU {100 * row.mfu:5.1f}%  {note}",
            flush=True,
        )
        return row

    def probe_output(self, pipe) -> torch.Tensor:
        """The transformer's output on one fixed input (1 reference): for the fp8 error."""
        cfg = self.spec.transformer
        gen = torch.Generator("cpu").manual_seed(11)
        tokens = (self.size // 16) ** 2
        side = self.size // 16
        img_ids = torch.cartesian_prod(torch.tensor([0]), torch.arange(side), torch.arange(side), torch.arange(1))
        ref_ids = torch.cartesian_prod(torch.tensor([10]), torch.arange(side), torch.arange(side), torch.arange(1))
        hidden = torch.randn(1, 2 * tokens, cfg["in_channels"], generator=gen)
        text = torch.randn(1, 512, cfg["joint_attention_dim"], generator=gen)
        txt_ids = torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(512))
        to = dict(device=self.device, dtype=self.dtype)
        with torch.no_grad():
            out = pipe.transformer(
                hidden_states=hidden.to(**to), encoder_hidden_states=text.to(**to),
                timestep=torch.tensor([0.6], **to),
                guidance=torch.tensor([4.0], **to) if cfg.get("guidance_embeds") else None,
                img_ids=torch.cat([img_ids, ref_ids])[None].to(self.device), txt_ids=txt_ids[None].to(self.device),
                return_dict=False,
            )[0]  # fmt: skip
        return out.float().cpu()

    @contextmanager
    def guard(self, label: str):
        """An optional stage that fails is reported, and the run goes on."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - reported in the output, not hidden
            self.extra[f"failed {label}"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            print(f"  FAILED {label}: {self.extra[f'failed {label}']}", flush=True)
            traceback.print_exc()

    def timed_warm_up(self, engine: Flux2Engine, label: str) -> float:
        seconds = warm_up(engine)
        self.extra[f"warm_up_s {label}"] = round(seconds, 1)
        print(f"  warm-up ({label}): {seconds:.1f}s", flush=True)
        return seconds

    # -- the run
    def run(self) -> None:
        spec, args = self.spec, self.args
        print(f"\n== {spec.name} ==", flush=True)
        start = time.monotonic()
        if spec.family == "dev":
            self.extra["text_encoder"] = te = time_dev_text_encoder(self.device, self.dtype, self.clock, args.tiny)
            free()  # the 24B encoder is gone once that function returned
            print(
                f"  [dev] text encoder, Mistral-3 config ({te['params_b']:.1f}B params, alone): {te['seconds']:.3f}s",
                flush=True,
            )
        pipes = build_pipelines(spec, self.device, self.dtype, args.tiny)
        plain = pipes["plain"]
        self.extra["params_b"] = sum(p.numel() for p in plain.transformer.parameters()) / 1e9
        self.extra["build_s"] = round(time.monotonic() - start, 1)
        print(f"  built: transformer {self.extra['params_b']:.2f}B params in {self.extra['build_s']}s", flush=True)
        eager = SpeedOptions.eager()
        engine = Flux2Engine.from_pipeline(plain, Flux2Options(device=args.device, speed=eager))
        kv_engine = (
            Flux2Engine.from_pipeline(pipes["kv"], Flux2Options(device=args.device, speed=eager)) if spec.kv else None
        )
        if spec.family == "klein":
            with torch.no_grad():
                self.extra["text_encoder_s"] = time_text_encoder(
                    lambda: plain.encode_prompt(prompt=PROMPT, device=self.device), self.clock
                )
            print(f"  text encoder alone: {self.extra['text_encoder_s']:.3f}s", flush=True)

        quick = args.quick
        many = 0 if quick else 4
        refs_sweep = [0, many] if many else [0]

        # eager
        self.measure(engine, "eager", 1)
        probes = {"eager": self.probe_output(plain)}
        images = {"eager": self.last_image} if self.last_image else {}
        if kv_engine:
            self.measure(engine, "eager", many or 2)
            self.measure(kv_engine, "eager", many or 2, kv=True)
        reserve = 2 * self.compile_s + 6 * self.cost(1, spec.warmups + spec.repeats)
        for refs in refs_sweep:
            if not (kv_engine and refs == many) and self.budget.allows(
                f"{spec.name} eager {refs}-ref", self.cost(refs, 3), reserve
            ):
                self.measure(engine, "eager", refs)
        if self.clock.cuda and self.budget.allows(f"{spec.name} sync count", self.unit_s, reserve):
            with self.guard("syncs eager"):
                self.extra["syncs eager"] = count_syncs(engine, references(1, self.size), self.size, spec.steps)

        # single options on the eager model
        attention = "native"
        if self.clock.cuda and self.budget.allows(f"{spec.name} +cudnn-attn", self.cost(1, 6), reserve):
            with self.guard("+cudnn-attn"):
                plain.transformer.set_attention_backend("_native_cudnn")
                row = self.measure(engine, "+cudnn-attn", 1)
                if row and row.denoise_s < self.eager[("plain", 1)].denoise_s:
                    attention = "_native_cudnn"
            plain.transformer.set_attention_backend("native")
        if self.budget.allows(f"{spec.name} +vae-cl", self.cost(1, 6), reserve):
            plain.vae.to(memory_format=torch.channels_last)
            self.measure(engine, "+vae-cl", 1)
            plain.vae.to(memory_format=torch.contiguous_format)
        fuse_qkv(plain.transformer)
        if self.budget.allows(f"{spec.name} +fuse-qkv", self.cost(1, 6), reserve):
            self.measure(engine, "+fuse-qkv", 1)

        # every lossless option
        if not self.budget.allows(f"{spec.name} lossless and fp8 stages", self.compile_s):
            self.extra["errors"] = errors(probes, images)
            return
        plain.transformer.set_attention_backend(attention)
        plain.vae.to(memory_format=torch.channels_last)
        compile_blocks(plain.transformer)
        compile_start = time.monotonic()
        self.timed_warm_up(engine, "lossless")
        if kv_engine:
            self.timed_warm_up(kv_engine, "lossless KV")
        self.compile_s = time.monotonic() - compile_start
        first = timed_edit(engine, references(1, self.size), self.size, spec.steps, self.clock)
        label = f"attention {attention}; first request after warm-up {first['e2e']:.3f}s"
        self.measure(engine, "lossless", 1, note=label)
        probes["lossless"] = self.probe_output(plain)
        if self.last_image:
            images["lossless"] = self.last_image
        if kv_engine:
            self.measure(engine, "lossless", many or 2)
            self.measure(kv_engine, "lossless", many or 2, kv=True)
        reserve = self.compile_s + 2 * self.cost(1, spec.warmups + spec.repeats)
        for refs in refs_sweep:
            if not (kv_engine and refs == many) and self.budget.allows(
                f"{spec.name} lossless {refs}-ref", self.cost(refs, 3), reserve
            ):
                self.measure(engine, "lossless", refs)
        if self.clock.cuda and self.budget.allows(f"{spec.name} sync count", self.unit_s, reserve):
            with self.guard("syncs lossless"):
                self.extra["syncs lossless"] = count_syncs(engine, references(1, self.size), self.size, spec.steps)

        # + fp8 (lossy)
        if not self.clock.cuda:
            self.extra["fp8"] = "skipped: needs a CUDA GPU with compute capability >= 8.9"
        elif self.budget.allows(f"{spec.name} +fp8", self.compile_s + self.cost(1, spec.warmups + spec.repeats)):
            with self.guard("+fp8"):
                self.run_fp8(engine, kv_engine, plain, probes, images, refs_sweep, many)
        self.extra["errors"] = errors(probes, images)
        print(f"  errors: {self.extra['errors']}", flush=True)

    def run_fp8(self, engine, kv_engine, plain, probes, images, refs_sweep, many) -> None:
        spec = self.spec
        transformer = plain.transformer
        # Per-layer error of the real kernels: a few block Linears, bf16 weights
        # kept aside, on the same Gaussian rows before and after quantization.
        names = ["transformer_blocks.0.ff.linear_in", "single_transformer_blocks.0.attn.to_qkv_mlp_proj",
                 f"single_transformer_blocks.{len(transformer.single_transformer_blocks) - 1}.attn.to_out"]  # fmt: skip
        gen = torch.Generator(self.device).manual_seed(5)
        layers = {}
        for name in names:
            weight = transformer.get_submodule(name).weight.detach().clone()
            x = torch.randn(1024, weight.shape[1], device=self.device, dtype=self.dtype, generator=gen)
            layers[name] = (x, torch.nn.functional.linear(x, weight).float())
            del weight
        quantize_fp8(transformer)
        with torch.no_grad():
            self.extra["fp8 per-layer rel-L2 (gaussian rows)"] = {
                name: float((transformer.get_submodule(name)(x).float() - y).norm() / y.norm())
                for name, (x, y) in layers.items()
            }
        del layers
        self.timed_warm_up(engine, "fp8")
        if kv_engine:
            self.timed_warm_up(kv_engine, "fp8 KV")
        self.measure(engine, "+fp8", 1)
        probes["fp8"] = self.probe_output(plain)
        if self.last_image:
            images["fp8"] = self.last_image
        if kv_engine:
            self.measure(kv_engine, "+fp8", many or 2, kv=True)
        for refs in refs_sweep:
            if not (kv_engine and refs == many) and self.budget.allows(
                f"{spec.name} +fp8 {refs}-ref", self.cost(refs, 3)
            ):
                self.measure(engine, "+fp8", refs)


def errors(probes: dict[str, torch.Tensor], images: dict[str, Image.Image]) -> dict:
    """Relative L2 error of the transformer output and image PSNR, against eager and against lossless bf16."""
    out: dict[str, Any] = {}
    pairs = [("lossless", "eager"), ("fp8", "lossless"), ("fp8", "eager")]
    for a, b in pairs:
        if a in probes and b in probes:
            ref = probes[b]
            out[f"transformer rel-L2 {a} vs {b}"] = float((probes[a] - ref).norm() / ref.norm())
            out[f"finite {a}"] = bool(torch.isfinite(probes[a]).all())
        if a in images and b in images:
            x = np.asarray(images[a], dtype=np.float64)
            y = np.asarray(images[b], dtype=np.float64)
            mse = float(((x - y) ** 2).mean())
            out[f"image PSNR {a} vs {b} (dB)"] = math.inf if mse == 0 else 10 * math.log10(255**2 / mse)
    return out


# --- report ---------------------------------------------------------------------------------


def fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def markdown(rows: list[Row], env: dict, extras: list[dict], skipped: list[str], derived: list[str]) -> str:
    lines = [
        f"GPU: {env['gpu']}; torch {env['torch']}, diffusers {env['diffusers']}, transformers {env['transformers']}; "
        f"measured matmul peak {env['peak_tflops']:.0f} TFLOP/s ({env['peak_dtype']}); size {env['size']}x{env['size']}, "
        f"references of the same size",
        "",
        "| model | stage | refs | steps | s/step | denoise s | e2e s | pre s | post s | peak GiB | TFLOP/s | MFU "
        "| x eager (denoise) | x eager (e2e) | note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.stage} | {r.refs} | {r.steps} | {r.s_per_step:.4f} | {r.denoise_s:.3f} | {r.e2e_s:.3f} "
            f"| {r.pre_s:.3f} | {r.post_s:.3f} | {r.peak_gib:.1f} | {r.tflops:.0f} | {100 * r.mfu:.1f}% "
            f"| {fmt(r.speedup_denoise, '.2f')} | {fmt(r.speedup_e2e, '.2f')} | {r.note} |"
        )
    lines.append("")
    for line in derived:
        lines.append(f"- {line}")
    for extra in extras:
        lines.append(f"- {extra['name']}: " + json.dumps({k: v for k, v in extra.items() if k != "name"}, default=str))
    if skipped:
        lines.append(f"- skipped for time: {', '.join(skipped)}")
    return "\n".join(lines)


def derived_lines(rows: list[Row], extras: list[dict]) -> list[str]:
    lines = []
    by = {(r.model, r.stage, r.refs): r for r in rows}
    for stage in ("eager", "lossless", "+fp8"):
        plain, kv = by.get(("klein-9b", stage, 4)), by.get(("klein-9b-kv", stage, 4))
        if plain and kv:
            lines.append(
                f"[klein] 9B-KV vs plain 9B, 4 references, {stage}: e2e {plain.e2e_s / kv.e2e_s:.2f}x, "
                f"denoise {plain.denoise_s / kv.denoise_s:.2f}x"
            )
    dev_te = next((e.get("text_encoder") for e in extras if e["name"] == "dev"), None)
    for r in rows:
        if r.model == "dev" and r.refs == 1:
            te = dev_te["seconds"] if dev_te else 0.0
            lines.append(
                f"[dev] {r.stage}, 1 reference, 50 steps (derived: pre + post + 50 x s/step + 24B text encoder): "
                f"{r.pre_s + r.post_s + 50 * r.s_per_step + te:.2f}s"
            )
    return lines


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="klein-4b,klein-9b,dev")
    parser.add_argument("--tiny", action="store_true", help="tiny configs (CPU smoke run of the harness)")
    parser.add_argument("--quick", action="store_true", help="fewer runs: one warm-up, one timed run, no 4-ref rows")
    parser.add_argument("--size", type=int, default=None, help="output and reference side (default 1024; tiny 128)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--budget-s", type=float, default=540.0, help="wall-clock budget for the whole run")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder for flux2_speed.{json,md} (default $OUT)")
    args = parser.parse_args()
    args.size = args.size or (128 if args.tiny else 1024)
    begin = time.monotonic()
    budget = Budget(deadline=begin + args.budget_s)
    device = torch.device(args.device)
    diffusers.utils.logging.set_verbosity_error()  # "experimental attention backends", "guidance ignored"
    transformers.utils.logging.set_verbosity_error()
    torch.backends.cuda.matmul.allow_tf32 = True  # the text encoders' float32 bits, if any

    peak_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_peak(device, peak_dtype)
    env = {
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.processor() or 'cpu'})",
        "torch": torch.__version__, "cuda": torch.version.cuda, "diffusers": diffusers.__version__,
        "transformers": transformers.__version__, "torchao": _version("torchao"),
        "python": platform.python_version(), "peak_tflops": peak["tflops"], "peak_shapes": peak["shapes"],
        "peak_dtype": str(peak_dtype).replace("torch.", ""), "size": args.size,
        "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
    }  # fmt: skip
    print(json.dumps(env), flush=True)

    specs = TINY_MODELS if args.tiny else FULL_MODELS
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    rows: list[Row] = []
    extras: list[dict] = []
    shares = sum(specs[n].budget_share for n in names)
    for name in names:
        spec = specs[name]
        if args.quick:
            spec.warmups, spec.repeats = 1, 1
        left = budget.deadline - time.monotonic()
        budget.model_deadline = time.monotonic() + left * spec.budget_share / shares
        shares -= spec.budget_share
        bench = ModelBench(spec, args, peak["tflops"], budget)
        try:
            bench.run()
        except Exception as exc:  # noqa: BLE001 - report what ran, say what did not
            bench.extra["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            print(f"  FAILED {name}: {bench.extra['error']}", flush=True)
            traceback.print_exc()
        rows += bench.rows
        extras.append(bench.extra)
        del bench
        torch._dynamo.reset()  # compiled graphs of this model's blocks go with it
        free()
        env["total_s"] = round(time.monotonic() - begin, 1)
        table = report(rows, env, extras, budget.skipped, args.out)  # after each model: a timeout keeps the rest
    print("\n" + table, flush=True)


def report(rows: list[Row], env: dict, extras: list[dict], skipped: list[str], out: str | None) -> str:
    table = markdown(rows, env, extras, skipped, derived_lines(rows, extras))
    if out:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "flux2_speed.md").write_text(table + "\n")
        payload = {"env": env, "rows": [r.__dict__ for r in rows], "extras": extras, "skipped": skipped}
        (folder / "flux2_speed.json").write_text(json.dumps(payload, indent=1, default=str))
    return table


if __name__ == "__main__":
    main()
