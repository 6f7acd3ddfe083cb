"""Access tokens: JWTs signed with HMAC, and the principal a valid one proves.

"Claims" here means what it means in JWT: the fields of a token's payload.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import jwt

from shared.platform.errors import Unauthorized
from shared.platform.settings import get_settings

ROLES = ("organizer", "customer")


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
