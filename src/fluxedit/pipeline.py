"""The one edit: a validated input and its references' bytes in, the engine's images out.

The worker (a queued job) and `fluxedit edit` (one edit in the terminal) both call
`run_edit`; only where the bytes come from and where the images go differ.
Phases, in order: fetching (read and decode the references, size the output),
loading (the engine), denoising. `checkpoint(phase)` runs before each, so that a
cancel or a lost lease stops the edit before its next costly phase, and the
worker can tell which phase a job is in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from fluxedit.config import Settings
from fluxedit.engines.base import EditRequest, Engine, ProgressCallback
from fluxedit.images.decode import Reference, decode_reference
from fluxedit.schema import EditInput


@dataclass(frozen=True)
class EditOutcome:
    images: list[Image.Image]
    width: int
    height: int
    inference_s: float


def _no_checkpoint(phase: str) -> None:
    return None


def edit_request(params: EditInput, references: list[Reference]) -> EditRequest:
    """The engine's request for `params`: the output size resolved here; steps and guidance
    left to the engine when the caller gave none (it knows its model's defaults)."""
    # "auto" follows the first reference as people see it, not its 16-px crop.
    width, height = params.output_size(references[0].source_size)
    extra = {"safety_tolerance": params.safety_tolerance} if params.safety_tolerance is not None else {}
    return EditRequest(
        prompt=params.prompt,
        images=[reference.image for reference in references],
        width=width,
        height=height,
        seed=params.seed,
        steps=params.num_inference_steps,
        guidance=params.guidance_scale,
        output_format=params.output_format,
        num_images=params.num_images,
        extra=extra,
    )


def run_edit(
    params: EditInput,
    engine: Engine,
    read_references: Callable[[list[str]], list[bytes]],
    *,
    settings: Settings,
    progress: ProgressCallback | None = None,
    checkpoint: Callable[[str], None] = _no_checkpoint,
) -> EditOutcome:
    """Run one edit of `params` on `engine`; `read_references(params.image_urls)` gives their bytes."""
    checkpoint("fetching")
    datas = read_references(params.image_urls)
    references = [decode_reference(data, index=i, max_pixels=settings.max_image_pixels) for i, data in enumerate(datas)]
    del datas
    request = edit_request(params, references)
    checkpoint("loading")
    engine.load()  # idempotent; the first time may take long
    checkpoint("denoising")
    started = time.monotonic()
    images = engine.edit(request, progress)
    return EditOutcome(images, request.width, request.height, time.monotonic() - started)
