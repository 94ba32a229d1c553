"""GET /metrics: this process's Prometheus registry, for loopback scrapers or a bearer token."""

from __future__ import annotations

import hmac
import ipaddress

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fluxedit.api.deps import RuntimeDep
from fluxedit.errors import FluxeditError

router = APIRouter()


class MetricsForbidden(FluxeditError):
    code = "forbidden"
    status = 403


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_scraper(request: Request, token: str | None) -> None:
    """With a token set, only `Authorization: Bearer <token>`; without one, only loopback clients."""
    if token is None:
        if not _is_loopback(request.client.host if request.client else None):
            raise MetricsForbidden("/metrics answers only loopback clients unless FLUXEDIT_METRICS_TOKEN is set.")
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise MetricsForbidden("/metrics needs 'Authorization: Bearer <FLUXEDIT_METRICS_TOKEN>'.")


@router.get("/metrics", tags=["ops"], include_in_schema=False)
def metrics(request: Request, runtime: RuntimeDep) -> Response:
    check_scraper(request, runtime.settings.metrics_token)
    return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)
