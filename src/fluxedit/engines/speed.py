"""Speed options for FLUX.2 on diffusers, applied to a loaded pipeline.

Every option uses what diffusers, PyTorch or torchao already offer; nothing
here re-implements a kernel. `SpeedOptions()` is the documented default:

| option | default | lossless? | what it does |
| --- | --- | --- | --- |
| `bf16` | on | no (vs float32) | bfloat16 weights and activations on CUDA (the models ship in bf16); float32 on CPU |
| `fuse_qkv` | on | yes | one Q/K/V projection matmul per stream in the double blocks (`fuse_qkv_projections`); the unfused copies are dropped |
| `compile` | `"auto"` | yes | `"regional"`: `torch.compile` of the repeated transformer blocks (`compile_repeated_blocks`, dynamic shapes, compiled once at load); `"auto"`: regional on CUDA, off elsewhere |
| `attention_backend` | `"native"` | yes | diffusers' attention dispatcher: `native` (PyTorch SDPA), `_native_cudnn`, `_native_flash`, `_native_efficient`, `_native_math`, and `flash` / `_flash_3` / `sage` / `xformers` where their package is installed |
| `vae_channels_last` | `None` | yes | VAE convolutions in channels-last memory format; `None`: on CUDA |
| `vae_tiling` | on | no | tiled VAE encode/decode, only for outputs of `vae_tiling_min_pixels` (4 MP) or more, to bound memory |
| `fp8` | off | **no** | torchao dynamic float8 (per-row scales) for the Linear layers of the transformer blocks; CUDA with compute capability >= 8.9 only |
| `warm_up` | `None` | - | one small edit at load so compilation and kernel selection are not paid by the first request; `None`: on CUDA |

CPU-GPU syncs in the denoising loop: the diffusers FLUX.2 loops already keep
the timesteps and sigmas on the device and call
`scheduler.set_begin_index(0)`, so the scheduler step indexes a device tensor
with a Python int and never calls `.item()`. The engine's step callback reads
no tensor, so each step only queues work. What still syncs per edit is outside
the loop: the CPU generator's noise copied to the GPU (kept: it makes a seed
give the same image on any device), the tokenizer's ids copied in, the
[klein] 9B-KV pipeline's `torch.max(...)` in unpacking (after the loop) and
the final copy of the image to the host. `bench/flux2_speed.py` counts them
with `torch.cuda.set_sync_debug_mode`.
"""

from __future__ import annotations

import importlib.util
import inspect
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import torch
from PIL import Image

from fluxedit.errors import ModelUnavailable

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from fluxedit.config import Settings

CompileMode = Literal["auto", "off", "regional"]

# Attention backends that run without fetching anything: name -> (needs CUDA, package it needs).
# diffusers' *_hub backends download kernels from the Hugging Face Hub at run time; they are not offered.
ATTENTION_BACKENDS: dict[str, tuple[bool, str | None]] = {
    "native": (False, None),
    "_native_math": (False, None),
    "_native_cudnn": (True, None),
    "_native_flash": (True, None),
    "_native_efficient": (True, None),
    "flash": (True, "flash_attn"),
    "_flash_3": (True, "flash_attn_interface"),
    "sage": (True, "sageattention"),
    "xformers": (True, "xformers"),
}

FOUR_MEGAPIXELS = 4 * 1024 * 1024


class SpeedOptionError(ModelUnavailable):
    """A speed option that cannot run on this machine (missing package, no CUDA, ...): the model does not load."""

    code = "speed_option_unavailable"
    status = 503


