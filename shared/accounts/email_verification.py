"""Email verification: single-use, expiring tokens stored only as hashes.

The notify worker mints a token in the transaction that records the mail's delivery key
and sends it (:func:`mint`), so the token exists only in that worker's memory and in the
email: never in PostgreSQL, Redis, the outbox or a dead letter. Requests only write an
outbox row (:func:`request_mail`); ``POST /users/verify`` consumes a token with one
conditional UPDATE (:func:`verify`), so of two concurrent uses exactly one succeeds.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Any

from shared.notifications import outbox
from shared.notifications.contracts import BookingCancelled, BookingConfirmation, EmailVerification
from shared.platform import clock
from shared.platform.db import Connection, connection
from shared.platform.errors import BadRequest, Conflict, Gone, NotFound
from shared.platform.settings import get_settings

TOKEN_BYTES = 32  # 256 random bits; token_urlsafe gives 43 characters
# Notifications held while the address was unverified that verifying releases: the ones
# about the user's own booking. Event news (fan-outs) is not replayed: it goes stale.
RELEASED_KINDS = [BookingConfirmation.name, BookingCancelled.name]

_USER = "u.id, u.email, u.name, u.role, u.created_at, u.email_verified_at"


def token_hash(token: str) -> bytes:
    """SHA-256: a 256-bit random token needs no salt or slow hash to resist guessing."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def request_mail(conn: Connection, user_id: int) -> int:
    """In the caller's transaction: revoke live tokens, queue a verification mail (outbox id)."""
    revoke(conn, user_id)
    return outbox.write(conn, EmailVerification(user_id=user_id))


def revoke(conn: Connection, user_id: int) -> None:
    conn.execute(
        """UPDATE email_verification_tokens SET revoked_at = now()
            WHERE user_id = %s AND used_at IS NULL AND revoked_at IS NULL""",
        (user_id,),
    )


def mint(conn: Connection, *, user_id: int, email: str, ttl_seconds: int) -> str:
    """A new token for ``email`` (older ones revoked); only its hash is stored.

    The caller holds the user's row FOR UPDATE, so concurrent mints take turns; the
    index of migration 0009 refuses a second live token for a user whatever the caller.
    """
    token = secrets.token_urlsafe(TOKEN_BYTES)
    revoke(conn, user_id)
    conn.execute(
        """INSERT INTO email_verification_tokens (user_id, email, token_hash, expires_at)
           VALUES (%s, %s, %s, %s)""",
        (user_id, email, token_hash(token), clock.now() + timedelta(seconds=ttl_seconds)),
    )
    return token


def resend(user_id: int) -> int:
    """Queue a fresh verification mail; older tokens stop working at once. Returns the
    seconds the new token will be valid once mailed."""
    with connection() as conn:
        with conn.transaction():
            user = conn.execute(
                "SELECT email_verified_at FROM users WHERE id = %s FOR UPDATE", (user_id,)
            ).fetchone()
            if user is None:
                raise NotFound("user_not_found", f"User {user_id} does not exist")
            if user["email_verified_at"] is not None:
                raise Conflict("email_already_verified", "This email address is already verified")
            outbox_id = request_mail(conn, user_id)
        outbox.publish_committed(conn, [outbox_id])
    return get_settings().email_verification_ttl_seconds


_CONSUME = f"""
WITH consumed AS (
    UPDATE email_verification_tokens t SET used_at = %(now)s
     WHERE t.token_hash = %(hash)s AND t.used_at IS NULL AND t.revoked_at IS NULL
       AND t.expires_at > %(now)s
       AND EXISTS (SELECT 1 FROM users x WHERE x.id = t.user_id AND lower(x.email) = lower(t.email))
    RETURNING t.user_id)
UPDATE users u SET email_verified_at = coalesce(u.email_verified_at, %(now)s)
  FROM consumed WHERE u.id = consumed.user_id
RETURNING {_USER}
"""

_LOCK_OWNER = """
SELECT u.id FROM email_verification_tokens t JOIN users u ON u.id = t.user_id
 WHERE t.token_hash = %s FOR UPDATE OF u
"""

_RELEASE_HELD = """
WITH held AS (
    DELETE FROM notification_deliveries
     WHERE user_id = %s AND status = 'skipped_unverified' AND kind = ANY(%s)
    RETURNING outbox_id)
UPDATE outbox SET published_at = NULL WHERE id IN (SELECT outbox_id FROM held) RETURNING id
"""


def verify(token: str) -> dict[str, Any]:
    """Consume ``token`` and mark its address verified; held booking mail is sent again."""
    now = clock.now()
    digest = token_hash(token)
    with connection() as conn:
        with conn.transaction():
            # The user row first, as the worker's mint and resend lock it: the same order
            # everywhere (user, then tokens), so none of them can deadlock another.
            conn.execute(_LOCK_OWNER, (digest,))
            user = conn.execute(_CONSUME, {"hash": digest, "now": now}).fetchone()
            if user is None:
                raise _refusal(conn, digest, now)
            released = [r["id"] for r in conn.execute(_RELEASE_HELD, (user["id"], RELEASED_KINDS))]
        outbox.publish_committed(conn, released)
    return user


def _refusal(conn: Connection, digest: bytes, now: Any) -> Exception:
    """Why a token was refused: one small set of codes for every case."""
    row = conn.execute(
        """SELECT t.used_at, t.revoked_at, t.expires_at, lower(u.email) = lower(t.email) AS same
             FROM email_verification_tokens t JOIN users u ON u.id = t.user_id
            WHERE t.token_hash = %s""",
        (digest,),
    ).fetchone()
    if row is None or not row["same"]:
        return BadRequest("verification_invalid", "This verification token is not valid")
    if row["used_at"] is not None:
        return Conflict("verification_used", "This verification token was already used")
    if row["revoked_at"] is not None:
        return Gone("verification_expired",
                    "This verification token was replaced by a newer one; use the latest email")
    return Gone("verification_expired", "This verification token has expired; request a new one")


# Kept this long past expiry so a late click still says "expired", not "invalid".
PURGE_AFTER = timedelta(days=7)


def purge_expired(batch: int = 5000) -> int:
    """Delete tokens a week past expiry (periodic tidy); returns how many."""
    with connection() as conn:
        cur = conn.execute(
            "DELETE FROM email_verification_tokens WHERE id IN "
            "(SELECT id FROM email_verification_tokens WHERE expires_at <= %s LIMIT %s)",
            (clock.now() - PURGE_AFTER, batch),
        )
        return cur.rowcount
