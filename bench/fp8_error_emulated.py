"""fp8 error against bf16, emulated on the CPU (torchao's float8 kernels need an sm89+ GPU).

    PYTHONPATH=src python bench/fp8_error_emulated.py

What `SpeedOptions(fp8=True)` does to each Linear of the transformer blocks is
torchao's dynamic float8 with per-row scales: every activation row and every
weight row is scaled by its absolute maximum / 448, rounded to float8 e4m3,
multiplied with float32 accumulation and scaled back, output in bf16. This
script does exactly that arithmetic with torch's float8_e4m3fn dtype (products of
two e4m3 numbers are exact in float32, so only the summation order can differ
from the GPU kernel), on a FLUX.2 transformer with [klein] 4B's width and fewer
blocks, random weights (the same init the GPU benchmark uses), 256x256 output with
one 256x256 reference and 512 text tokens. It reports the relative L2 error of
each block Linear's output (fp8 against bf16, on the activations the bf16 model
feeds that layer) and of the transformer's output (bf16 and fp8 against float32,
fp8 against bf16). With random weights the blocks' gated contributions to the
residual stream are small, which damps the error of the whole output: the
per-layer number is the one to read. Random weights also lack a trained model's
activation outliers, which make float8 worse: read both as lower bounds;
bench/flux2_speed.py measures the real kernels (still on random weights) on a GPU.
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import Flux2Transformer2DModel

E4M3_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448


def _to_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row scaled float8: (values as float32, scale), as torchao's PerRow granularity."""
    scale = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / E4M3_MAX
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).float(), scale


class Fp8Linear(torch.nn.Module):
    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.weight, self.weight_scale = _to_fp8(linear.weight.detach())
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values, scale = _to_fp8(x.reshape(-1, x.shape[-1]))
        out = (values @ self.weight.T) * scale * self.weight_scale.T
        out = out.reshape(*x.shape[:-1], -1).to(x.dtype)
        return out if self.bias is None else out + self.bias


def emulate_fp8(model: torch.nn.Module) -> None:
    for name, module in list(model.named_modules()):
        if not name.startswith(("transformer_blocks.", "single_transformer_blocks.")):
            continue
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(module, child_name, Fp8Linear(child))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--double", type=int, default=2)
    parser.add_argument("--single", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    config = dict(
        num_layers=args.double, num_single_layers=args.single, num_attention_heads=24, attention_head_dim=128,
        joint_attention_dim=7680, in_channels=128, guidance_embeds=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Flux2Transformer2DModel(**config).eval().requires_grad_(False)
    side = args.size // 16
    ids = torch.cat(
        [
            torch.cartesian_prod(torch.tensor([t]), torch.arange(side), torch.arange(side), torch.arange(1))
            for t in (0, 10)
        ]
    )
    txt_ids = torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(512))
    gen = torch.Generator().manual_seed(1)
    inputs = dict(
        hidden_states=torch.randn(1, 2 * side * side, 128, generator=gen),
        encoder_hidden_states=torch.randn(1, 512, 7680, generator=gen),
        timestep=torch.tensor([0.6]), img_ids=ids[None], txt_ids=txt_ids[None], guidance=None, return_dict=False,
    )  # fmt: skip

    def run(dtype: torch.dtype) -> torch.Tensor:
        cast = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() and k != "timestep" else v
                for k, v in inputs.items()}  # fmt: skip
        with torch.no_grad():
            return model(**cast)[0].float()

    start = time.perf_counter()
    reference = run(torch.float32)
    model.to(torch.bfloat16)
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [
        module.register_forward_hook(lambda m, args, out, name=name: seen.setdefault(name, (args[0], out)) and None)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and name.startswith(("transformer_blocks.", "single_transformer_blocks."))
    ]
    bf16 = run(torch.bfloat16)
    for hook in hooks:
        hook.remove()
    layer_errors = {
        name: float((Fp8Linear(model.get_submodule(name))(x).float() - y.float()).norm() / y.float().norm())
        for name, (x, y) in seen.items()
    }
    emulate_fp8(model)
    fp8 = run(torch.bfloat16)

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).norm() / b.norm())

    print(f"config: {config}, {args.size}x{args.size} + one reference, 512 text tokens")
    errors = sorted(layer_errors.values())
    print(
        f"relative L2 error of each block Linear, fp8 vs bf16 ({len(errors)} layers): "
        f"median {errors[len(errors) // 2]:.4f}, min {errors[0]:.4f}, max {errors[-1]:.4f}"
    )
    print(f"relative L2 error of the transformer output ({time.perf_counter() - start:.0f}s):")
    print(f"  bf16 vs float32: {rel(bf16, reference):.4f}")
    print(f"  fp8  vs float32: {rel(fp8, reference):.4f}")
    print(f"  fp8  vs bf16:    {rel(fp8, bf16):.4f}")


if __name__ == "__main__":
    main()
