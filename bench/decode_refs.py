"""Reference decoding: a 4000x3000 JPEG taken to the model's 1 MP input.

naive:             Image.open(...).convert("RGB").resize(size)
decode_reference:  header checks, JPEG draft (DCT-scaled) decode, resize (BILINEAR for the <2x step left), crop to 16

Run:  PYTHONPATH=src python bench/decode_refs.py [--runs 15]
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import sys
import time

import numpy as np
import PIL
from PIL import Image

from fluxedit.images.decode import decode_reference


def photo_like_jpeg(width: int = 4000, height: int = 3000, quality: int = 90) -> bytes:
    """Smooth gradients, a few shapes and sensor-like noise: compresses like a photo."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 255 * x / width
    g = 255 * y / height
    b = 128 + 100 * np.sin(x / 180.0) * np.cos(y / 240.0)
    rgb = np.stack([r, g, b], axis=-1)
    for _ in range(12):  # soft blobs, like out-of-focus objects
        cx, cy, radius = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(100, 600)
        mask = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius**2))[..., None]
        rgb = rgb * (1 - mask) + rng.uniform(0, 255, 3) * mask
    rgb += rng.normal(0, 6, rgb.shape)
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def naive(data: bytes, size: tuple[int, int]) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB").resize(size)


def medians_ms(fns: dict[str, callable], runs: int) -> dict[str, float]:
    """Median wall time of each, runs interleaved so load on a shared machine hits both alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up: imports, plugin registry, caches
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def pipeline_input(data: bytes) -> Image.Image:
    """What diffusers' Flux2 pipelines make of the reference: full decode, LANCZOS, crop."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    scale = (1024 * 1024 / (image.width * image.height)) ** 0.5
    image = image.resize((int(image.width * scale), int(image.height * scale)), Image.Resampling.LANCZOS)
    w, h = image.width // 16 * 16, image.height // 16 * 16
    left, top = (image.width - w) // 2, (image.height - h) // 2
    return image.crop((left, top, left + w, top + h))


def psnr_db(a: Image.Image, b: Image.Image) -> float:
    mse = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()

    data = photo_like_jpeg()
    ours = decode_reference(data).image
    size = ours.size
    assert naive(data, size).size == size, "both paths must produce the model's input size"
    reference = pipeline_input(data)
    assert reference.size == size, "decode_reference must produce the pipeline's input size"

    ms = medians_ms({"naive": lambda: naive(data, size), "ours": lambda: decode_reference(data)}, args.runs)

    print(f"input: 4000x3000 JPEG q90, {len(data) / 1e6:.2f} MB -> output {size[0]}x{size[1]}")
    print(
        f"Python {platform.python_version()}, Pillow {PIL.__version__}, {platform.machine()}, "
        f"median of {args.runs} interleaved runs"
    )
    print("PSNR: against the pipeline's own input (full decode, LANCZOS, crop)")
    print()
    print(f"| {'path':<40} | {'median ms':>9} | {'speed-up':>8} | {'PSNR dB':>7} |")
    print(f"| {'-' * 40} | {'-' * 9}:| {'-' * 8}:| {'-' * 7}:|")
    rows = [
        ("naive open().convert().resize()", ms["naive"], naive(data, size)),
        ("decode_reference (draft + BILINEAR)", ms["ours"], ours),
    ]
    for label, t, image in rows:
        print(f"| {label:<40} | {t:9.1f} | {ms['naive'] / t:7.2f}x | {psnr_db(image, reference):7.1f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
