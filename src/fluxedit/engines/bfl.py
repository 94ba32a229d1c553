"""FLUX.2 [pro], [flex] and [max] through Black Forest Labs' hosted API.

The weights of these models are not public, so this engine forwards each edit to
BFL with the operator's key and brings the result back as pixels, like any engine.
BFL's protocol (submit, poll) is `bfl_client`'s, the result's download
`bfl_results`', retries and errors `bfl_errors`'; this module is the engine around
them: references and the request body, the bound on tasks in flight, progress and
stop requests.

- References: [pro], [flex] and [max] take up to 8 reference images through the API
  (10 only in BFL's playground).
- BFL has no cancel: once a task is forwarded it runs to completion and is billed,
  so a stop request is honoured only before the submit.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import threading
from urllib.parse import urlsplit

from PIL import Image

from fluxedit.config import Settings
from fluxedit.engines.base import EditRequest, ProgressCallback
from fluxedit.engines.bfl_client import BflClient
from fluxedit.engines.bfl_errors import UpstreamError
from fluxedit.engines.capabilities import BFL_MAX_REFERENCES
from fluxedit.errors import EditCancelled, InvalidInput, ModelUnavailable
from fluxedit.images.decode import encode_image
from fluxedit.netpolicy import Resolver

__all__ = ["BflEngine", "MODELS", "MAX_REFERENCES", "make_slots"]

logger = logging.getLogger(__name__)

MODELS: dict[str, str] = {
    "flux-2-pro": "FLUX.2 [pro]",
    "flux-2-flex": "FLUX.2 [flex]",
    "flux-2-max": "FLUX.2 [max]",
}
MAX_REFERENCES = BFL_MAX_REFERENCES
PROGRESS_TOTAL = 100  # progress is reported as (percent, 100)

_IMAGE_FIELDS = ("input_image", *(f"input_image_{n}" for n in range(2, MAX_REFERENCES + 1)))


def make_slots(settings: Settings) -> threading.BoundedSemaphore:
    """The bound on tasks in flight at BFL; share one among the engines of one key."""
    return threading.BoundedSemaphore(settings.bfl_max_concurrent)


class BflEngine:
    """One of FLUX.2 [pro]/[flex]/[max], forwarded to BFL's API.

    `slots` bounds the tasks in flight; pass the same one (see `make_slots`) to every
    BflEngine with the same `capacity_key`, else each engine keeps its own bound.
    `resolver` replaces getaddrinfo for result hosts.
    """

    kind = "bfl"
    max_references = MAX_REFERENCES

    def __init__(
        self,
        model: str,
        settings: Settings,
        *,
        base_url: str | None = None,
        slots: threading.BoundedSemaphore | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        if model not in MODELS:
            known = ", ".join(MODELS)
            raise ModelUnavailable(f"BFL model {model!r} is not one fluxedit forwards; use one of {known}.")
        self.model = model
        self.name = MODELS[model]
        self._settings = settings
        self._bfl = BflClient(settings, base_url, resolver=resolver)
        self._slots = slots if slots is not None else make_slots(settings)
        # Jobs a LocalDispatcher runs at once for this engine: the work happens at BFL.
        self.concurrency = settings.bfl_max_concurrent

    @property
    def base_url(self) -> str:
        return self._bfl.base_url

    @property
    def capacity_key(self) -> str:
        """Equal for engines that share one bound on tasks in flight: one API, one key.

        Made of the base URL and a hash of the key, never the key itself.
        """
        parts = urlsplit(self._bfl.base_url)
        key = (self._settings.bfl_api_key or "").encode()
        return f"bfl {parts.scheme.lower()}://{parts.netloc.lower()}{parts.path} {hashlib.sha256(key).hexdigest()[:16]}"

    @property
    def loaded(self) -> bool:
        """True once a key is configured: there are no weights to load."""
        return bool(self._settings.bfl_api_key)

    def load(self) -> None:
        if not self._settings.bfl_api_key:
            raise ModelUnavailable(
                f"{self.name} is served through Black Forest Labs' API and no BFL API key is configured; "
                "set FLUXEDIT_BFL_API_KEY."
            )
        self._bfl.open()

    def close(self) -> None:
        self._bfl.close()

    def edit(self, request: EditRequest, progress: ProgressCallback | None = None) -> list[Image.Image]:
        """Forward one edit, one BFL task per image (seeds seed, seed+1, ...); progress is reported
        as (percent, 100) over all of them, 0 meaning not yet forwarded.

        A stop request (progress returning True) is honoured until a task is submitted;
        after that BFL has no cancel, so that task runs to its end (later ones are not sent).
        """
        self.check_references(len(request.images))
        self.load()
        body = self._build_body(request)
        report = progress or (lambda step, total: False)
        images = []
        for n in range(request.num_images):
            task_body = {**body, "seed": request.seed + n}
            images.append(self._one_task(task_body, _Share(report, n, request.num_images)))
        report(PROGRESS_TOTAL, PROGRESS_TOTAL)
        return images

    def _one_task(self, body: dict, report: ProgressCallback) -> Image.Image:
        self._acquire_slot(report)
        try:
            if report(0, PROGRESS_TOTAL):
                raise EditCancelled("The job was cancelled before it was forwarded to Black Forest Labs.")
            task = self._bfl.submit(self.model, body)
            sample_url = self._bfl.wait(task, _PollProgress(task.id, report))
        finally:
            self._slots.release()
        return self._decode(self._bfl.download(sample_url))

    def check_references(self, count: int) -> None:
        if count > MAX_REFERENCES:
            raise InvalidInput(
                f"{self.name} through Black Forest Labs takes at most {MAX_REFERENCES} reference images; "
                f"{count} were given.",
                field="image_urls",
            )

    def _build_body(self, request: EditRequest) -> dict:
        body: dict = {
            "prompt": request.prompt,
            "width": request.width,
            "height": request.height,
            "seed": request.seed,
            "output_format": request.output_format,
        }
        for name, image in zip(_IMAGE_FIELDS, request.images):
            body[name] = _encode_reference(image)
        if self.model == "flux-2-flex":
            if request.steps is not None:
                body["steps"] = request.steps
            if request.guidance is not None:
                body["guidance"] = request.guidance
        tolerance = request.extra.get("safety_tolerance")
        if tolerance is not None:
            if not isinstance(tolerance, int) or isinstance(tolerance, bool) or not 0 <= tolerance <= 5:
                raise InvalidInput("safety_tolerance must be an integer from 0 to 5.", field="safety_tolerance")
            body["safety_tolerance"] = tolerance
        upsampling = request.extra.get("prompt_upsampling")
        if isinstance(upsampling, bool):
            body["prompt_upsampling"] = upsampling
        return body

    def _acquire_slot(self, report: ProgressCallback) -> None:
        # Wait for a free slot, still honouring a stop request while waiting.
        while not self._slots.acquire(timeout=1.0):
            if report(0, PROGRESS_TOTAL):
                raise EditCancelled("The job was cancelled before it was forwarded to Black Forest Labs.")

    def _decode(self, data: bytes) -> Image.Image:
        try:
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > self._settings.max_image_pixels:
                raise UpstreamError(
                    f"Black Forest Labs' result has {image.width}x{image.height} pixels, over the configured limit."
                )
            image.load()
        except (OSError, Image.DecompressionBombError, SyntaxError):
            raise UpstreamError("Black Forest Labs' result is not a readable image.") from None
        return image.convert("RGB")


class _Share:
    """Task `index` of `count`: its (percent, 100) reported as its share of the whole edit."""

    def __init__(self, report: ProgressCallback, index: int, count: int) -> None:
        self.report, self.index, self.count = report, index, count

    def __call__(self, step: int, total: int) -> bool:
        return self.report((self.index * total + step) // self.count, total)


class _PollProgress:
    """BFL's progress of a running task, reported as a rising (percent, 100)."""

    def __init__(self, task_id: str, report: ProgressCallback) -> None:
        self.task_id, self.report = task_id, report
        self.step = 1
        self.stop_logged = False

    def __call__(self, progress: object) -> None:
        self.step = max(self.step, _percent(progress))
        if self.report(self.step, PROGRESS_TOTAL) and not self.stop_logged:
            self.stop_logged = True
            logger.info("stop requested for BFL task %s; BFL has no cancel, so it runs to its end", self.task_id)


def _encode_reference(image: Image.Image) -> str:
    return base64.b64encode(encode_image(image, "jpeg")).decode("ascii")


def _percent(progress: object) -> int:
    if isinstance(progress, (int, float)) and not isinstance(progress, bool):
        fraction = progress / 100 if progress > 1 else progress
        return min(PROGRESS_TOTAL - 1, max(1, int(fraction * PROGRESS_TOTAL)))
    return 1