@dataclass(frozen=True)
class SpeedOptions:
    """How fast (and how exactly) to run a FLUX.2 pipeline. Defaults: see the module docstring."""

    bf16: bool = True
    fuse_qkv: bool = True
    compile: CompileMode = "auto"
    attention_backend: str = "native"
    vae_channels_last: bool | None = None
    vae_tiling: bool = True
    vae_tiling_min_pixels: int = FOUR_MEGAPIXELS
    fp8: bool = False
    warm_up: bool | None = None

    @classmethod
    def eager(cls) -> SpeedOptions:
        """Plain diffusers: every option off (bf16 on CUDA stays: it is the models' own dtype)."""
        return cls(fuse_qkv=False, compile="off", vae_channels_last=False, vae_tiling=False, warm_up=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> SpeedOptions:
        return cls(
            bf16=settings.bf16,
            fuse_qkv=settings.fuse_qkv,
            compile=settings.compile,
            attention_backend=settings.attention_backend,
            vae_channels_last=settings.vae_channels_last,
            vae_tiling=settings.vae_tiling,
            fp8=settings.fp8,
            warm_up=settings.warm_up,
        )

    def with_(self, **changes: Any) -> SpeedOptions:
        return replace(self, **changes)

    def dtype_for(self, device: str | torch.device) -> torch.dtype:
        return torch.bfloat16 if self.bf16 and torch.device(device).type == "cuda" else torch.float32

    def compiles_on(self, device: str | torch.device) -> bool:
        if self.compile == "auto":
            return torch.device(device).type == "cuda"
        return self.compile == "regional"

    def channels_last_on(self, device: str | torch.device) -> bool:
        return torch.device(device).type == "cuda" if self.vae_channels_last is None else self.vae_channels_last

    def warms_up_on(self, device: str | torch.device) -> bool:
        return torch.device(device).type == "cuda" if self.warm_up is None else self.warm_up

    def check(self, device: str | torch.device) -> None:
        """Raise SpeedOptionError if an option cannot run on `device`; says what to change."""
        device = torch.device(device)
        if self.compile not in ("auto", "off", "regional"):
            raise SpeedOptionError(f"compile must be 'auto', 'off' or 'regional', not {self.compile!r}.")
        name = self.attention_backend
        if name not in ATTENTION_BACKENDS:
            hint = " (the *_hub backends download kernels at run time and are not offered)" if "hub" in name else ""
            raise SpeedOptionError(
                f"Unknown attention backend {name!r}{hint}; use one of {', '.join(ATTENTION_BACKENDS)}."
            )
        needs_cuda, package = ATTENTION_BACKENDS[name]
        if package and importlib.util.find_spec(package) is None:
            raise SpeedOptionError(
                f"Attention backend {name!r} needs the Python package {package!r}, which is not installed; "
                "install it or use attention backend 'native'."
            )
        if needs_cuda and device.type != "cuda":
            raise SpeedOptionError(f"Attention backend {name!r} needs a CUDA GPU; this engine runs on {device.type}.")
        if self.fp8:
            _check_fp8(device)


def _check_fp8(device: torch.device) -> None:
    if device.type != "cuda":
        raise SpeedOptionError(f"fp8 quantization needs a CUDA GPU; this engine runs on {device.type}.")
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        raise SpeedOptionError(
            f"fp8 quantization needs a GPU with compute capability 8.9 or newer (Ada, Hopper); "
            f"this one has {major}.{minor}."
        )
    if importlib.util.find_spec("torchao") is None:
        raise SpeedOptionError("fp8 quantization needs torchao: pip install 'fluxedit[fast]'.")


def pipeline_device(pipe: DiffusionPipeline) -> torch.device:
    return next(pipe.transformer.parameters()).device


def apply_speed_options(
    pipe: DiffusionPipeline, options: SpeedOptions, *, device: str | torch.device | None = None
) -> None:
    """Apply `options` to a loaded pipeline in place (on its device and dtype). Call once, before any edit.

    Order matters: QKV fusion first (so fp8 quantizes the fused weights), the
    attention backend on the final processors, fp8 before compiling (the
    compiled graphs then include the quantize/scaled-matmul ops).
    """
    device = torch.device(device) if device is not None else pipeline_device(pipe)
    options.check(device)
    transformer = pipe.transformer
    if options.fuse_qkv:
        fuse_qkv(transformer)
    # Always set, "native" too: diffusers' processors otherwise follow a
    # process-wide active backend that another engine may have changed.
    transformer.set_attention_backend(options.attention_backend)
    if options.fp8:
        quantize_fp8(transformer)
    if options.compiles_on(device):
        compile_blocks(transformer)
    if options.channels_last_on(device):
        pipe.vae.to(memory_format=torch.channels_last)
    configure_vae_tiling(pipe, options, width=0, height=0)


def fuse_qkv(transformer: torch.nn.Module) -> None:
    """Fuse the double blocks' Q, K, V (and added Q, K, V) projections, then drop the unfused copies.

    diffusers keeps the unfused Linear layers next to the fused ones (to allow
    unfusing); for [dev] that is 1.8B parameters (3.6 GB in bf16) never used
    again, so they are deleted. The single blocks are always fused.
    """
    transformer.fuse_qkv_projections()
    for module in transformer.modules():
        if getattr(module, "fused_projections", False):
            for name in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"):
                if isinstance(getattr(module, name, None), torch.nn.Module):
                    delattr(module, name)


def _is_block_linear(module: torch.nn.Module, fqn: str) -> bool:
    # Only the blocks: that is where the FLOPs are. The embedders, modulations
    # and output layer see few rows (or one) and keep bf16.
    return isinstance(module, torch.nn.Linear) and fqn.startswith(("transformer_blocks.", "single_transformer_blocks."))


def quantize_fp8(transformer: torch.nn.Module) -> None:
    """torchao dynamic float8 (e4m3, per-row scales) for the blocks' Linear layers. Lossy."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    quantize_(transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=_is_block_linear)


def compile_blocks(transformer: torch.nn.Module) -> None:
    """Regional compilation: each repeated block class is compiled once and reused by all its instances.

    Dynamic shapes, so a new output size or reference count does not
    recompile; the compilation itself happens at the first forward (warm-up).
    """
    # Each model (and each KV forward kind) adds guarded graphs for the same
    # block classes; past dynamo's default limit of 8 they would silently run
    # eager, so allow room for several models in one process.
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # renamed in torch 2.7
    setattr(config, name, max(getattr(config, name), 64))
    transformer.compile_repeated_blocks(fullgraph=True, dynamic=True)


def configure_vae_tiling(pipe: DiffusionPipeline, options: SpeedOptions, *, width: int, height: int) -> None:
    """Tile the VAE only for large outputs (>= vae_tiling_min_pixels); call before each edit."""
    tile = options.vae_tiling and width * height >= options.vae_tiling_min_pixels
    if tile:
        pipe.vae.enable_tiling()
    else:
        pipe.vae.disable_tiling()


def warm_up(
    target: Any,
    *,
    width: int = 384,
    height: int = 320,
    references: int = 1,
    steps: int = 2,
) -> float:
    """Run one small edit so compilation and kernel selection happen now. Returns its seconds.

    `target` is a Flux2Engine (its pipeline is loaded) or a pipeline. The sizes
    are chosen so that no two token counts coincide (dynamic-shape compilation
    would otherwise tie them together and recompile later); one reference and
    two steps run every kind of forward the [klein] 9B-KV pipeline has. The
    references are smaller than the output, so that no size is tied to another.
    """
    pipe = getattr(target, "pipe", None) or target
    kwargs: dict[str, Any] = dict(
        image=[Image.new("RGB", (width - 64, height - 64), (128, 96, 64))] * references or None,
        prompt="warm-up",
        width=width,
        height=height,
        num_inference_steps=steps,
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="pil",
    )
    if "guidance_scale" in _call_parameters(pipe):
        kwargs["guidance_scale"] = 1.0
    start = time.perf_counter()
    pipe(**kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _call_parameters(pipe: Any) -> set[str]:
    return set(inspect.signature(pipe.__call__).parameters)
