"""Public readiness must not let clients open database connections at will."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from shared.web import health
from tests.support.clients import HttpClient

_real_connect = psycopg.connect


class ConnectionCounter:
    """Wraps psycopg.connect: how many readiness connections are open at once, and in all."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open = self.most = self.total = 0

    def _opened(self) -> None:
        with self.lock:
            self.open += 1
            self.total += 1
            self.most = max(self.most, self.open)

    def _closed(self) -> None:
        with self.lock:
            self.open -= 1

    def connect(self, *args: Any, **kwargs: Any) -> Any:
        self._opened()
        try:
            time.sleep(0.1)  # a slow server: every caller's connection would overlap
            conn = _real_connect(*args, **kwargs)
        except BaseException:
            self._closed()
            raise
        return _Counted(conn, self._closed)


class _Counted:
    def __init__(self, conn: psycopg.Connection[Any], closed: Any) -> None:
        self.conn, self.closed = conn, closed

    def __enter__(self) -> psycopg.Connection[Any]:
        return self.conn.__enter__()

    def __exit__(self, *exc: Any) -> None:
        try:
            self.conn.__exit__(*exc)
        finally:
            self.closed()


def test_concurrent_readiness_requests_share_one_check(
    http_client: HttpClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = ConnectionCounter()
    monkeypatch.setattr(health.psycopg, "connect", counter.connect)
    monkeypatch.setattr(health, "_last", None, raising=False)  # no result from earlier tests
    start = threading.Barrier(30)

    def probe(_: int) -> int:
        start.wait(10)
        return http_client.request("GET", "/health/ready").status_code

    with ThreadPoolExecutor(30) as pool:
        statuses = list(pool.map(probe, range(30)))
    assert statuses == [200] * 30
    assert counter.most == 1, counter.most
    assert counter.total <= 2, counter.total  # one check, a second only if a second passed

    # A while later the next caller measures again: a cached answer goes stale quickly.
    time.sleep(health._CACHE_S + 0.05)
    assert http_client.request("GET", "/health/ready").status_code == 200
    assert counter.total >= 2
