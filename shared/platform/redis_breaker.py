"""One Redis client per concern that degrades without Redis, with a circuit breaker.

Rate limits and the session check each make one small Redis call per request and must
never fail a request because Redis is down or slow: short socket timeouts, no retries, and
after a failure the breaker skips Redis for a few seconds (the caller falls back), so a
rush does not pay a timeout per request.

What a call can raise when the server or the connection under it goes away: redis-py's own
errors, and, for a connection closed under a concurrent caller, ``ValueError`` ("I/O
operation on closed file") or ``OSError``. Every caller that degrades catches all of
:data:`REDIS_FAILURES`, so none turns into a 500.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.platform.settings import Settings, get_settings

REDIS_FAILURES: tuple[type[Exception], ...] = (redis.RedisError, OSError, ValueError)

BREAKER_SECONDS = 5.0

log = logging.getLogger(__name__)


class RedisBreaker:
    """A lazily made client for ``REDIS_URL``, or None while the breaker is open."""

    def __init__(
        self,
        name: str,
        timeout: Callable[[Settings], float],
        on_connect: Callable[[redis.Redis], None] | None = None,
    ) -> None:
        self.name = name  # what degrades, for the log line
        self._timeout = timeout
        self._on_connect = on_connect  # e.g. register Lua scripts on a new client
        self._lock = threading.Lock()
        self._client: redis.Redis | None = None
        self._url = ""
        self._down_until = 0.0

    def client(self) -> redis.Redis | None:
        settings = get_settings()
        with self._lock:
            if self._client is None or settings.redis_url != self._url:
                # The old client is dropped, not closed: another thread may be mid-call on it.
                timeout = self._timeout(settings)
                client = redis.Redis.from_url(
                    settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout,
                    retry=Retry(NoBackoff(), 0), health_check_interval=30,
                )
                if self._on_connect is not None:
                    self._on_connect(client)
                self._client, self._url, self._down_until = client, settings.redis_url, 0.0
            if time.monotonic() < self._down_until:
                return None
            return self._client

    def trip(self, exc: Exception, fallback: str) -> None:
        """Skip Redis for a few seconds after a failure; ``fallback`` says what happens meanwhile."""
        self._down_until = time.monotonic() + BREAKER_SECONDS
        log.warning("%s: Redis unavailable (%s); %s for %.0fs", self.name, type(exc).__name__, fallback,
                    BREAKER_SECONDS)

    def reset(self) -> None:
        """Forget a past failure: the next call asks Redis again (tests use it)."""
        self._down_until = 0.0
