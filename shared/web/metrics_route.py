"""The ``/metrics`` scrape route of the container API, behind a bearer token."""

from __future__ import annotations

import hmac
import logging
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from shared.platform.metrics import enable_outbox_metrics, exposition
from shared.platform.settings import get_settings

log = logging.getLogger(__name__)

router = APIRouter(tags=["operations"])


def metrics_token() -> str | None:
    """The scrape token: ``METRICS_TOKEN``, else the content of ``METRICS_TOKEN_FILE``.

    The file is read on every scrape (every few seconds), so a rotated token applies
    without a restart. A missing, unreadable or too short file serves nothing.
    """
    settings = get_settings()
    if settings.metrics_token:
        return settings.metrics_token
    if not settings.metrics_token_file:
        return None
    try:
        token = Path(settings.metrics_token_file).read_text().strip()
    except OSError as exc:
        log.warning("metrics token file unreadable: %s", type(exc).__name__)
        return None
    if len(token) < 16:
        log.warning("metrics token file holds fewer than 16 characters: /metrics stays off")
        return None
    return token


def _authorized(authorization: str | None, token: str) -> bool:
    scheme, _, presented = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        presented.strip().encode(), token.encode()
    )


@router.get("/metrics", include_in_schema=False)
def metrics_endpoint(authorization: Annotated[str | None, Header()] = None) -> Response:
    """Prometheus scrape target of the container API, for the holder of the token only.

    Off (404, as if absent) unless a token is configured: the public listener never
    serves figures to anyone by default. Wrong or missing token: 401.
    """
    token = metrics_token()
    if token is None:
        raise HTTPException(404, "Not Found")
    if not _authorized(authorization, token):
        raise HTTPException(401, "A valid metrics token is required", {"WWW-Authenticate": "Bearer"})
    enable_outbox_metrics()
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)
