"""FLUX.2 [pro], [flex] and [max] through Black Forest Labs' hosted API.

The weights of these models are not public, so this engine forwards each edit to
BFL with the operator's key and brings the result back as pixels, like any engine.

BFL's protocol, as confirmed in BFL's documentation (docs.bfl.ai / docs.bfl.ml /
help.bfl.ai pages found with the search tool):

- Submit: ``POST {base}/v1/flux-2-pro`` (likewise ``flux-2-flex``, ``flux-2-max``)
  with header ``x-key: <key>`` and a JSON body: ``prompt`` (required),
  ``input_image``, ``input_image_2`` ... ``input_image_8`` (each a URL or base64),
  ``seed``, ``width`` and ``height`` (each at least 64), ``safety_tolerance``
  (0..5, default 2), ``output_format`` (``jpeg`` | ``png``), ``webhook_url``,
  ``webhook_secret``; [flex] also takes ``steps``, ``guidance`` and
  ``prompt_upsampling``. Answer: ``{id, polling_url, cost, input_mp, output_mp}``.
- Base URLs: ``https://api.bfl.ai`` (global, fails over between clusters),
  ``https://api.eu.bfl.ai`` and ``https://api.us.bfl.ai``. The answer's
  ``polling_url`` must be used as given: it points at the cluster that took the
  task, e.g. ``https://api.eu2.bfl.ai/v1/get_result?id=...``.
- Poll: ``GET polling_url`` (``/v1/get_result?id=``) with ``x-key`` answers
  ``{id, status, result, progress, details, preview}``; ``status`` is one of
  ``Pending``, ``Ready``, ``Error``, ``Request Moderated`` (input flagged before
  processing), ``Content Moderated`` (output flagged), ``Task not found`` (unknown
  or expired). Moderated answers carry ``result: null`` and reasons in ``details``.
- Results: generated images are served from delivery URLs under
  ``delivery.*.bfl.ai`` that expire after 10 minutes; download them promptly.
- HTTP errors: 400/422 bad request, 402 insufficient credits, 403 key lacks access,
  429 concurrency limit exceeded (back off and retry once a task finishes), 500,
  503 (retry after a moment).
- References: [pro], [flex] and [max] take up to 8 reference images through the API
  (10 only in BFL's playground).

Not found in BFL's own reference pages, taken from elsewhere:

- ``result.sample`` as the field holding the image URL comes from BFL's skill
  guides and third-party clients; the get_result schema types ``result`` as any.
- The limit of 24 active tasks per key is stated in BFL's published "bfl-api"
  skill (rate-limiting reference), not in the API reference pages.
- ``Failed`` is not a documented status; it is treated like ``Error`` in case.
- No cancel endpoint and no idempotency key were found: once a task is forwarded it
  runs to completion and is billed, so a stop request is honoured only before the
  submit, and a submit is retried only when the connection never opened.
"""

from __future__ import annotations

import base64
import functools
import io
import ipaddress
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urljoin, urlsplit

import httpx
from PIL import Image

from fluxedit.config import Settings
from fluxedit.engines.base import EditRequest, ProgressCallback
from fluxedit.errors import EditCancelled, FluxeditError, InvalidInput, ModelUnavailable
from fluxedit.images.decode import encode_image
from fluxedit.netpolicy import OutboundForbidden, check_address, is_allowed, system_resolver

logger = logging.getLogger(__name__)
T = TypeVar("T")

MODELS: dict[str, str] = {
    "flux-2-pro": "FLUX.2 [pro]",
    "flux-2-flex": "FLUX.2 [flex]",
    "flux-2-max": "FLUX.2 [max]",
}
REGION_URLS: dict[str, str] = {
    "global": "https://api.bfl.ai",
    "eu": "https://api.eu.bfl.ai",
    "us": "https://api.us.bfl.ai",
}
MAX_REFERENCES = 8
PROGRESS_TOTAL = 100  # progress is reported as (percent, 100)

_IMAGE_FIELDS = ("input_image", *(f"input_image_{n}" for n in range(2, MAX_REFERENCES + 1)))
_MODERATED = {"Request Moderated", "Content Moderated"}
_FAILED = {"Error", "Failed"}
_RETRY_STATUS = {502, 503}  # gateway/maintenance answers: the task was not taken
_MAX_BACKOFF_S = 5.0
_MAX_REDIRECTS = 3
_MAX_DETAIL_CHARS = 300
_TIMEOUT = httpx.Timeout(60.0, connect=10.0)


class UpstreamError(FluxeditError):
    """BFL could not do the edit. Codes: upstream_failed, upstream_busy,
    upstream_unreachable, upstream_auth, upstream_timeout, content_moderated."""

    code = "upstream_failed"
    status = 502


