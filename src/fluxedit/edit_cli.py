"""`fluxedit edit`: one edit from the terminal, on this machine or on a fluxedit server.

Every argument is checked before torch is imported, so a typo is answered at once.
"""

from __future__ import annotations

import argparse
import base64
import os
import time
from pathlib import Path

from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fluxedit import sizes
from fluxedit.config import Settings
from fluxedit.errors import FluxeditError, ImageInputError, InvalidInput
from fluxedit.schema import EditInput, invalid_input

console = Console(stderr=True)

# Output file extension -> format; a file named otherwise needs --format.
EXTENSION_FORMATS = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png"}


def output_format(args: argparse.Namespace) -> str:
    """The format to write: --format, else the output's extension; refused when the two disagree."""
    suffix = Path(args.output).suffix.lower()
    implied = EXTENSION_FORMATS.get(suffix)
    if suffix and implied is None:
        raise InvalidInput(
            f"-o {args.output}: fluxedit writes JPEG or PNG; name the output .jpg, .jpeg or .png.", field="-o"
        )
    if args.format and implied and args.format != implied:
        raise InvalidInput(f"-o {args.output} is a {implied.upper()} name but --format is {args.format}.", field="-o")
    return args.format or implied or "jpeg"


def _is_url(ref: str) -> bool:
    return ref.startswith(("http://", "https://", "data:"))


def _as_image_url(ref: str, index: int) -> str:
    """An -i as the edit input takes it: URLs as given, files as data: URIs (read now, so a missing file fails at once)."""
    if _is_url(ref):
        return ref
    path = Path(ref).expanduser()
    if not path.is_file():
        raise ImageInputError(f"Reference {index + 1} ({ref}) is not a file.", code="input_unreachable", index=index)
    return "data:image/*;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def edit_input(args: argparse.Namespace, image_urls: list[str]) -> EditInput:
    """The edit's input, validated by the same schema as the API's."""
    size = sizes.parse_size_arg(args.size)
    values = {
        "prompt": args.prompt,
        "image_urls": image_urls,
        "image_size": size if isinstance(size, str) else {"width": size[0], "height": size[1]},
        "seed": args.seed,
        "output_format": output_format(args),
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance,
    }
    try:
        return EditInput.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        raise for_people(invalid_input(exc.errors()), args.image) from None


def for_people(error: FluxeditError, refs: list[str]) -> FluxeditError:
    """An error about image_urls[i], said as people count: reference i+1, with the -i they gave."""
    if error.index is not None and 0 <= error.index < len(refs):
        prefix = f"image_urls[{error.index}]"
        detail = error.message.removeprefix(prefix).lstrip(": ").removeprefix(prefix).lstrip(": ")
        error.message = f"Reference {error.index + 1} ({_shown(refs[error.index])}): {detail}"
    return error


def _shown(ref: str) -> str:
    return ref if len(ref) <= 80 else ref[:60] + "..."


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
    urls = [_as_image_url(ref, i) for i, ref in enumerate(args.image)]
    params = edit_input(args, urls)
    source = args.model or "tiny"
    if source != "tiny" and not source.startswith("bfl:"):
        from fluxedit.engines.weights import read_model_index

        read_model_index(source)  # an unknown model fails here, before torch is imported
    from fluxedit.images.decode import encode_image
    from fluxedit.images.fetch import fetch_references
    from fluxedit.pipeline import run_edit
    from fluxedit.runtime import engine_for

    engine = engine_for(source, settings)
    with console.status(f"loading {source}"):
        engine.load()
    started = time.perf_counter()
    with _progress_bar() as bar:
        task = bar.add_task("edit", total=None)

        def on_step(step: int, total: int) -> bool:
            bar.update(task, completed=step, total=total)
            return False

        try:
            outcome = run_edit(
                params, engine, lambda refs: fetch_references(refs, settings), settings=settings, progress=on_step
            )
        except FluxeditError as exc:
            raise for_people(exc, args.image) from None
    Path(args.output).write_bytes(encode_image(outcome.images[0], params.output_format))
    console.print(
        f"wrote {args.output} ({outcome.width}x{outcome.height}, seed {params.seed}) "
        f"in {time.perf_counter() - started:.2f} s"
    )
    return 0


def edit_on_server(args: argparse.Namespace) -> int:
    from fluxedit.client import Client

    api_key = args.api_key or os.environ.get("FLUXEDIT_API_KEY")
    model = args.model or "blackforestlabs/flux-2/pro/edit"
    if model == "tiny" or Path(model).exists():
        raise InvalidInput(
            "With --server, --model is a model id such as blackforestlabs/flux-2/pro/edit.", field="--model"
        )
    for index, ref in enumerate(args.image):
        if not _is_url(ref) and not Path(ref).expanduser().is_file():
            raise ImageInputError(f"Reference {index + 1} ({ref}) is not a file.", code="input_unreachable")
    size = sizes.parse_size_arg(args.size)
    fmt = output_format(args)
    with Client(args.server, api_key) as client, _progress_bar() as bar:
        urls = [ref if _is_url(ref) else client.upload(Path(ref).expanduser()) for ref in args.image]
        task = bar.add_task("edit", total=None)

        def on_update(status) -> None:
            if status.progress:
                bar.update(task, completed=status.progress.step, total=status.progress.total)

        images = client.edit(
            model,
            prompt=args.prompt,
            image_urls=urls,
            image_size=size if isinstance(size, str) else {"width": size[0], "height": size[1]},
            seed=args.seed,
            output_format=fmt,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            on_update=on_update,
        )
    Path(args.output).write_bytes(images[0].data)
    console.print(f"wrote {args.output} from {args.server}")
    return 0
