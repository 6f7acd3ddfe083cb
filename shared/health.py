"""Liveness and readiness probes for the container path (compose, Kubernetes, Dockerfile).

Probes are public: readiness says only *which* dependency failed; the driver's error
(hosts, ports, user names) goes to the log, never into the answer.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from shared import db
from shared.settings import get_settings

log = logging.getLogger("ticketing.health")

router = APIRouter(tags=["health"])

_CHECK_TIMEOUT_S = 2


def _check_database() -> str | None:
    try:
        with psycopg.connect(
            get_settings().database_url, connect_timeout=_CHECK_TIMEOUT_S, autocommit=True
        ) as conn, db.bounded(conn, _CHECK_TIMEOUT_S):  # connected, then frozen: still bounded
            conn.execute("SELECT 1")
    except Exception as exc:  # any failure means not ready; the text goes to the log only
        return f"{type(exc).__name__}: {str(exc).strip()[:200]}"
    return None


def _check_redis() -> str | None:
    try:
        client = redis.Redis.from_url(
            get_settings().redis_url,
            socket_timeout=_CHECK_TIMEOUT_S,
            socket_connect_timeout=_CHECK_TIMEOUT_S,
        )
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # any failure means not ready; the text goes to the log only
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return None


@router.get("/health/live")
async def live() -> dict[str, str]:
    """The process is up and serving (on the event loop: a busy thread pool cannot delay it)."""
    return {"status": "ok"}


@router.get("/health/ready", responses={503: {"description": "A dependency is unreachable"}})
def ready() -> Any:
    """PostgreSQL and Redis answer; says which one failed otherwise."""
    errors = {"database": _check_database(), "redis": _check_redis()}
    failed = [name for name, err in errors.items() if err]
    checks = {name: ("ok" if err is None else "unavailable") for name, err in errors.items()}
    if not failed:
        return {"status": "ok", "checks": checks}
    for name in failed:
        log.warning("readiness: %s unavailable: %s", name, errors[name])
    return JSONResponse(
        {"status": "unavailable", "checks": checks, "code": "dependency_unavailable",
         "message": f"Unavailable: {', '.join(failed)}"},
        status_code=503,
        headers={"Retry-After": "5"},
    )
