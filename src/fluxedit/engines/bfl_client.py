"""Black Forest Labs' HTTP protocol: submit a task, poll it, download its result.

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
checked connection, as reference images are.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urljoin, urlsplit

import httpx

from fluxedit import netpolicy
from fluxedit.config import Settings
from fluxedit.errors import FluxeditError
from fluxedit.netpolicy import IPAddress, OutboundForbidden, Resolver

logger = logging.getLogger(__name__)
T = TypeVar("T")

REGION_URLS: dict[str, str] = {
    "global": "https://api.bfl.ai",
    "eu": "https://api.eu.bfl.ai",
    "us": "https://api.us.bfl.ai",
}

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


@dataclass(frozen=True)
class BflTask:
    """A task BFL took: its id and the URL to poll it at (checked to get the key)."""

    id: str
    polling_url: str


def check_result_address(host: str, address: IPAddress, allow: list[str]) -> None:
    """Refuse a result host that resolves inside the network, unless `allow` covers it.

    The decision is `fluxedit.netpolicy.check_address`'s, with `allow` read as
    `Settings.fetch_allow` is for reference URLs; only the error differs: a bad
    result URL is BFL's failure, not the caller's.
    """
    try:
        netpolicy.check_address(host, address, allow)
    except OutboundForbidden as exc:
        raise _result_refused(exc) from None


def _result_refused(exc: OutboundForbidden) -> UpstreamError:
    return UpstreamError(
        f"BFL's result URL points at {exc.host} ({exc.address}), an address inside the network; "
        "fluxedit refused to fetch it (allow it with FLUXEDIT_FETCH_ALLOW if it is a trusted proxy).",
    )


class BflClient:
    """BFL's API at one base URL with the operator's key (both from `settings` unless given).

    `resolver` replaces getaddrinfo for result hosts. Thread-safe: engines call it
    from several jobs at once.
    """

    def __init__(self, settings: Settings, base_url: str | None = None, *, resolver: Resolver | None = None) -> None:
        self._settings = settings
        self.base_url = (base_url or settings.bfl_base_url or REGION_URLS[settings.bfl_region]).rstrip("/")
        self._resolver = resolver or netpolicy.system_resolver
        self._api: httpx.Client | None = None
        self._results: httpx.Client | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
        with self._lock:
            if self._api is None:
                # No default auth header: the key goes only to BFL's API, never to result URLs.
                self._api = httpx.Client(timeout=_TIMEOUT, follow_redirects=False)
                self._results = httpx.Client(timeout=_TIMEOUT, **netpolicy.pinned_client_options())

    def close(self) -> None:
        with self._lock:
            for client in (self._api, self._results):
                if client is not None:
                    client.close()
            self._api = self._results = None

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
                logger.info("BFL answered 429 to a %s submit; retrying in %.2f s", model, wait)
                time.sleep(wait)
                continue
            if response.status_code in _RETRY_STATUS:
                failures += 1
                if failures > s.bfl_network_retries:
                    raise self._unreachable(f"HTTP {response.status_code}", failures)
                time.sleep(self._backoff(failures))
                continue
            return self._accepted(model, response)

    def _accepted(self, model: str, response: httpx.Response) -> BflTask:
        self._raise_for_status(response, "submit")
        data = self._json(response)
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
            delay = min(delay * 1.5, max(_MAX_BACKOFF_S, s.bfl_backoff_s))

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
            raise self._moderated(status, data.get("details"))
        if status in _FAILED:
            detail = self.sanitise(data.get("details") or data.get("error") or "no details given")
            raise UpstreamError(f"Black Forest Labs could not finish the edit ({status}): {detail}")
        if status == "Task not found":
            raise UpstreamError("Black Forest Labs no longer knows the task (unknown or expired).")
        return None

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

    # --- the result ----------------------------------------------------------------

    def download(self, url: str) -> bytes:
        """The result's bytes (no key sent), within its 10-minute life, capped in bytes.

        Each hop resolves its host once, checks every address and connects to a
        checked one, so a host cannot pass the check with one address and serve
        the download from another (DNS rebinding); retries reuse the addresses.
        """
        for _ in range(_MAX_REDIRECTS + 1):
            target, addresses = self._result_target(url)
            data, location = self._retrying(functools.partial(self._fetch_result, target, addresses), url)
            if location is None:
                return data
            url = self._redirected(target, location)
        raise UpstreamError(f"Black Forest Labs' result URL redirected more than {_MAX_REDIRECTS} times.")

    def _result_target(self, url: str) -> tuple[httpx.URL, list[IPAddress]]:
        """The result URL parsed, and the checked addresses to connect to for it."""
        scheme = netpolicy.url_scheme(url)
        if scheme not in netpolicy.SCHEMES:
            raise UpstreamError(
                f"Black Forest Labs gave a result URL that is not an http(s) URL ({scheme or 'none'}:)."
            )
        try:
            target = httpx.URL(url)
        except httpx.InvalidURL:
            raise UpstreamError("Black Forest Labs gave a result URL that is not a valid URL.") from None
        host = target.raw_host.decode("ascii")
        if not host:
            raise UpstreamError("Black Forest Labs gave a result URL that names no host.")
        allow = self._settings.fetch_allow
        try:
            addresses = netpolicy.checked_addresses(host, netpolicy.url_port(target), allow, self._resolver)
        except OutboundForbidden as exc:
            raise _result_refused(exc) from None
        except (OSError, ValueError):
            raise self._unreachable("host name not resolved", 1, url) from None
        if scheme != "https" and not all(netpolicy.is_allowed(host, a, allow) for a in addresses):
            raise UpstreamError(
                f"Black Forest Labs gave a result URL on {host} that is not https; fluxedit refused it."
            )
        return target, addresses

    def _redirected(self, url: httpx.URL, location: str) -> str:
        scheme = netpolicy.url_scheme(location)
        if scheme not in ("", *netpolicy.SCHEMES):  # "": relative, the page's own scheme
            raise UpstreamError(f"Black Forest Labs' result URL redirected to a {scheme}: URL; fluxedit refused it.")
        try:
            return str(url.join(location))
        except httpx.InvalidURL:
            raise UpstreamError("Black Forest Labs' result URL redirected to an invalid URL.") from None

    def _fetch_result(self, url: httpx.URL, addresses: list[IPAddress]) -> tuple[bytes, str | None]:
        """(body, None), or (b"", location) for a redirect; tries the checked addresses in turn."""
        client = self._result_http()
        last_error: httpx.ConnectError | None = None
        for address in addresses:
            try:
                response = client.send(netpolicy.pinned_request(client, url, address), stream=True)
            except httpx.ConnectError as exc:
                last_error = exc  # try the host's next address
                continue
            try:
                return self._read_result(response, url.raw_host.decode("ascii"))
            finally:
                response.close()
        assert last_error is not None  # checked_addresses gives at least one
        raise last_error  # a transport error: retried (with the same addresses) by _retrying

    def _read_result(self, response: httpx.Response, host: str) -> tuple[bytes, str | None]:
        try:
            netpolicy.check_peer(response, host, self._settings.fetch_allow)
        except OutboundForbidden as exc:
            raise _result_refused(exc) from None
        location = netpolicy.redirect_location(response)
        if location is not None:
            return b"", location
        if response.status_code != 200:
            raise UpstreamError(
                f"Black Forest Labs' result URL answered HTTP {response.status_code} "
                "(results expire 10 minutes after the task finishes)."
            )
        return self._read_capped(response), None

    def _read_capped(self, response: httpx.Response) -> bytes:
        cap = self._settings.max_image_bytes
        buf = bytearray()
        for chunk in response.iter_bytes():
            buf += chunk
            if len(buf) > cap:
                raise UpstreamError(f"Black Forest Labs' result is larger than the {cap}-byte limit.")
        return bytes(buf)

    # --- plumbing --------------------------------------------------------------------

    def _http(self) -> httpx.Client:
        if self._api is None:
            self.open()
        assert self._api is not None
        return self._api

    def _result_http(self) -> httpx.Client:
        if self._results is None:
            self.open()
        assert self._results is not None
        return self._results

    def _headers(self) -> dict[str, str]:
        return {"x-key": self._settings.bfl_api_key or "", "accept": "application/json"}

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

    def _backoff(self, attempt: int) -> float:
        return min(self._settings.bfl_backoff_s * 2 ** (attempt - 1), max(_MAX_BACKOFF_S, self._settings.bfl_backoff_s))

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

    # --- errors --------------------------------------------------------------------------

    def _raise_for_status(self, response: httpx.Response, what: str) -> None:
        code = response.status_code
        if code < 400:
            return
        detail = self.sanitise(_error_detail(response))
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
            message += f" Reasons given: {self.sanitise(details)}"
        return UpstreamError(message, code="content_moderated", status=422)

    def _unreachable(self, cause: object, tries: int, url: str | None = None) -> UpstreamError:
        host = urlsplit(url or self.base_url).netloc
        reason = type(cause).__name__ if isinstance(cause, Exception) else str(cause)
        return UpstreamError(
            f"Black Forest Labs could not be reached at {self.sanitise(host)} after {tries} "
            f"{'try' if tries == 1 else 'tries'} ({self.sanitise(reason)}).",
            code="upstream_unreachable",
        )

    def sanitise(self, value: object) -> str:
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
