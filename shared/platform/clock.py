"""The application's clock for hold expiry and idempotency windows.

Expiry is compared against a time the application passes into SQL (not the database's
``now()``), so tests can move time forward instead of sleeping.
"""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    return datetime.now(UTC)
