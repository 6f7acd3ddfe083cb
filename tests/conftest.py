"""Test session wiring: real PostgreSQL and Redis, a fresh database per session.

``DATABASE_URL`` / ``REDIS_URL`` from the environment are used when set (CI may point
them at running services); otherwise real embedded servers start in a temporary folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from shared.platform.settings import generate_jwt_secret
from tests.support.clients import Client, HttpClient, LambdaClient
from tests.support.clock import FakeClock
from tests.support.databases import scratch_database

# Cheap hashing for fixtures that register many users; set before settings are read.
os.environ.setdefault("PASSWORD_HASH_TIME_COST", "1")
os.environ.setdefault("PASSWORD_HASH_MEMORY_KIB", "1024")
# A fresh random secret per session: no string in the repository signs a token the suite accepts.
os.environ.setdefault("JWT_SECRET", generate_jwt_secret())
os.environ.setdefault("APP_ENV", "test")
os.environ.setdefault("DB_POOL_MAX", "20")
# Existing flows register with the README's short passwords; tests/accounts/test_passwords.py
# checks the defaults (8 characters, common passwords refused) with these unset.
os.environ.setdefault("PASSWORD_MIN_LENGTH", "3")
# /metrics is served only to this token (tests/platform/test_metrics.py scrapes with it).
os.environ.setdefault("METRICS_TOKEN", "test-metrics-" + uuid.uuid4().hex)
# Whole-suite traffic comes from one IP: limits high enough not to interfere; the
# rate-limit tests (tests/web/test_ratelimit.py) set their own.
for _limit in ("LOGIN_PER_IP", "LOGIN_PER_ACCOUNT", "FAILED_LOGIN_PER_ACCOUNT",
               "FAILED_LOGIN_PER_ACCOUNT_IP", "BOOKING_PER_USER", "BOOKING_PER_IP",
               "REGISTER_PER_IP", "VERIFY_PER_IP", "VERIFICATION_RESEND", "REFRESH_PER_IP"):
    os.environ.setdefault(f"RATE_LIMIT_{_limit}", "1000000/60")
os.environ.setdefault("ACCESS_CODE_ATTEMPTS", "1000000")


@pytest.fixture(scope="session")
def server_urls() -> Iterator[dict[str, str]]:
    """Admin URLs of the PostgreSQL and Redis servers the suite talks to."""
    from local.embedded import start_postgres, start_redis

    started = []
    tmp = Path(tempfile.mkdtemp(prefix="ticketing-test-"))
    try:
        database_url = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
        redis_url = os.environ.get("TEST_REDIS_URL") or os.environ.get("REDIS_URL")
        if not database_url:
            pg = start_postgres(tmp / "postgres", durable=False)
            started.append(pg)
            database_url = pg.url
        if not redis_url:
            rd = start_redis(tmp / "redis", durable=False)
            started.append(rd)
            redis_url = rd.url
        yield {"database": database_url, "redis": redis_url, "tmp": str(tmp)}
    finally:
        for server in reversed(started):
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def database(server_urls: dict[str, str]) -> Iterator[str]:
    """A database of its own for this session, migrated, dropped at the end."""
    from shared.platform import db
    from shared.platform.migrate import migrate
    from shared.platform.settings import get_settings

    with scratch_database(server_urls["database"], "ticketing_test") as url:
        os.environ["DATABASE_URL"] = url
        os.environ["REDIS_URL"] = server_urls["redis"]
        get_settings.cache_clear()
        migrate(url)
        yield url
        db.close_pool()


@pytest.fixture
def sql(database: str) -> Iterator[psycopg.Connection]:
    """A direct connection for assertions on what is really stored."""
    from psycopg.rows import dict_row

    with psycopg.connect(database, autocommit=True, row_factory=dict_row) as conn:
        yield conn


@pytest.fixture(scope="session")
def http_client(database: str) -> Iterator[HttpClient]:
    """The local router (every function's routes) served over real HTTP."""
    from local.app import app

    client = HttpClient(app)
    yield client
    client.close()


@pytest.fixture(scope="session")
def emulated_client(database: str) -> Iterator[HttpClient]:
    """Real HTTP through the Lambda emulator: API Gateway v2 events into Mangum handlers."""
    from local.emulate import LambdaEmulator

    client = HttpClient(LambdaEmulator(), name="emulated")
    yield client
    client.close()


@pytest.fixture(params=["lambda-v2", "lambda-v1", "http", "emulated"])
def client(request: pytest.FixtureRequest, database: str) -> Client:
    """Every transport in turn: the same flow must behave the same through each."""
    if request.param == "http":
        return request.getfixturevalue("http_client")  # type: ignore[no-any-return]
    if request.param == "emulated":
        return request.getfixturevalue("emulated_client")  # type: ignore[no-any-return]
    return LambdaClient("v2" if request.param == "lambda-v2" else "v1")


@pytest.fixture
def v2(database: str) -> LambdaClient:
    return LambdaClient("v2")


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    import shared.platform.clock

    clock = FakeClock()
    monkeypatch.setattr(shared.platform.clock, "now", clock.now)
    return clock


@pytest.fixture
def json_logging() -> Iterator[None]:
    """JSON request logs at INFO (other suites' workers may have re-configured the root
    logger: Celery hijacks it); modules that read log lines use it autouse."""
    import logging

    from shared.platform.logging import configure_logging

    root = logging.getLogger()
    level = root.level
    configure_logging("INFO")
    yield
    root.setLevel(level)
