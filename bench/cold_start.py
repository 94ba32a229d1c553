"""Cold start: `fluxedit edit --model tiny` wall time, and how much of it is imports.

Runs the README's edit (the tiny model, the two example pictures) as a new process
`--runs` times for its wall time, then once under `python -X importtime` for the
import time: the sum of the top-level imports' cumulative times, and the largest
subtrees (torch, torch._dynamo, transformers, ...), each counted where it is first
imported.

Run:  PYTHONPATH=src python bench/cold_start.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+(\d+) \|( +)(\S+)$")
WATCHED = ("torch", "torch._dynamo", "diffusers", "transformers", "accelerate", "torchao", "fluxedit.engines.flux2")


def edit_command(out: Path) -> list[str]:
    examples = ROOT / "examples"
    return [
        *("-m", "fluxedit", "edit", "--model", "tiny", "-p", "put the red hat on the hill"),
        *("-i", str(examples / "scene.jpg"), "-i", str(examples / "hat.png")),
        *("--size", "landscape_4_3", "-o", str(out)),
    ]


def imports_s(stderr: str) -> tuple[float, dict[str, float]]:
    """(all top-level imports' seconds, seconds of each watched module's subtree)."""
    total, watched = 0.0, {}
    for line in stderr.splitlines():
        match = IMPORT_LINE.match(line)
        if not match:
            continue
        cumulative_s, depth, name = int(match[1]) / 1e6, len(match[2]), match[3]
        if depth == 1:
            total += cumulative_s
        if name in WATCHED and name not in watched:
            watched[name] = cumulative_s
    return total, watched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "edited.jpg"
        subprocess.run([sys.executable, *edit_command(out)], env=env, check=True, capture_output=True)  # warm caches
        walls = []
        for _ in range(args.runs):
            started = time.perf_counter()
            subprocess.run([sys.executable, *edit_command(out)], env=env, check=True, capture_output=True)
            walls.append(time.perf_counter() - started)
        traced = subprocess.run(
            [sys.executable, "-X", "importtime", *edit_command(out)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
    total, watched = imports_s(traced.stderr)
    wall = statistics.median(walls)
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, load {os.getloadavg()}")
    print(f"wall: median {wall:.2f} s of {args.runs} runs ({', '.join(f'{w:.2f}' for w in walls)})")
    print(f"imports: {total:.2f} s, {total / wall:.0%} of the median wall (importtime adds a little)")
    for name in WATCHED:
        print(f"  {name}: {watched[name]:.2f} s" if name in watched else f"  {name}: not imported")


if __name__ == "__main__":
    main()