def make_slots(settings: Settings) -> threading.BoundedSemaphore:
    """The bound on tasks in flight at BFL; share one among the engines of one key."""
    return threading.BoundedSemaphore(settings.bfl_max_concurrent)


def check_result_address(host: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address, allow: list[str]) -> None:
    """Refuse a result host that resolves inside the network, unless `allow` covers it.

    The decision is `fluxedit.netpolicy.check_address`'s, with `allow` read as
    `Settings.fetch_allow` is for reference URLs; only the error differs: a bad
    result URL is BFL's failure, not the caller's.
    """
    try:
        check_address(host, address, allow)
    except OutboundForbidden:
        raise UpstreamError(
            f"BFL's result URL points at {host} ({address}), an address inside the network; "
            "fluxedit refused to fetch it (allow it with FLUXEDIT_FETCH_ALLOW if it is a trusted proxy).",
        ) from None


class BflEngine:
    """One of FLUX.2 [pro]/[flex]/[max], forwarded to BFL's API.

    `slots` bounds the tasks in flight; pass the same one (see `make_slots`) to every
    BflEngine that uses the same key, else each engine keeps its own bound.
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
    ) -> None:
        if model not in MODELS:
            known = ", ".join(MODELS)
            raise ModelUnavailable(f"BFL model {model!r} is not one fluxedit forwards; use one of {known}.")
        self.model = model
        self.name = MODELS[model]
        self._settings = settings
        self._base_url = (base_url or settings.bfl_base_url or REGION_URLS[settings.bfl_region]).rstrip("/")
        self._slots = slots if slots is not None else make_slots(settings)
        # Jobs a LocalDispatcher runs at once for this engine: the work happens at BFL.
        self.concurrency = settings.bfl_max_concurrent
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return self._base_url

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
        with self._lock:
            if self._client is None:
                # No default auth header: the key goes only to BFL's API, never to result URLs.
                self._client = httpx.Client(timeout=_TIMEOUT, follow_redirects=False)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def edit(self, request: EditRequest, progress: ProgressCallback | None = None) -> list[Image.Image]:
        """Forward one edit; progress is reported as (percent, 100), 0 meaning not yet forwarded.

        A stop request (progress returning True) is honoured until the task is submitted;
        after that BFL has no cancel, so the task runs to its end and is returned.
        """
        self.check_references(len(request.images))
        self.load()
        body = self._build_body(request)
        report = progress or (lambda step, total: False)
        self._acquire_slot(report)
        try:
            if report(0, PROGRESS_TOTAL):
                raise EditCancelled("The job was cancelled before it was forwarded to Black Forest Labs.")
            task_id, polling_url = self._submit(body)
            sample_url = self._wait(task_id, polling_url, report)
        finally:
            self._slots.release()
        image = self._download(sample_url)
        report(PROGRESS_TOTAL, PROGRESS_TOTAL)
        return [image]

    def check_references(self, count: int) -> None:
        if count > MAX_REFERENCES:
            raise InvalidInput(
                f"{self.name} through Black Forest Labs takes at most {MAX_REFERENCES} reference images; "
                f"{count} were given.",
                field="image_urls",
            )

    # --- the request -------------------------------------------------------------

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

    # --- talking to BFL ---------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {"x-key": self._settings.bfl_api_key or "", "accept": "application/json"}

    def _submit(self, body: dict) -> tuple[str, str]:
        s = self._settings
        url = f"{self._base_url}/v1/{self.model}"
        busy_until = time.monotonic() + s.bfl_busy_retry_s
        busy_tries = failures = 0
        while True:
            try:
                response = self._http().post(url, json=body, headers=self._headers())
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                # The connection never opened, so no task exists yet: safe to retry.
                failures += 1
                if failures > s.bfl_network_retries:
                    raise self._unreachable(exc, failures) from None
                time.sleep(self._backoff(failures))
                continue
            except httpx.TransportError as exc:
                # The request may have reached BFL; retrying could start (and bill) a second task.
                raise self._unreachable(exc, failures + 1) from None
            if response.status_code == 429:
                busy_tries += 1
                wait = _retry_after(response) or self._backoff(busy_tries)
                if time.monotonic() + wait > busy_until:
                    raise UpstreamError(
                        f"Black Forest Labs is at its limit of tasks in flight for the operator's key and stayed "
                        f"busy for {s.bfl_busy_retry_s:g} s; try again later.",
                        code="upstream_busy",
                        status=503,
                    )
                logger.info("BFL answered 429 to a %s submit; retrying in %.2f s", self.model, wait)
                time.sleep(wait)
                continue
            if response.status_code in _RETRY_STATUS:
                failures += 1
                if failures > s.bfl_network_retries:
                    raise self._unreachable(f"HTTP {response.status_code}", failures)
                time.sleep(self._backoff(failures))
                continue
            self._raise_for_status(response, "submit")
            data = self._json(response)
            task_id, polling_url = data.get("id"), data.get("polling_url")
            if not isinstance(task_id, str) or not isinstance(polling_url, str):
                raise UpstreamError("Black Forest Labs accepted the task but its answer lacked id or polling_url.")
            logger.info("forwarded a %s edit to BFL as task %s", self.model, task_id)
            return task_id, self._checked_polling_url(polling_url)

    def _wait(self, task_id: str, polling_url: str, report: ProgressCallback) -> str:
        s = self._settings
        deadline = time.monotonic() + s.bfl_timeout_s
        delay = s.bfl_backoff_s
        step = 1
        stop_logged = False
        while True:
            time.sleep(delay)
            data = self._poll(polling_url)
            status = data.get("status")
            if status == "Ready":
                result = data.get("result")
                sample = result.get("sample") if isinstance(result, dict) else None
                if not isinstance(sample, str):
                    raise UpstreamError("Black Forest Labs reported the task ready but gave no result URL.")
                return sample
            if status in _MODERATED:
                raise self._moderated(status, data.get("details"))
            if status in _FAILED:
                detail = self._sanitise(data.get("details") or data.get("error") or "no details given")
                raise UpstreamError(f"Black Forest Labs could not finish the edit ({status}): {detail}")
            if status == "Task not found":
                raise UpstreamError("Black Forest Labs no longer knows the task (unknown or expired).")
            step = max(step, _percent(data.get("progress")))
            if report(step, PROGRESS_TOTAL) and not stop_logged:
                stop_logged = True
                logger.info("stop requested for BFL task %s; BFL has no cancel, so it runs to its end", task_id)
            if time.monotonic() > deadline:
                raise UpstreamError(
                    f"Black Forest Labs did not finish the task within {s.bfl_timeout_s:g} s.",
                    code="upstream_timeout",
                    status=504,
                )
            delay = min(delay * 1.5, max(_MAX_BACKOFF_S, s.bfl_backoff_s))

    def _poll(self, polling_url: str) -> dict:
        failures = 0
        while True:
            response = self._retrying(lambda: self._http().get(polling_url, headers=self._headers()), polling_url)
            if response.status_code == 429 or response.status_code in _RETRY_STATUS:
                failures += 1
                if failures > self._settings.bfl_network_retries:
                    raise self._unreachable(f"HTTP {response.status_code}", failures, polling_url)
                wait = min(_retry_after(response) or self._backoff(failures), _MAX_BACKOFF_S)
                time.sleep(wait)
                continue
            self._raise_for_status(response, "poll")
            return self._json(response)

    def _download(self, url: str) -> Image.Image:
        """Fetch the result (no key sent), within its 10-minute life, capped in bytes."""
        for _ in range(_MAX_REDIRECTS + 1):
            self._check_result_url(url)
            data, location = self._retrying(functools.partial(self._fetch_result, url), url)
            if location is None:
                return self._decode(data)
            url = urljoin(url, location)
        raise UpstreamError(f"Black Forest Labs' result URL redirected more than {_MAX_REDIRECTS} times.")

    def _fetch_result(self, url: str) -> tuple[bytes, str | None]:
        """(body, None), or (b"", location) for a redirect."""
        with self._http().stream("GET", url) as response:
            if response.is_redirect and "location" in response.headers:
                return b"", response.headers["location"]
            if response.status_code != 200:
                raise UpstreamError(
                    f"Black Forest Labs' result URL answered HTTP {response.status_code} "
                    "(results expire 10 minutes after the task finishes)."
                )
            return self._read_capped(response), None

    def _retrying(self, call: Callable[[], T], url: str) -> T:
        """Run an idempotent call (poll, download), retrying network errors a bounded number of times."""
        failures = 0
        while True:
            try:
                return call()
            except httpx.TransportError as exc:
                failures += 1
                if failures > self._settings.bfl_network_retries:
                    raise self._unreachable(exc, failures, url) from None
                time.sleep(self._backoff(failures))

    def _read_capped(self, response: httpx.Response) -> bytes:
        cap = self._settings.max_image_bytes
        buf = bytearray()
        for chunk in response.iter_bytes():
            buf += chunk
            if len(buf) > cap:
                raise UpstreamError(f"Black Forest Labs' result is larger than the {cap}-byte limit.")
        return bytes(buf)

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

    # --- guards and errors --------------------------------------------------------------

    def _http(self) -> httpx.Client:
        if self._client is None:
            self.load()
        assert self._client is not None
        return self._client

    def _checked_polling_url(self, polling_url: str) -> str:
        """The key goes only to the configured API's origin or to https hosts under bfl.ai."""
        url = urljoin(self._base_url + "/", polling_url)
        parts, base = urlsplit(url), urlsplit(self._base_url)
        host = (parts.hostname or "").lower()
        same_origin = (parts.scheme, parts.netloc.lower()) == (base.scheme, base.netloc.lower())
        bfl_host = parts.scheme == "https" and (host == "bfl.ai" or host.endswith(".bfl.ai"))
        if not (same_origin or bfl_host):
            raise UpstreamError(
                f"Black Forest Labs answered a polling URL on an unexpected host ({host or 'none'}); "
                "fluxedit did not send the key there."
            )
        return url

    def _check_result_url(self, url: str) -> None:
        parts = urlsplit(url)
        host = parts.hostname
        if parts.scheme not in ("http", "https") or not host:
            raise UpstreamError("Black Forest Labs gave a result URL that is not an http(s) URL.")
        allow = self._settings.fetch_allow
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            addresses = [ipaddress.ip_address(name) for name in system_resolver(host, port)]
        except (OSError, ValueError):
            raise self._unreachable("host name not resolved", 1, url) from None
        for address in addresses:
            check_result_address(host, address, allow)
        if parts.scheme != "https" and not all(is_allowed(host, a, allow) for a in addresses):
            raise UpstreamError(
                f"Black Forest Labs gave a result URL on {host} that is not https; fluxedit refused it."
            )

    def _raise_for_status(self, response: httpx.Response, what: str) -> None:
        code = response.status_code
        if code < 400:
            return
        detail = self._sanitise(_error_detail(response))
        if code in (401, 403):
            raise UpstreamError(
                f"Black Forest Labs refused the operator's API key (HTTP {code}) on {what}; "
                "the operator must check FLUXEDIT_BFL_API_KEY.",
                code="upstream_auth",
            )
        if code == 402:
            raise UpstreamError(
                "Black Forest Labs refused the task: the operator's account is out of credits (HTTP 402)."
            )
        raise UpstreamError(f"Black Forest Labs refused the {what} (HTTP {code}): {detail}")

    def _moderated(self, status: str, details: object) -> UpstreamError:
        stage = "the prompt or reference images" if status == "Request Moderated" else "the generated image"
        message = f"Black Forest Labs' content moderation refused {stage} ({status}); no image was produced."
        if details:
            message += f" Reasons given: {self._sanitise(details)}"
        return UpstreamError(message, code="content_moderated", status=422)

    def _unreachable(self, cause: object, tries: int, url: str | None = None) -> UpstreamError:
        host = urlsplit(url or self._base_url).netloc
        reason = type(cause).__name__ if isinstance(cause, Exception) else str(cause)
        return UpstreamError(
            f"Black Forest Labs could not be reached at {self._sanitise(host)} after {tries} "
            f"{'try' if tries == 1 else 'tries'} ({self._sanitise(reason)}).",
            code="upstream_unreachable",
        )

    def _sanitise(self, value: object) -> str:
        """Text from BFL made safe to show: compact, printable, short, and never the key."""
        text = value if isinstance(value, str) else json.dumps(value, default=str, separators=(",", ":"))
        key = self._settings.bfl_api_key
        if key:
            text = text.replace(key, "[redacted]")
        text = re.sub(r"\s+", " ", re.sub(r"[^\x20-\x7e\s]", "", text)).strip()
        if len(text) > _MAX_DETAIL_CHARS:
            text = text[: _MAX_DETAIL_CHARS - 3] + "..."
        if key:  # truncation could not recreate it, but a cut key prefix is still a secret
            text = text.replace(key[: max(8, len(key) // 2)], "[redacted]")
        return text

    @staticmethod
    def _json(response: httpx.Response) -> dict:
        try:
            data = response.json()
        except ValueError:
            raise UpstreamError(
                f"Black Forest Labs answered HTTP {response.status_code} with a body that is not JSON."
            ) from None
        if not isinstance(data, dict):
            raise UpstreamError("Black Forest Labs answered with JSON that is not an object.")
        return data

    def _backoff(self, attempt: int) -> float:
        return min(self._settings.bfl_backoff_s * 2 ** (attempt - 1), max(_MAX_BACKOFF_S, self._settings.bfl_backoff_s))


def _encode_reference(image: Image.Image) -> str:
    return base64.b64encode(encode_image(image, "jpeg")).decode("ascii")


def _percent(progress: object) -> int:
    if isinstance(progress, (int, float)) and not isinstance(progress, bool):
        fraction = progress / 100 if progress > 1 else progress
        return min(PROGRESS_TOTAL - 1, max(1, int(fraction * PROGRESS_TOTAL)))
    return 1


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["retry-after"]))
    except (KeyError, ValueError):
        return None


def _error_detail(response: httpx.Response) -> object:
    try:
        data = response.json()
    except ValueError:
        return response.text[:_MAX_DETAIL_CHARS] or "no details given"
    if isinstance(data, dict):
        return data.get("detail") or data.get("message") or data.get("error") or data
    return data
