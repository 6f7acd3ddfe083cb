"""PostgreSQL stops and comes back: readiness and requests say 503, then recover alone.

A throwaway embedded server of the test's own (its own cluster, its own migrated
database) is stopped under a running app and restarted on the same port; the app is
never restarted. The process-wide settings and pool are restored afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from local.embedded import Server, start_postgres
from shared.platform import db
from tests.support.clients import HttpClient, Response
from tests.support.databases import throwaway_postgres
from tests.support.settings_env import restore_env, set_env

POOL_TIMEOUT = 1.0


@pytest.fixture(autouse=True)
def fresh_readiness(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests change a dependency and ask again at once: no cached readiness."""
    from shared.web import health
    monkeypatch.setattr(health, "_CACHE_S", 0.0)


@pytest.fixture
def own_postgres(database: str) -> Iterator[tuple[Path, Server]]:
    with throwaway_postgres("ticketing-dbdown-") as (tmp, server, url):
        db.close_pool()
        saved = set_env({"DATABASE_URL": url, "DB_POOL_TIMEOUT": str(POOL_TIMEOUT)})
        try:
            yield tmp, server
        finally:
            db.close_pool()
            restore_env(saved)


def _timed(client: HttpClient, method: str, path: str) -> tuple[Response, float]:
    started = time.monotonic()
    r = client.request(method, path)
    return r, time.monotonic() - started


def test_database_stop_gives_503_and_restart_recovers(
    own_postgres: tuple[Path, Server], http_client: HttpClient
) -> None:
    tmp, server = own_postgres
    assert http_client.request("GET", "/health/ready").status_code == 200
    assert http_client.request("GET", "/events").status_code == 200  # pool now holds a connection

    server.stop()

    ready = http_client.request("GET", "/health/ready")
    assert ready.status_code == 503
    body = ready.json()
    assert body["checks"] == {"database": "unavailable", "redis": "ok"}
    assert str(server.port) not in ready.text  # which dependency, never where it lives
    assert "database" in body["message"]
    assert int(ready.headers["retry-after"]) >= 1

    for method, path in (("GET", "/events"), ("GET", "/events/1")):
        r, elapsed = _timed(http_client, method, path)
        assert r.status_code == 503, r.text
        assert r.json()["code"] == "database_unavailable"
        assert int(r.headers["retry-after"]) >= 1
        assert elapsed < POOL_TIMEOUT + 3, elapsed  # bounded by the pool timeout, no hang
    # Writes too: a login is refused cleanly, never a 500.
    r = http_client.request("POST", "/auth/token", form={"username": "a@b.cd", "password": "x"})
    assert r.status_code == 503 and r.json()["code"] == "database_unavailable"

    restarted = start_postgres(tmp / "pg", port=server.port, durable=False)
    try:
        deadline = time.monotonic() + 30
        statuses = []
        while time.monotonic() < deadline:
            r = http_client.request("GET", "/events")
            statuses.append(r.status_code)
            if r.status_code == 200:
                break
            assert r.status_code == 503, r.text
            time.sleep(0.25)
        assert statuses[-1] == 200, statuses
        assert http_client.request("GET", "/health/ready").status_code == 200
    finally:
        restarted.stop()


def test_readiness_names_the_failed_dependency_and_leaks_nothing(
    http_client: HttpClient, capsys: pytest.CaptureFixture[str]
) -> None:
    """Probes are public: the driver's error (host, port, user) goes to the log only."""
    from local.embedded import free_port
    from shared.platform.logging import configure_logging

    configure_logging("INFO")
    db_port, redis_port = free_port(), free_port()
    saved = set_env({
        "DATABASE_URL": f"postgresql://probe_user@127.0.0.1:{db_port}/secretdb",
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
    })
    try:
        capsys.readouterr()
        ready = http_client.request("GET", "/health/ready")
        out = capsys.readouterr().out
    finally:
        restore_env(saved)
    assert ready.status_code == 503
    assert int(ready.headers["retry-after"]) >= 1
    body = ready.json()
    assert body["status"] == "unavailable" and body["code"] == "dependency_unavailable"
    assert body["checks"] == {"database": "unavailable", "redis": "unavailable"}
    for leak in (str(db_port), str(redis_port), "127.0.0.1", "probe_user", "secretdb", "refused"):
        assert leak not in ready.text, leak
    assert str(db_port) in out and str(redis_port) in out  # the operator still learns why
    assert http_client.request("GET", "/health/ready").json()["checks"] == {"database": "ok", "redis": "ok"}
