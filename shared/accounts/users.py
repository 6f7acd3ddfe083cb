"""Users: registration, credential checks and profile lookups."""

from __future__ import annotations

from typing import Any

import psycopg

from shared.accounts import email_verification, sessions
from shared.accounts.emails import email_skeleton, normalize_email
from shared.accounts.password_hashing import dummy_hash, hash_password, verify_password
from shared.notifications import outbox
from shared.platform.db import connection
from shared.platform.errors import Conflict, Forbidden, NotFound, Unauthorized

_USER_COLUMNS = "id, email, name, role, created_at, email_verified_at"


def create_user(*, email: str, password: str, role: str, name: str | None) -> dict[str, Any]:
    """Register; an address equal to or looking like an existing one is ``email_taken``.

    The verification mail's outbox row commits with the user.
    """
    password_hash = hash_password(password)  # before borrowing a connection: it is slow on purpose
    key, skeleton = normalize_email(email), email_skeleton(email)
    try:
        with connection() as conn:
            with conn.transaction():
                row = conn.execute(
                    f"""INSERT INTO users (email, email_key, email_skeleton, name, password_hash, role)
                        VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_USER_COLUMNS}""",
                    (email, key, skeleton, name, password_hash, role),
                ).fetchone()
                assert row is not None
                mail = email_verification.request_mail(conn, row["id"])
            outbox.publish_committed(conn, [mail])
    except psycopg.errors.UniqueViolation as exc:
        raise Conflict(
            "email_taken", "A user with this email, or one that looks the same, already exists"
        ) from exc
    return row


def authenticate(*, email: str, password: str) -> dict[str, Any]:
    """Return the user whose credentials these are, or raise ``invalid_credentials``.

    The row keeps the ``password_hash`` just verified: :func:`sessions.start_session` creates
    the session only while it is still the current one, so a password change that commits
    during the (slow) check is never outlived by this login.
    """
    with connection() as conn:
        row = conn.execute(
            f"SELECT {_USER_COLUMNS}, password_hash FROM users WHERE email_key = %s",
            (normalize_email(email),),
        ).fetchone()
    if row is None:
        verify_password(dummy_hash(), password)  # same cost as a real check: no email probing
        raise Unauthorized("invalid_credentials", "Incorrect email or password")
    if not verify_password(row["password_hash"], password):
        raise Unauthorized("invalid_credentials", "Incorrect email or password")
    return row


def login(*, email: str, password: str) -> sessions.IssuedTokens:
    """Check the credentials and start a session bound to the hash that was verified."""
    user = authenticate(email=email, password=password)
    return sessions.start_session(user["id"], password_hash=user["password_hash"])


def get_user(user_id: int) -> dict[str, Any]:
    with connection() as conn:
        row = conn.execute(
            f"SELECT {_USER_COLUMNS} FROM users WHERE id = %s", (user_id,)
        ).fetchone()
    if row is None:
        raise NotFound("user_not_found", f"User {user_id} does not exist")
    return row


# --- session-affecting changes: each revokes every session of the user (shared/accounts/sessions.py)


def change_password(*, user_id: int, current_password: str, new_password: str) -> None:
    """Replace the password after checking the current one; every session ends."""
    with connection() as conn:
        row = conn.execute("SELECT password_hash FROM users WHERE id = %s", (user_id,)).fetchone()
    if row is None:
        raise Unauthorized("unknown_user", "The token's user no longer exists")
    if not verify_password(row["password_hash"], current_password):
        raise Forbidden("wrong_password", "The current password is not correct")
    new_hash = hash_password(new_password)
    with connection() as conn, conn.transaction():
        # Only over the hash just verified: a concurrent change wins once, never twice.
        changed = conn.execute(
            "UPDATE users SET password_hash = %s WHERE id = %s AND password_hash = %s RETURNING id",
            (new_hash, user_id, row["password_hash"]),
        ).fetchone()
        if changed is None:
            raise Forbidden("wrong_password", "The current password is not correct")
        revoked = sessions.revoke_user_sessions(conn, user_id, reason="password_changed")
    sessions.publish_revoked(revoked)


def set_role(*, email: str, role: str) -> dict[str, Any]:
    """An administrator's role change (``python3 dev.py users set-role``); every session ends."""
    return _revoking_update(email, "role_changed", "UPDATE users SET role = %s", (role,))


def sign_out_everywhere(*, email: str) -> dict[str, Any]:
    """An administrator ends every session of an account (a stolen device, a compromise)."""
    return _revoking_update(email, "signed_out_by_admin", "UPDATE users SET role = role", ())


def _revoking_update(email: str, reason: str, update: str, params: tuple[Any, ...]) -> dict[str, Any]:
    with connection() as conn, conn.transaction():
        row = conn.execute(
            f"{update} WHERE email_key = %s RETURNING {_USER_COLUMNS}", (*params, normalize_email(email))
        ).fetchone()
        if row is None:
            raise NotFound("user_not_found", f"No user with email {email}")
        revoked = sessions.revoke_user_sessions(conn, row["id"], reason=reason)
    sessions.publish_revoked(revoked)
    return row
