"""How long `fluxedit` takes to answer a mistake, and what it imports first.

Each command is run as a user would (a fresh `python -m fluxedit` process, HF_HUB_OFFLINE=1),
interleaved with the same command from another checkout (`--baseline SRC`, e.g. a worktree of an
older commit), median wall time of --runs runs each.

    .venv/bin/python bench/cli_errors.py --runs 5 --baseline /tmp/fluxedit-before/src
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "edit --size 12x12": ["edit", "-p", "x", "-i", "examples/scene.jpg", "-o", "out.jpg", "--size", "12x12"],
    "edit -i missing.png": ["edit", "-p", "x", "-i", "missing.png", "-o", "out.jpg"],
    "edit --model nosuch/model": [
        "edit",
        "-p",
        "x",
        "-i",
        "examples/scene.jpg",
        "-o",
        "out.jpg",
        "--model",
        "nosuch/model",
    ],
    "keys list": ["keys", "list"],
}


def run(src: Path, args: list[str], data_dir: str) -> tuple[float, bool]:
    """(wall seconds, whether torch was imported) of one `python -X importtime -m fluxedit ARGS`."""
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1", "FLUXEDIT_DATA_DIR": data_dir}
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "fluxedit", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    modules = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    return wall, "torch" in modules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="another checkout's src/ to compare against")
    args = parser.parse_args()
    sources = {"this": ROOT / "src"} | ({"baseline": args.baseline} if args.baseline else {})
    data_dir = tempfile.mkdtemp(prefix="fluxedit-bench-cli-")
    print(f"| command | {' | '.join(f'{name} median s (torch imported?)' for name in sources)} |")
    print(f"| --- | {' | '.join('---:' for _ in sources)} |")
    for label, command in COMMANDS.items():
        times: dict[str, list[float]] = {name: [] for name in sources}
        torch: dict[str, bool] = {}
        for _ in range(args.runs):
            for name, src in sources.items():  # interleaved: load on the machine hits both alike
                wall, imported = run(src, command, data_dir)
                times[name].append(wall)
                torch[name] = imported
        cells = [f"{statistics.median(times[n]):.2f} ({'yes' if torch[n] else 'no'})" for n in sources]
        print(f"| `fluxedit {label}` | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
