"""The notify function: the Celery worker that delivers notifications from the outbox."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    """``app`` for ``celery -A functions.notify``, imported only when asked for (submodules
    such as :mod:`functions.notify.messages` stay importable without Celery's tasks)."""
    if name == "app":
        from functions.notify.worker import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
