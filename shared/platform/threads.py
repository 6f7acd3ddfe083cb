"""Blocking calls from async code: on the worker-thread pool the web server already uses, or,
where the request's event loop serves that request alone, on the loop itself."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Offload(Protocol):
    """How a request's blocking calls run: :func:`in_thread` or :func:`on_loop`."""

    def __call__(self, func: Callable[..., T], /, *args: Any, **kwargs: Any) -> Awaitable[T]: ...


async def in_thread(func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Await ``func(*args, **kwargs)`` on anyio's thread pool (the one Starlette's sync routes use).

    anyio is imported here, not at module load: the relay function ships without it.
    """
    import anyio.to_thread

    return await anyio.to_thread.run_sync(functools.partial(func, *args, **kwargs))


async def on_loop(func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Call ``func(*args, **kwargs)`` on the event loop itself, blocking it: only for a loop that
    serves this one request (:func:`offload_for`), where a worker thread buys nothing."""
    return func(*args, **kwargs)


def serves_one_request(scope: Mapping[str, Any] | None) -> bool:
    """Whether the request's event loop serves it alone: a Lambda event through Mangum.

    Mangum runs each invocation to completion on its loop (``run_until_complete``), one at a
    time per loop (the emulator: one loop per thread). There a hop to a worker thread starts
    a thread for the invocation (anyio stops its workers when the request's task ends) and
    lets nothing else run meanwhile: measured, 400 us more CPU per booking invocation.
    """
    return scope is not None and "aws.event" in scope


def offload_for(scope: Mapping[str, Any] | None) -> Offload:
    """:func:`on_loop` for a request whose loop serves it alone, else :func:`in_thread`."""
    return on_loop if serves_one_request(scope) else in_thread
