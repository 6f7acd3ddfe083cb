"""Callers released at the same instant: the concurrency the race tests need."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def race(count: int, attempt: Callable[[int], T]) -> list[T]:
    """``attempt(0..count-1)`` in ``count`` threads let go together; answers in that order.

    Over HTTP keep ``count`` under httpx's 100-connection pool when none may wait for a socket.
    """
    start = threading.Barrier(count)

    def go(i: int) -> T:
        start.wait()
        return attempt(i)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(go, range(count)))
