"""`fluxedit edit`: one edit from the terminal, on this machine or on a fluxedit server."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fluxedit import sizes
from fluxedit.config import Settings
from fluxedit.errors import ImageInputError, InvalidInput

console = Console(stderr=True)


def output_format(args: argparse.Namespace) -> str:
    if args.format:
        return args.format
    return "png" if Path(args.output).suffix.lower() == ".png" else "jpeg"


def _is_url(ref: str) -> bool:
    return ref.startswith(("http://", "https://", "data:"))


def read_references(refs: list[str], settings: Settings) -> list[bytes]:
    """Bytes of each -i: files read here, URLs fetched through the same guarded fetcher as the server."""
    from fluxedit.images.fetch import fetch_references

    data: list[bytes | None] = []
    for index, ref in enumerate(refs):
        path = Path(ref).expanduser()
        if _is_url(ref):
            data.append(None)
        elif path.is_file():
            data.append(path.read_bytes())
        else:
            raise ImageInputError(
                f"Reference {index + 1} ({ref}) is not a file.", code="input_unreachable", index=index
            )
    positions = [i for i, item in enumerate(data) if item is None]
    try:
        fetched = fetch_references([refs[i] for i in positions], settings) if positions else []
    except ImageInputError as exc:
        exc.index = positions[exc.index] if exc.index is not None else None  # count among all -i, not URLs
        raise
    for position, content in zip(positions, fetched, strict=True):
        data[position] = content
    return data


def _progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]denoising"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def edit_locally(args: argparse.Namespace, settings: Settings) -> int:
    from fluxedit.engines.base import EditRequest
    from fluxedit.engines.registry import make_engine
    from fluxedit.images.decode import decode_reference, encode_image

    size = sizes.parse_size_arg(args.size)
    fmt = output_format(args)
    references = [
        decode_reference(data, index=i, max_pixels=settings.max_image_pixels)
        for i, data in enumerate(read_references(args.image, settings))
    ]
    width, height = sizes.resolve_size(size, references[0].info["source_size"])
    engine = make_engine(args.model or "tiny", settings)
    with console.status(f"loading {args.model or 'tiny'}"):
        engine.load()
    request = EditRequest(
        prompt=args.prompt,
        images=references,
        width=width,
        height=height,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        output_format=fmt,
    )
    started = time.perf_counter()
    with _progress_bar() as bar:
        task = bar.add_task("edit", total=None)

        def on_step(step: int, total: int) -> bool:
            bar.update(task, completed=step, total=total)
            return False

        images = engine.edit(request, on_step)
    Path(args.output).write_bytes(encode_image(images[0], fmt))
    console.print(f"wrote {args.output} ({width}x{height}, seed {args.seed}) in {time.perf_counter() - started:.2f} s")
    return 0


def edit_on_server(args: argparse.Namespace) -> int:
    from fluxedit.client import Client

    api_key = args.api_key or os.environ.get("FLUXEDIT_API_KEY")
    size = sizes.parse_size_arg(args.size)
    image_size = size if isinstance(size, str) else {"width": size[0], "height": size[1]}
    model = args.model or "blackforestlabs/flux-2/pro/edit"
    if model == "tiny" or Path(model).exists():
        raise InvalidInput(
            "With --server, --model is a model id such as blackforestlabs/flux-2/pro/edit.", field="--model"
        )
    with Client(args.server, api_key) as client, _progress_bar() as bar:
        urls = [ref if _is_url(ref) else client.upload(Path(ref)) for ref in args.image]
        task = bar.add_task("edit", total=None)

        def on_update(status) -> None:
            if status.progress:
                bar.update(task, completed=status.progress.step, total=status.progress.total)

        images = client.edit(
            model,
            prompt=args.prompt,
            image_urls=urls,
            image_size=image_size,
            seed=args.seed,
            output_format=output_format(args),
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            on_update=on_update,
        )
    Path(args.output).write_bytes(images[0].data)
    console.print(f"wrote {args.output} from {args.server}")
    return 0
