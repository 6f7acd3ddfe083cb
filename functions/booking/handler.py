"""Lambda entry point of the booking function.

Lifespan is off: with it on, Mangum would run startup and shutdown around every
invocation. The connection pool opens lazily on first use and stays warm instead.

Worker threads stay warm too. Mangum runs each invocation as a new task on the
process's event loop, and anyio stops the worker threads it starts when the task that
started them ends: every invocation started and tore down a thread for its blocking calls
(the rate-limit round trip, the booking): 10-20% of its CPU time in paired runs (issue 13,
``python -m bench.lambda_path``). :func:`keep_worker_threads` names a task that never
ends as their owner instead, so they are reused (anyio still retires one idle for 10 s).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from mangum import Mangum

from functions.booking.app import app

_mangum = Mangum(app, lifespan="off")
_owners: dict[asyncio.AbstractEventLoop, asyncio.Task[Any]] = {}


def keep_worker_threads(loop: asyncio.AbstractEventLoop) -> None:
    """Make a never-ending task the owner of anyio's worker threads on ``loop`` (once per loop).

    Uses anyio's ``_root_task`` and ``threading._register_atexit`` (both private; the test
    tests/platform/test_lambda_workers.py notices when either stops working): without them,
    invocations behave as before, a thread each. The owners end before the interpreter
    joins its threads, else their parked workers would keep a process (a test run, a
    bench) from exiting.
    """
    if loop in _owners or loop.is_running() or not hasattr(threading, "_register_atexit"):
        return
    try:
        from anyio._backends._asyncio import _root_task
    except ImportError:  # another anyio: the default, a thread per invocation
        return

    async def own() -> None:
        owner = loop.create_task(asyncio.Event().wait(), name="lambda worker threads")
        _root_task.set(owner)
        _owners[loop] = owner

    if not _owners:
        threading._register_atexit(_release)
    loop.run_until_complete(own())


def _release() -> None:
    """End the owner tasks, so anyio stops their worker threads (done-callbacks, run on each loop)."""
    for loop, owner in list(_owners.items()):
        if loop.is_closed():
            continue
        if loop.is_running():  # an invocation still in flight on another thread (the emulator)
            loop.call_soon_threadsafe(owner.cancel)
        else:
            owner.cancel()
            loop.run_until_complete(asyncio.wait([owner]))
    _owners.clear()


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The function's entry: the event through Mangum, on this thread's loop (Mangum's own choice)."""
    keep_worker_threads(asyncio.get_event_loop())
    response: dict[str, Any] = _mangum(event, context)
    return response
