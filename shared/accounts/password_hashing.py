"""Password hashing (argon2id), bounded by process-wide hash slots."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from shared.platform.errors import ServiceUnavailable
from shared.platform.settings import get_settings

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _hasher() -> PasswordHasher:
    settings = get_settings()
    return PasswordHasher(
        time_cost=settings.password_hash_time_cost,
        memory_cost=settings.password_hash_memory_kib,
    )


class HashSlots:
    """At most ``concurrency`` argon2 computations at once, at most ``queue`` waiting.

    Each hash holds ``PASSWORD_HASH_MEMORY_KIB`` (64 MiB by default) while it runs, so
    this bounds the process's extra memory under any burst of registrations or logins at
    concurrency x memory. Waiters sit in the sync routes' thread pool: capping how many
    may wait, and for how long, leaves the pool to every other route. Beyond either
    bound: 503 ``busy`` with ``Retry-After``.
    """

    def __init__(self, concurrency: int, queue: int, wait_seconds: float) -> None:
        self._running = threading.BoundedSemaphore(concurrency)
        self._lock = threading.Lock()
        self._waiting = 0
        self._queue = queue
        self._wait = wait_seconds

    @contextmanager
    def slot(self) -> Iterator[None]:
        if not self._running.acquire(blocking=False):
            self._wait_for_slot()
        try:
            yield
        finally:
            self._running.release()

    def _wait_for_slot(self) -> None:
        with self._lock:
            if self._waiting >= self._queue:
                raise _busy(self._wait)
            self._waiting += 1
        try:
            acquired = self._running.acquire(timeout=self._wait)
        finally:
            with self._lock:
                self._waiting -= 1
        if not acquired:
            raise _busy(self._wait)


def _busy(wait_seconds: float) -> ServiceUnavailable:
    log.warning("password hashing busy: request refused with 503")
    return ServiceUnavailable(
        "busy", "Too many sign-ins and registrations at once; retry shortly",
        retry_after=max(1, math.ceil(wait_seconds)),
    )


@lru_cache(maxsize=4)
def _slots(concurrency: int, queue: int, wait_seconds: float) -> HashSlots:
    return HashSlots(concurrency, queue, wait_seconds)


def hash_slot() -> AbstractContextManager[None]:
    """The process-wide slot every argon2 hash and verify runs in."""
    settings = get_settings()
    return _slots(
        settings.password_hash_concurrency, settings.password_hash_queue,
        settings.password_hash_wait_seconds,
    ).slot()


def hash_password(password: str) -> str:
    with hash_slot():
        return _hasher().hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    with hash_slot():
        try:
            return _hasher().verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False


# Verifying against this keeps login time the same whether or not the email exists.
@lru_cache(maxsize=1)
def dummy_hash() -> str:
    return hash_password("not-a-real-password")
