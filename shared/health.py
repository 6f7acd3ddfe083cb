"""Liveness and readiness probes for the container path (compose, Kubernetes, Dockerfile)."""

from __future__ import annotations

from typing import Any

import psycopg
import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from shared.settings import get_settings

router = APIRouter(tags=["health"])

_CHECK_TIMEOUT_S = 2


def _check_database() -> str | None:
    try:
        with psycopg.connect(
            get_settings().database_url, connect_timeout=_CHECK_TIMEOUT_S, autocommit=True
        ) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
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
    except redis.RedisError as exc:
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return None


@router.get("/health/live")
async def live() -> dict[str, str]:
    """The process is up and serving (on the event loop: a busy thread pool cannot delay it)."""
    return {"status": "ok"}


@router.get("/health/ready", responses={503: {"description": "A dependency is unreachable"}})
def ready() -> Any:
    """PostgreSQL and Redis answer; says which one failed otherwise."""
    checks = {"database": _check_database(), "redis": _check_redis()}
    body = {
        "status": "ok" if not any(checks.values()) else "unavailable",
        "checks": {name: ("ok" if err is None else err) for name, err in checks.items()},
    }
    if any(checks.values()):
        failed = ", ".join(name for name, err in checks.items() if err)
        return JSONResponse(
            {**body, "code": "dependency_unavailable", "message": f"Unavailable: {failed}"},
            status_code=503,
            headers={"Retry-After": "5"},
        )
    return body
