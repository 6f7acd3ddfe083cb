"""The pool probes a connection before lending it only when it may have gone stale."""

from __future__ import annotations

import time

import pytest
from psycopg_pool import ConnectionPool

from shared.platform import db
from shared.platform.settings import get_settings


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    seen: list[object] = []
    real = ConnectionPool.check_connection

    def counting(conn: object) -> None:
        seen.append(conn)
        real(conn)  # type: ignore[arg-type]

    monkeypatch.setattr(ConnectionPool, "check_connection", staticmethod(counting))
    return seen


def _use(times: int) -> None:
    for _ in range(times):
        with db.connection() as conn:
            conn.execute("SELECT 1")


def test_a_connection_just_returned_is_lent_without_a_probe(probes: list[object]) -> None:
    _use(get_settings().db_pool_max + 5)  # every pooled connection handed back once
    before = len(probes)
    _use(10)
    assert len(probes) == before


def test_an_idle_connection_is_probed(probes: list[object], monkeypatch: pytest.MonkeyPatch) -> None:
    _use(1)
    monkeypatch.setattr(time, "monotonic", lambda: 10**9)  # far past DB_CHECK_AFTER_IDLE
    before = len(probes)
    _use(1)
    assert len(probes) == before + 1


def test_under_lambda_every_checkout_is_probed(probes: list[object], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "booking")
    before = len(probes)
    _use(3)
    assert len(probes) == before + 3
