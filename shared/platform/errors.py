"""Typed errors with stable machine-readable codes; the web layer maps them to JSON once."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class AppError(Exception):
    """An error a client can act on: HTTP status, stable code, human message, details."""

    status_code = 400

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
        self.headers: dict[str, str] = {}


@contextmanager
def unknown_user_is_401() -> Iterator[None]:
    """A valid token whose user no longer exists (a wiped database, a deleted account)."""
    import psycopg

    try:
        yield
    except psycopg.errors.ForeignKeyViolation as exc:
        if "user" not in str(exc.diag.constraint_name or "") and "organizer" not in str(exc.diag.constraint_name or ""):
            raise
        raise Unauthorized("unknown_user", "The token's user no longer exists") from exc


class BadRequest(AppError):
    status_code = 400


class Unauthorized(AppError):
    status_code = 401

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(code, message, **details)
        self.headers = {"WWW-Authenticate": "Bearer"}


class Forbidden(AppError):
    status_code = 403


class NotFound(AppError):
    status_code = 404


class Conflict(AppError):
    status_code = 409


class Gone(AppError):
    status_code = 410


class Unprocessable(AppError):
    status_code = 422


class ServiceUnavailable(AppError):
    status_code = 503

    def __init__(self, code: str, message: str, retry_after: int = 2, **details: Any) -> None:
        super().__init__(code, message, **details)
        self.headers = {"Retry-After": str(retry_after)}


class TooManyRequests(AppError):
    """A rate limit refused the request; ``Retry-After`` says when to try again."""

    status_code = 429

    def __init__(self, code: str, message: str, retry_after: int = 1, **details: Any) -> None:
        super().__init__(code, message, retry_after=retry_after, **details)
        self.headers = {"Retry-After": str(retry_after)}
