"""Users: registration, credential checks and profile lookups."""

from __future__ import annotations

from typing import Any

import psycopg

from shared.db import connection
from shared.emails import email_skeleton, normalize_email
from shared.errors import Conflict, NotFound, Unauthorized
from shared.security import dummy_hash, hash_password, verify_password

_USER_COLUMNS = "id, email, name, role, created_at"


def create_user(*, email: str, password: str, role: str, name: str | None) -> dict[str, Any]:
    """Register; an address equal to or looking like an existing one is ``email_taken``."""
    password_hash = hash_password(password)  # before borrowing a connection: it is slow on purpose
    key, skeleton = normalize_email(email), email_skeleton(email)
    try:
        with connection() as conn:
            row = conn.execute(
                f"""INSERT INTO users (email, email_key, email_skeleton, name, password_hash, role)
                    VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_USER_COLUMNS}""",
                (email, key, skeleton, name, password_hash, role),
            ).fetchone()
    except psycopg.errors.UniqueViolation as exc:
        raise Conflict(
            "email_taken", "A user with this email, or one that looks the same, already exists"
        ) from exc
    assert row is not None
    return row


def authenticate(*, email: str, password: str) -> dict[str, Any]:
    """Return the user whose credentials these are, or raise ``invalid_credentials``."""
    with connection() as conn:
        row = conn.execute(
            f"SELECT {_USER_COLUMNS}, password_hash FROM users WHERE email_key = %s",
            (normalize_email(email),),
        ).fetchone()
    if row is None:
        verify_password(dummy_hash(), password)  # same cost as a real check: no email probing
        raise Unauthorized("invalid_credentials", "Incorrect email or password")
    if not verify_password(row.pop("password_hash"), password):
        raise Unauthorized("invalid_credentials", "Incorrect email or password")
    return row


def get_user(user_id: int) -> dict[str, Any]:
    with connection() as conn:
        row = conn.execute(
            f"SELECT {_USER_COLUMNS} FROM users WHERE id = %s", (user_id,)
        ).fetchone()
    if row is None:
        raise NotFound("user_not_found", f"User {user_id} does not exist")
    return row
