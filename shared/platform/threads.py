"""Blocking calls from async code, on the worker-thread pool the web server already uses."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def in_thread(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Await ``func(*args, **kwargs)`` on anyio's thread pool (the one Starlette's sync routes use).

    anyio is imported here, not at module load: the relay function ships without it.
    """
    import anyio.to_thread

    return await anyio.to_thread.run_sync(functools.partial(func, *args, **kwargs))
