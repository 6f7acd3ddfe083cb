"""Password hashing (argon2id) and access tokens (JWT, HMAC-signed)."""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import lru_cache

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from shared.platform.errors import ServiceUnavailable, Unauthorized
from shared.platform.settings import get_settings

ROLES = ("organizer", "customer")

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


@dataclass(frozen=True)
class Principal:
    """Who is calling, as proven by a valid token.

    ``session_id`` names the login (refresh-token family) the token belongs to:
    shared/accounts/sessions.py refuses the token once that session is revoked.
    """

    user_id: int
    role: str
    session_id: str = ""


# Every access token carries these; one without any of them is refused.
_REQUIRED_CLAIMS = ["sub", "role", "exp", "iat", "iss", "jti", "sid"]


def issue_token(user_id: int, role: str, *, session_id: str | None = None) -> tuple[str, int]:
    """Return a signed access token for the user and its lifetime in seconds."""
    settings = get_settings()
    now = int(time.time())
    claims = {
        "sub": str(user_id),
        "role": role,
        "iat": now,
        "exp": now + settings.jwt_ttl_seconds,
        "iss": settings.jwt_issuer,
        "jti": secrets.token_urlsafe(12),
        "sid": session_id or secrets.token_urlsafe(12),
    }
    token = jwt.encode(claims, settings.signing_secret(), algorithm=settings.jwt_algorithm)
    return token, settings.jwt_ttl_seconds


def decode_token(token: str) -> Principal:
    """The principal a token proves, or 401 (`token_expired`, `invalid_token`).

    A token's signature is verified once per process and the result kept in a small
    cache (tokens are immutable); its expiry is checked on every use. Revocation is not
    checked here (it changes): see shared/accounts/sessions.py.
    """
    cached = _verified.get(token)
    if cached is not None:
        principal, expires = cached
        if time.time() < expires:
            return principal
        raise Unauthorized("token_expired", "The access token has expired")
    principal, expires = _verify(token)
    if len(_verified) >= _VERIFIED_MAX:
        _verified.clear()  # crude but bounded; a rush reuses a few thousand tokens
    _verified[token] = (principal, expires)
    return principal


_VERIFIED_MAX = 10_000
_verified: dict[str, tuple[Principal, float]] = {}


def _invalid() -> Unauthorized:
    return Unauthorized("invalid_token", "The access token is not valid")


def _verify(token: str) -> tuple[Principal, float]:
    settings = get_settings()
    try:
        claims = jwt.decode(
            token,
            settings.signing_secret(),
            algorithms=[settings.jwt_algorithm],
            issuer=settings.jwt_issuer,
            # iat is checked below, with leeway for clock skew between instances.
            options={"require": _REQUIRED_CLAIMS, "verify_iat": False},
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("token_expired", "The access token has expired") from exc
    except jwt.PyJWTError as exc:
        raise _invalid() from exc
    try:
        user_id, issued, expires = int(claims["sub"]), int(claims["iat"]), int(claims["exp"])
    except (TypeError, ValueError, OverflowError) as exc:
        raise _invalid() from exc
    # Bounded lifetime: a token minted for longer than this deployment issues (a leaked
    # secret's 100-year token), or dated in the future, is not one we issued.
    if expires - issued > settings.jwt_ttl_seconds or issued > time.time() + settings.jwt_leeway_seconds:
        raise _invalid()
    role, session_id = claims["role"], claims["sid"]
    if role not in ROLES or not isinstance(session_id, str) or not session_id:
        raise _invalid()
    return Principal(user_id, role, session_id), float(expires)
