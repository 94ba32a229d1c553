"""BFL's failures: `UpstreamError`, the message each failure becomes, and the retry of transient ones.

Text that comes from BFL is sanitised before it is shown (compact, printable, short,
never the operator's key). Transient failures are retried with a bounded
exponential backoff, or after the wait a Retry-After header asks for.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

import httpx

from fluxedit.config import Settings
from fluxedit.errors import FluxeditError

__all__ = [
    "MAX_BACKOFF_S",
    "UpstreamError",
    "backoff",
    "json_object",
    "moderated",
    "raise_for_status",
    "retry_after",
    "retrying",
    "sanitise",
    "unreachable",
]

T = TypeVar("T")

MAX_BACKOFF_S = 5.0
_MAX_DETAIL_CHARS = 300


class UpstreamError(FluxeditError):
    """BFL could not do the edit. Codes: upstream_failed, upstream_busy,
    upstream_unreachable, upstream_auth, upstream_timeout, content_moderated."""

    code = "upstream_failed"
    status = 502


# --- retries -------------------------------------------------------------------------


def retrying(call: Callable[[], T], url: str, settings: Settings) -> T:
    """Run an idempotent call (poll, download), retrying network errors a bounded number of times."""
    failures = 0
    while True:
        try:
            return call()
        except httpx.TransportError as exc:
            failures += 1
            if failures > settings.bfl_network_retries:
                raise unreachable(exc, failures, url, settings.bfl_api_key) from None
            time.sleep(backoff(failures, settings))


def backoff(attempt: int, settings: Settings) -> float:
    return min(settings.bfl_backoff_s * 2 ** (attempt - 1), max(MAX_BACKOFF_S, settings.bfl_backoff_s))


def retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["retry-after"]))
    except (KeyError, ValueError):
        return None


# --- errors --------------------------------------------------------------------------


def raise_for_status(response: httpx.Response, what: str, key: str | None) -> None:
    code = response.status_code
    if code < 400:
        return
    detail = sanitise(_error_detail(response), key)
    if code in (401, 403):
        raise UpstreamError(
            f"Black Forest Labs refused the operator's API key (HTTP {code}) on {what}; "
            "the operator must check FLUXEDIT_BFL_API_KEY.",
            code="upstream_auth",
        )
    if code == 402:
        raise UpstreamError("Black Forest Labs refused the task: the operator's account is out of credits (HTTP 402).")
    raise UpstreamError(f"Black Forest Labs refused the {what} (HTTP {code}): {detail}")


def moderated(status: str, details: object, key: str | None) -> UpstreamError:
    stage = "the prompt or reference images" if status == "Request Moderated" else "the generated image"
    message = f"Black Forest Labs' content moderation refused {stage} ({status}); no image was produced."
    if details:
        message += f" Reasons given: {sanitise(details, key)}"
    return UpstreamError(message, code="content_moderated", status=422)


def unreachable(cause: object, tries: int, url: str, key: str | None) -> UpstreamError:
    host = urlsplit(url).netloc
    reason = type(cause).__name__ if isinstance(cause, Exception) else str(cause)
    return UpstreamError(
        f"Black Forest Labs could not be reached at {sanitise(host, key)} after {tries} "
        f"{'try' if tries == 1 else 'tries'} ({sanitise(reason, key)}).",
        code="upstream_unreachable",
    )


def sanitise(value: object, key: str | None) -> str:
    """Text from BFL made safe to show: compact, printable, short, and never the key."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, separators=(",", ":"))
    if key:
        text = text.replace(key, "[redacted]")
    text = re.sub(r"\s+", " ", re.sub(r"[^\x20-\x7e\s]", "", text)).strip()
    if len(text) > _MAX_DETAIL_CHARS:
        text = text[: _MAX_DETAIL_CHARS - 3] + "..."
    if key:  # truncation could not recreate it, but a cut key prefix is still a secret
        text = text.replace(key[: max(8, len(key) // 2)], "[redacted]")
    return text


def json_object(response: httpx.Response) -> dict:
    try:
        data = response.json()
    except ValueError:
        raise UpstreamError(
            f"Black Forest Labs answered HTTP {response.status_code} with a body that is not JSON."
        ) from None
    if not isinstance(data, dict):
        raise UpstreamError("Black Forest Labs answered with JSON that is not an object.")
    return data


def _error_detail(response: httpx.Response) -> object:
    try:
        data = response.json()
    except ValueError:
        return response.text[:_MAX_DETAIL_CHARS] or "no details given"
    if isinstance(data, dict):
        return data.get("detail") or data.get("message") or data.get("error") or data
    return data
