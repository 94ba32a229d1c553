"""Black Forest Labs' HTTP protocol: submit a task, poll it, download its result (`BflClient`).

BFL's protocol, as BFL's documentation (docs.bfl.ai, help.bfl.ai) gives it:

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

Not in BFL's API reference pages, but in its guides:

- ``result.sample`` as the field holding the image URL comes from BFL's skill
  guides and third-party clients; the get_result schema types ``result`` as any.
- The limit of 24 active tasks per key is stated in BFL's published "bfl-api"
  skill (rate-limiting reference), not in the API reference pages.
- ``Failed`` is not a documented status; it is treated like ``Error`` in case.
- BFL documents no cancel endpoint and no idempotency key: once a task is forwarded
  it runs to completion and is billed, so a submit is retried only when the connection
  never opened.

The key goes only to the configured API's origin or to https hosts under bfl.ai.
Result URLs are downloaded without it, through `fluxedit.netpolicy`'s pinned,
checked connection, as reference images are: `bfl_results`. What each failure
becomes, and which are retried: `bfl_errors`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from fluxedit import netpolicy
from fluxedit.config import Settings
from fluxedit.engines.bfl_errors import (
    MAX_BACKOFF_S,
    UpstreamError,
    backoff,
    json_object,
    moderated,
    raise_for_status,
    retry_after,
    retrying,
    sanitise,
    unreachable,
)
from fluxedit.engines.bfl_results import ResultDownloader
from fluxedit.netpolicy import Resolver

__all__ = ["BflClient", "BflTask", "REGION_URLS", "UpstreamError"]

logger = logging.getLogger(__name__)

REGION_URLS: dict[str, str] = {
    "global": "https://api.bfl.ai",
    "eu": "https://api.eu.bfl.ai",
    "us": "https://api.us.bfl.ai",
}

_MODERATED = {"Request Moderated", "Content Moderated"}
_FAILED = {"Error", "Failed"}
_RETRY_STATUS = {502, 503}  # gateway/maintenance answers: the task was not taken
_TIMEOUT = httpx.Timeout(60.0, connect=10.0)


@dataclass(frozen=True)
class BflTask:
    """A task BFL took: its id and the URL to poll it at (checked to get the key)."""

    id: str
    polling_url: str


class BflClient:
    """BFL's API at one base URL with the operator's key (both from `settings` unless given).

    `resolver` replaces getaddrinfo for result hosts. Thread-safe: engines call it
    from several jobs at once.
    """

    def __init__(self, settings: Settings, base_url: str | None = None, *, resolver: Resolver | None = None) -> None:
        self._settings = settings
        self.base_url = (base_url or settings.bfl_base_url or REGION_URLS[settings.bfl_region]).rstrip("/")
        self._api: httpx.Client | None = None
        self._results = ResultDownloader(settings, resolver or netpolicy.system_resolver, timeout=_TIMEOUT)
        self._lock = threading.Lock()

    def open(self) -> None:
        with self._lock:
            if self._api is None:
                # No default auth header: the key goes only to BFL's API, never to result URLs.
                self._api = httpx.Client(timeout=_TIMEOUT, follow_redirects=False)
                self._results.open()

    def close(self) -> None:
        with self._lock:
            if self._api is not None:
                self._api.close()
            self._api = None
            self._results.close()

    # --- submit and poll -----------------------------------------------------------

    def submit(self, model: str, body: dict) -> BflTask:
        """Forward one task; retried on 429 (for `bfl_busy_retry_s`) and while no connection opened."""
        s = self._settings
        url = f"{self.base_url}/v1/{model}"
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
                time.sleep(backoff(failures, s))
                continue
            except httpx.TransportError as exc:
                # The request may have reached BFL; retrying could start (and bill) a second task.
                raise self._unreachable(exc, failures + 1) from None
            if response.status_code == 429:
                busy_tries += 1
                wait = retry_after(response) or backoff(busy_tries, s)
                if time.monotonic() + wait > busy_until:
                    raise UpstreamError(
                        f"Black Forest Labs is at its limit of tasks in flight for the operator's key and stayed "
                        f"busy for {s.bfl_busy_retry_s:g} s; try again later.",
                        code="upstream_busy",
                        status=503,
                    )
                logger.info("BFL answered 429 to a %s submit; retrying in %.2f s", model, wait)
                time.sleep(wait)
                continue
            if response.status_code in _RETRY_STATUS:
                failures += 1
                if failures > s.bfl_network_retries:
                    raise self._unreachable(f"HTTP {response.status_code}", failures)
                time.sleep(backoff(failures, s))
                continue
            return self._accepted(model, response)

    def _accepted(self, model: str, response: httpx.Response) -> BflTask:
        raise_for_status(response, "submit", self._settings.bfl_api_key)
        data = json_object(response)
        task_id, polling_url = data.get("id"), data.get("polling_url")
        if not isinstance(task_id, str) or not isinstance(polling_url, str):
            raise UpstreamError("Black Forest Labs accepted the task but its answer lacked id or polling_url.")
        logger.info("forwarded a %s edit to BFL as task %s", model, task_id)
        return BflTask(task_id, self._checked_polling_url(polling_url))

    def wait(self, task: BflTask, on_pending: Callable[[object], None]) -> str:
        """Poll until the task ends; the URL of its result.

        `on_pending` gets BFL's `progress` of every poll that finds the task unfinished.
        """
        s = self._settings
        deadline = time.monotonic() + s.bfl_timeout_s
        delay = s.bfl_backoff_s
        while True:
            time.sleep(delay)
            data = self._poll(task.polling_url)
            sample = self._outcome(data)
            if sample is not None:
                return sample
            on_pending(data.get("progress"))
            if time.monotonic() > deadline:
                raise UpstreamError(
                    f"Black Forest Labs did not finish the task within {s.bfl_timeout_s:g} s.",
                    code="upstream_timeout",
                    status=504,
                )
            delay = min(delay * 1.5, max(MAX_BACKOFF_S, s.bfl_backoff_s))

    def _outcome(self, data: dict) -> str | None:
        """The result URL of a finished task, None while it runs; its failure raised."""
        status = data.get("status")
        if status == "Ready":
            result = data.get("result")
            sample = result.get("sample") if isinstance(result, dict) else None
            if not isinstance(sample, str):
                raise UpstreamError("Black Forest Labs reported the task ready but gave no result URL.")
            return sample
        if status in _MODERATED:
            raise moderated(status, data.get("details"), self._settings.bfl_api_key)
        if status in _FAILED:
            detail = self.sanitise(data.get("details") or data.get("error") or "no details given")
            raise UpstreamError(f"Black Forest Labs could not finish the edit ({status}): {detail}")
        if status == "Task not found":
            raise UpstreamError("Black Forest Labs no longer knows the task (unknown or expired).")
        return None

    def _poll(self, polling_url: str) -> dict:
        s = self._settings
        failures = 0
        while True:
            response = retrying(lambda: self._http().get(polling_url, headers=self._headers()), polling_url, s)
            if response.status_code == 429 or response.status_code in _RETRY_STATUS:
                failures += 1
                if failures > s.bfl_network_retries:
                    raise self._unreachable(f"HTTP {response.status_code}", failures, polling_url)
                wait = min(retry_after(response) or backoff(failures, s), MAX_BACKOFF_S)
                time.sleep(wait)
                continue
            raise_for_status(response, "poll", s.bfl_api_key)
            return json_object(response)

    # --- the result ----------------------------------------------------------------

    def download(self, url: str) -> bytes:
        """The result's bytes (no key sent), within its 10-minute life, capped in bytes (see `bfl_results`)."""
        return self._results.download(url)

    # --- plumbing --------------------------------------------------------------------

    def _http(self) -> httpx.Client:
        if self._api is None:
            self.open()
        assert self._api is not None
        return self._api

    def _headers(self) -> dict[str, str]:
        return {"x-key": self._settings.bfl_api_key or "", "accept": "application/json"}

    def _unreachable(self, cause: object, tries: int, url: str | None = None) -> UpstreamError:
        return unreachable(cause, tries, url or self.base_url, self._settings.bfl_api_key)

    def _checked_polling_url(self, polling_url: str) -> str:
        """The key goes only to the configured API's origin or to https hosts under bfl.ai."""
        url = urljoin(self.base_url + "/", polling_url)
        parts, base = urlsplit(url), urlsplit(self.base_url)
        host = (parts.hostname or "").lower()
        same_origin = (parts.scheme, parts.netloc.lower()) == (base.scheme, base.netloc.lower())
        bfl_host = parts.scheme == "https" and (host == "bfl.ai" or host.endswith(".bfl.ai"))
        if not (same_origin or bfl_host):
            raise UpstreamError(
                f"Black Forest Labs answered a polling URL on an unexpected host ({host or 'none'}); "
                "fluxedit did not send the key there."
            )
        return url

    def sanitise(self, value: object) -> str:
        """Text from BFL made safe to show: compact, printable, short, and never the key."""
        return sanitise(value, self._settings.bfl_api_key)
