"""FLUX.2 on Hugging Face diffusers: [dev], [klein] 4B/9B and [klein] 9B-KV.

`Flux2Engine` wraps one diffusers pipeline; it does not re-implement it. The
pipeline class comes from the model's own model_index.json, the weights from a
local folder or a Hugging Face repo id, and each edit is one pipeline call with
the references as a list of images.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import torch
from diffusers import DiffusionPipeline, Flux2KleinKVPipeline, Flux2KleinPipeline, Flux2Pipeline
from PIL import Image

from fluxedit.config import Settings
from fluxedit.engines.base import EditRequest, ProgressCallback
from fluxedit.engines.capabilities import FLUX2_MAX_REFERENCES
from fluxedit.engines.speed import (
    SpeedOptions,
    apply_speed_options,
    configure_vae_tiling,
    pipeline_device,
    warm_up,
)
from fluxedit.engines.weights import LOAD_ERRORS, load_failure_reason, model_unavailable, read_model_index
from fluxedit.errors import EditCancelled, InvalidInput

# model_index.json `_class_name` -> the pipeline that runs it.
PIPELINE_CLASSES: dict[str, type[DiffusionPipeline]] = {
    "Flux2Pipeline": Flux2Pipeline,  # [dev]
    "Flux2KleinPipeline": Flux2KleinPipeline,  # [klein] 4B / 9B and their -base models
    "Flux2KleinKVPipeline": Flux2KleinKVPipeline,  # [klein] 9B-KV
}


@dataclass(frozen=True)
class Flux2Options:
    """How to run the model. None means: decide from the machine / the model."""

    device: str | None = None  # default: cuda if available, else cpu
    dtype: torch.dtype | None = None  # default: bfloat16 on cuda (unless speed.bf16 is off), float32 elsewhere
    cpu_offload: bool = False  # keep only the running component on the GPU
    default_steps: int | None = None  # default: the model's own (see model_defaults)
    guidance: float | None = None  # default: the model's own
    speed: SpeedOptions = field(default_factory=SpeedOptions)  # see engines/speed.py

    @classmethod
    def from_settings(cls, settings: Settings) -> Flux2Options:
        return cls(
            device=settings.device,
            cpu_offload=settings.cpu_offload,
            default_steps=settings.default_steps,
            guidance=settings.guidance_scale,
            speed=SpeedOptions.from_settings(settings),
        )


@dataclass(frozen=True)
class ModelDefaults:
    steps: int
    guidance: float | None  # None: the pipeline takes no guidance


def model_defaults(pipe: DiffusionPipeline) -> ModelDefaults:
    """Steps and guidance as the model cards use them."""
    if isinstance(pipe, Flux2KleinKVPipeline):
        return ModelDefaults(steps=4, guidance=None)  # step-distilled, no CFG
    if isinstance(pipe, Flux2KleinPipeline):
        if pipe.config.get("is_distilled", False):
            return ModelDefaults(steps=4, guidance=1.0)  # [klein] 4B/9B
        return ModelDefaults(steps=50, guidance=4.0)  # [klein] base: real CFG
    return ModelDefaults(steps=50, guidance=4.0)  # [dev]: embedded guidance


def resolve_placement(options: Flux2Options) -> tuple[str, torch.dtype]:
    device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = options.dtype or options.speed.dtype_for(device)
    return device, dtype


def pipeline_class_for(source: str) -> type[DiffusionPipeline]:
    class_name = read_model_index(source).get("_class_name")
    if class_name not in PIPELINE_CLASSES:
        raise model_unavailable(
            source, f"it is a {class_name or 'unknown'} model; this engine runs {', '.join(PIPELINE_CLASSES)}"
        )
    return PIPELINE_CLASSES[class_name]


def quiet_libraries() -> None:
    """Our own progress and errors are what a user reads: diffusers' and transformers' bars and
    notices are noise, unless fluxedit itself logs at DEBUG (`fluxedit -v`)."""
    if logging.getLogger("fluxedit").isEnabledFor(logging.DEBUG):
        return
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.set_verbosity_error()
        library.disable_progress_bar()
    logging.getLogger("torchao").setLevel(logging.ERROR)


def _first_set(*values):
    return next(value for value in values if value is not None)


class _Stop(Exception):
    """Raised from the step callback to leave the pipeline at once."""


class Flux2Engine:
    """One FLUX.2 model on diffusers.

    Loads lazily (`load()`, `loaded`). Once loaded, `pipe` is the diffusers
    pipeline itself, so speed options (compile, quantization, caching) can be
    applied to it from outside without this class knowing them.
    """

    kind = "diffusers"
    max_references = FLUX2_MAX_REFERENCES
    concurrency = 1  # a pipeline runs one edit at a time

    def __init__(self, source: str, options: Flux2Options | None = None) -> None:
        self.source = source
        self.capacity_key = f"diffusers:{id(self)}"  # one GPU pipeline of its own
        quiet_libraries()
        self.options = options or Flux2Options()
        self.pipe: DiffusionPipeline | None = None
        self._lock = threading.Lock()  # one load, one edit at a time: a pipeline is not thread-safe

    @classmethod
    def from_pipeline(
        cls, pipe: DiffusionPipeline, options: Flux2Options | None = None, *, source: str = "<in-memory>"
    ) -> Flux2Engine:
        """An engine around a pipeline built in memory (already on its device): speed options and warm-up applied."""
        engine = cls(source, options)
        engine.pipe = engine._prepare(pipe, pipeline_device(pipe))
        return engine

    def __repr__(self) -> str:
        return f"Flux2Engine({self.source!r})"

    @property
    def loaded(self) -> bool:
        return self.pipe is not None

    def load(self) -> None:
        with self._lock:
            if self.pipe is None:
                self.pipe = self._load_pipeline()

    def _load_pipeline(self) -> DiffusionPipeline:
        pipeline_class = pipeline_class_for(self.source)
        device, dtype = resolve_placement(self.options)
        try:
            pipe = pipeline_class.from_pretrained(self.source, dtype=dtype)
        except LOAD_ERRORS as exc:
            raise model_unavailable(self.source, load_failure_reason(exc)) from None
        if self.options.cpu_offload and device != "cpu":
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.to(device)
        return self._prepare(pipe, device)

    def _prepare(self, pipe: DiffusionPipeline, device: str | torch.device) -> DiffusionPipeline:
        pipe.set_progress_bar_config(disable=True)  # progress goes through our callback
        speed = self.options.speed
        apply_speed_options(pipe, speed, device=device)
        if speed.warms_up_on(device):
            warm_up(pipe)  # compiles now, so the first request is not the slow one
        return pipe

    @property
    def defaults(self) -> ModelDefaults:
        """The model's default steps and guidance (loads the model)."""
        self.load()
        return model_defaults(self.pipe)

    def edit(self, request: EditRequest, progress: ProgressCallback | None = None) -> list[Image.Image]:
        """Run one edit; raises EditCancelled right after the step at which progress returned True."""
        self.load()
        self._check(request)
        defaults = model_defaults(self.pipe)
        steps = _first_set(request.steps, self.options.default_steps, defaults.steps)
        kwargs = dict(
            image=list(request.images),
            prompt=request.prompt,
            width=request.width,
            height=request.height,
            num_inference_steps=steps,
            num_images_per_prompt=request.num_images,  # one batch; each image gets its own noise
            # A CPU generator gives the same noise for a seed on any device.
            generator=torch.Generator("cpu").manual_seed(request.seed),
        )
        if defaults.guidance is not None:
            kwargs["guidance_scale"] = _first_set(request.guidance, self.options.guidance, defaults.guidance)

        def on_step_end(pipe: DiffusionPipeline, index: int, timestep: torch.Tensor, tensors: dict) -> dict:
            if progress is not None and progress(index + 1, pipe.num_timesteps):
                # Setting pipe._interrupt would skip the remaining transformer
                # forwards but still decode the latents; raising skips both.
                raise _Stop(index + 1)
            return {}

        with self._lock:
            configure_vae_tiling(self.pipe, self.options.speed, width=request.width, height=request.height)
            try:
                images = self.pipe(**kwargs, callback_on_step_end=on_step_end).images
            except BaseException as exc:
                # The pipeline offloads its models (with cpu_offload) only when it finishes.
                self.pipe.maybe_free_model_hooks()
                if isinstance(exc, _Stop):
                    raise EditCancelled(f"The edit was cancelled after step {exc.args[0]} of {steps}.") from None
                raise
        return images

    def _check(self, request: EditRequest) -> None:
        count = len(request.images)
        if not 1 <= count <= self.max_references:
            raise InvalidInput(
                f"{count} reference images given; this model takes 1 to {self.max_references}.", field="image_urls"
            )
        multiple = self.pipe.vae_scale_factor * 2  # pixels per latent token side
        if request.width % multiple or request.height % multiple:
            raise InvalidInput(
                f"Output size {request.width}x{request.height}: each side must be a multiple of {multiple}.",
                field="image_size",
            )
