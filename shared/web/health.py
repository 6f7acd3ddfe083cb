"""Liveness and readiness probes for the container path (compose, Kubernetes, Dockerfile).

Probes are public: readiness says only *which* dependency failed; the driver's error
(hosts, ports, user names) goes to the log, never into the answer. Being public, readiness
must not let a client open connections at will: each process runs at most one check at a
time and reuses its result for ``_CACHE_S``; concurrent callers wait for it and share it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import psycopg
import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from shared.platform import db
from shared.platform.settings import get_settings

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])

_CHECK_TIMEOUT_S = 2
# How long one result answers every caller: probes come every few seconds, a flood gets
# one database and one Redis connection per second per process at most.
_CACHE_S = 1.0
# A waiter gives up after the longest a check can take (connect and query, both bounded,
# for each dependency) plus a margin; then it answers unavailable rather than wait on.
_WAIT_S = 4 * _CHECK_TIMEOUT_S + 1

_check_lock = threading.Lock()
_last: tuple[float, dict[str, str | None]] | None = None


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


def _dependency_errors() -> dict[str, str | None]:
    """Each dependency's failure (None: ok), measured by at most one caller at a time.

    Callers that arrive while a check runs wait for it (bounded) and take its result.
    """
    global _last
    if not _check_lock.acquire(timeout=_WAIT_S):
        return {"database": "readiness check timed out", "redis": "readiness check timed out"}
    try:
        if _last is not None and time.monotonic() - _last[0] < _CACHE_S:
            return _last[1]
        errors = {"database": _check_database(), "redis": _check_redis()}
        for name, err in errors.items():
            if err:  # once per check, not once per caller sharing it
                log.warning("readiness: %s unavailable: %s", name, err)
        _last = (time.monotonic(), errors)
        return errors
    finally:
        _check_lock.release()


@router.get("/health/live")
async def live() -> dict[str, str]:
    """The process is up and serving (on the event loop: a busy thread pool cannot delay it)."""
    return {"status": "ok"}


@router.get("/health/ready", responses={503: {"description": "A dependency is unreachable"}})
def ready() -> Any:
    """PostgreSQL and Redis answer; says which one failed otherwise."""
    errors = _dependency_errors()
    failed = [name for name, err in errors.items() if err]
    checks = {name: ("ok" if err is None else "unavailable") for name, err in errors.items()}
    if not failed:
        return {"status": "ok", "checks": checks}
    return JSONResponse(
        {"status": "unavailable", "checks": checks, "code": "dependency_unavailable",
         "message": f"Unavailable: {', '.join(failed)}"},
        status_code=503,
        headers={"Retry-After": "5"},
    )
