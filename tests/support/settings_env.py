"""Changing settings for one test: environment variables plus the cached settings object."""

from __future__ import annotations

import os

from shared.platform.settings import get_settings


def set_env(values: dict[str, str]) -> dict[str, str | None]:
    """Set variables and re-read settings; returns what :func:`restore_env` puts back."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    get_settings.cache_clear()
    return saved


def restore_env(saved: dict[str, str | None]) -> None:
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    get_settings.cache_clear()
