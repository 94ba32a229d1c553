"""The Engine protocol: what every backend (diffusers, BFL's API, ...) offers.

An engine knows nothing of HTTP, jobs or storage: decoded reference images in,
PIL images out, with a progress callback that can ask it to stop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from PIL import Image

# Called after each denoising step with (step, total), step counting from 1.
# Returning True asks the engine to stop; it then raises EditCancelled.
ProgressCallback = Callable[[int, int], bool]


@dataclass(frozen=True)
class EditRequest:
    prompt: str
    images: list[Image.Image]  # RGB references, already decoded and bounded
    width: int
    height: int
    seed: int = 0
    steps: int | None = None  # None: the engine's default for its model
    guidance: float | None = None
    output_format: str = "jpeg"  # only hosted engines care; local ones return pixels
    num_images: int = 1  # images to make from these inputs, each from its own noise
    extra: dict = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    """A GPU engine runs one job at a time; one that forwards jobs to a hosted API can run many."""

    kind: str  # "diffusers", "bfl", ...
    max_references: int
    concurrency: int  # how many jobs it may run at once
    # Engines with the same key share one bound of `concurrency` jobs (e.g. the
    # BFL models forwarded with one API key); an engine alone has a key of its own.
    capacity_key: str

    @property
    def loaded(self) -> bool: ...

    def load(self) -> None:
        """Load weights / open connections. Idempotent."""

    def edit(self, request: EditRequest, progress: ProgressCallback | None = None) -> list[Image.Image]:
        """Run one edit: `request.num_images` images. Raises EditCancelled when progress asked to stop."""
