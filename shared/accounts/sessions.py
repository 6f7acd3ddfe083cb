"""Sessions: short access tokens, rotating refresh tokens, and revocation without a DB read.

A login is a *session* (a refresh-token family, a row in ``sessions``). It hands out a
short-lived access token (JWT, ``JWT_TTL_SECONDS``, 15 min) and an opaque refresh token,
stored only as its SHA-256 (it is 256 random bits, so a fast hash is enough). Refreshing
uses the refresh token up and issues its successor in the same family; presenting a used
one again means two parties hold it, so the whole family is revoked (theft detection).

Access tokens carry their session id (``sid``) and are checked against Redis, never
PostgreSQL: ``auth:sid:<session id>`` exists once the session is revoked (logout, reuse;
a password or role change revokes every session of the user whose access tokens can still
be alive). Session ids are random UUIDs, so a key can never hit another user's token,
even after a database is reset under a Redis that kept its keys. A key expires after
the longest an access token can live, so Redis holds only what can still matter.
Booking routes fold this check into the rate limiter's one Redis round trip
(``SESSION_CHECK_LUA`` rides along in the GCRA script, shared/web/ratelimit.py); other routes
pay one EXISTS with a short timeout.

Redis unreachable: the check fails open (logged, then skipped for a few seconds like the
rate limiter), because a Redis outage must not log every customer out mid-rush. The
exposure is bounded by the access-token lifetime, and refresh always checks PostgreSQL,
so a revoked session never gets a new access token.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import uuid
from dataclasses import dataclass
from typing import Any, NoReturn

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.accounts.tokens import Principal, issue_token
from shared.platform.db import connection
from shared.platform.errors import Unauthorized
from shared.platform.redis_breaker import REDIS_FAILURES, RedisBreaker
from shared.platform.settings import get_settings

log = logging.getLogger(__name__)

_KEY_PREFIX = "auth"
# Writes (revocations) matter more than reads: they get a longer timeout.
_WRITE_TIMEOUT = 1.0

# Prepended to the GCRA script: with an even number of ARGV (one extra, ``SESSION_ARG``),
# the last KEY is the token's session key. Returns {-1, 0, 0} for a revoked token, before
# any limit is consumed.
SESSION_ARG = "session"
SESSION_CHECK_LUA = """
local nrules = #KEYS
if #ARGV % 2 == 0 then
  nrules = nrules - 1
  if redis.call('EXISTS', KEYS[#KEYS]) == 1 then return {-1, 0, 0} end
end
"""


@dataclass(frozen=True)
class IssuedTokens:
    """What a login or a refresh answers."""

    access_token: str
    refresh_token: str
    expires_in: int
    refresh_expires_in: int
    user_id: int
    role: str


# --- revocation state in Redis ------------------------------------------------------------


def session_key(session_id: str) -> str:
    """The Redis key that exists while this session is revoked."""
    return f"{_KEY_PREFIX}:sid:{session_id}"


def _revocation_ttl() -> int:
    settings = get_settings()
    return settings.jwt_ttl_seconds + settings.jwt_leeway_seconds + 60


def revoked_error() -> Unauthorized:
    return Unauthorized("token_revoked", "This session has ended; sign in again")


_redis = RedisBreaker("session check", lambda settings: settings.session_redis_timeout)


def ensure_active(principal: Principal) -> None:
    """Raise 401 ``token_revoked`` when the token's session or generation was revoked."""
    client = _redis.client()
    if client is None:
        return
    try:
        revoked = client.exists(session_key(principal.session_id))
    except REDIS_FAILURES as exc:
        _redis.trip(exc, "revoked tokens are not refused (bounded by JWT_TTL_SECONDS)")
        return
    if revoked:
        raise revoked_error()


def publish_revoked(session_ids: list[str]) -> None:
    """After commit: the sessions' access tokens are refused from now on.

    A failure is logged loudly; the refresh tokens are already dead in PostgreSQL and the
    access-token lifetime bounds the gap.
    """
    if not session_ids:
        return
    settings = get_settings()
    try:
        client = redis.Redis.from_url(
            settings.redis_url, socket_timeout=_WRITE_TIMEOUT, socket_connect_timeout=_WRITE_TIMEOUT,
            retry=Retry(NoBackoff(), 1),
        )
        with client, client.pipeline(transaction=False) as pipe:
            for session_id in session_ids:
                pipe.set(session_key(session_id), "1", ex=_revocation_ttl())
            pipe.execute()
    except REDIS_FAILURES as exc:
        log.error(
            "revocation not published to Redis (%s): access tokens stay valid until they expire",
            type(exc).__name__,
        )


# --- sessions and refresh tokens in PostgreSQL --------------------------------------------


def _hash(refresh_token: str) -> bytes:
    return hashlib.sha256(refresh_token.encode()).digest()


def _issue(user_id: int, role: str, session_id: str, refresh_token: str) -> IssuedTokens:
    access, ttl = issue_token(user_id, role, session_id=session_id)
    return IssuedTokens(access, refresh_token, ttl, get_settings().refresh_token_ttl_seconds, user_id, role)


def start_session(user_id: int, *, password_hash: str) -> IssuedTokens:
    """A new login: a session row and its first refresh token, in one statement.

    Only while ``password_hash`` (the one the caller verified) is still the user's: the
    user row is read ``FOR SHARE``, so a password or role change either commits first (the
    hash no longer matches: 401 ``invalid_credentials``; the role read is the new one) or
    waits for this session to commit and then revokes it. Without that lock a login
    checked against the old password could outlive the change that should end it.
    """
    session_id, refresh_token = str(uuid.uuid4()), secrets.token_urlsafe(32)
    with connection() as conn:
        row = conn.execute(
            """WITH u AS (SELECT id, role FROM users WHERE id = %(user)s AND password_hash = %(pw)s FOR SHARE),
                    s AS (INSERT INTO sessions (id, user_id) SELECT %(sid)s, id FROM u RETURNING id),
                    r AS (INSERT INTO refresh_tokens (token_hash, session_id, expires_at)
                          SELECT %(hash)s, id, now() + make_interval(secs => %(ttl)s) FROM s)
               SELECT role FROM u""",
            {"user": user_id, "pw": password_hash, "sid": session_id, "hash": _hash(refresh_token),
             "ttl": get_settings().refresh_token_ttl_seconds},
        ).fetchone()
    if row is None:
        raise Unauthorized("invalid_credentials", "Incorrect email or password")
    return _issue(user_id, row["role"], session_id, refresh_token)


def refresh(refresh_token: str) -> IssuedTokens:
    """Use a refresh token up and issue its successor; reuse revokes the whole family.

    The guarded UPDATE lets exactly one of any number of concurrent uses win: the others
    find it used once the winner commits, and count as reuse.
    """
    token_hash, successor = _hash(refresh_token), secrets.token_urlsafe(32)
    with connection() as conn, conn.transaction():
        used = conn.execute(
            """UPDATE refresh_tokens SET used_at = now()
               WHERE token_hash = %s AND used_at IS NULL AND expires_at > now()
               RETURNING session_id""",
            (token_hash,),
        ).fetchone()
        # Locks the session row: a revocation committing meanwhile is seen, not raced.
        row = used and conn.execute(
            """UPDATE sessions s SET last_issued_at = now() FROM users u
               WHERE s.id = %s AND s.revoked_at IS NULL AND u.id = s.user_id
               RETURNING s.id AS session_id, u.id AS user_id, u.role""",
            (used["session_id"],),
        ).fetchone()
        if row:
            conn.execute(
                """INSERT INTO refresh_tokens (token_hash, session_id, expires_at)
                   VALUES (%s, %s, now() + make_interval(secs => %s))""",
                (_hash(successor), row["session_id"], get_settings().refresh_token_ttl_seconds),
            )
    if not used:
        _refuse_refresh(token_hash)
    if not row:
        raise _invalid_refresh()
    return _issue(row["user_id"], row["role"], str(row["session_id"]), successor)


def _invalid_refresh() -> Unauthorized:
    return Unauthorized("invalid_refresh_token", "The refresh token is not valid, expired or revoked")


def _refuse_refresh(token_hash: bytes) -> NoReturn:
    """Say why a refresh token was refused; a used one revokes its family first."""
    with connection() as conn:
        row = conn.execute(
            "SELECT session_id, used_at FROM refresh_tokens WHERE token_hash = %s", (token_hash,)
        ).fetchone()
    if row is not None and row["used_at"] is not None:
        revoke_session(str(row["session_id"]), reason="refresh_token_reused")
        log.warning("refresh token reused: session revoked", extra={"session_id": str(row["session_id"])})
        raise Unauthorized(
            "refresh_token_reused", "This refresh token was already used; the session is revoked, sign in again"
        )
    raise _invalid_refresh()


def revoke_session(session_id: str, *, reason: str) -> None:
    """End one login: its refresh tokens stop working, its access tokens too (via Redis)."""
    try:
        uuid.UUID(session_id)
    except ValueError:
        return  # not a session we issued (tokens minted outside a login)
    with connection() as conn:
        conn.execute(
            "UPDATE sessions SET revoked_at = now(), revoked_reason = %s WHERE id = %s AND revoked_at IS NULL",
            (reason, session_id),
        )
    publish_revoked([session_id])


def revoke_user_sessions(conn: Any, user_id: int, *, reason: str) -> list[str]:
    """Inside the caller's transaction: revoke every session of the user.

    Returns the ids of those whose access tokens may still be alive, for
    :func:`publish_revoked` after commit.
    """
    rows = conn.execute(
        """UPDATE sessions SET revoked_at = now(), revoked_reason = %s
           WHERE user_id = %s AND revoked_at IS NULL
           RETURNING id, last_issued_at > now() - make_interval(secs => %s) AS live""",
        (reason, user_id, _revocation_ttl()),
    ).fetchall()
    return [str(row["id"]) for row in rows if row["live"]]
