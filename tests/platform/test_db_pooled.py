"""Behind a transaction pooler (PgBouncer, RDS Proxy): the settings that let connections work there.

``python -m bench.lambda_path`` runs the booking through PgBouncer with both (tests/bench).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.platform import db
from shared.platform.settings import get_settings


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    get_settings.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    get_settings.cache_clear()


def test_statement_timeout_goes_as_a_startup_option_by_default(settings_env: pytest.MonkeyPatch) -> None:
    settings_env.delenv("DB_STARTUP_OPTIONS", raising=False)
    settings_env.setenv("DB_STATEMENT_TIMEOUT_MS", "7000")
    assert db._connect_kwargs()["options"] == "-c statement_timeout=7000"


def test_no_startup_option_for_a_pooler_that_refuses_them(settings_env: pytest.MonkeyPatch) -> None:
    """PgBouncer before 1.20 refuses a connection carrying ``options``; the role sets the timeout."""
    settings_env.setenv("DB_STARTUP_OPTIONS", "false")
    kwargs = db._connect_kwargs()
    assert "options" not in kwargs
    assert kwargs["autocommit"] is True and kwargs["connect_timeout"] == get_settings().db_connect_timeout


@pytest.mark.parametrize(("server_ms", "complains"), [(0, True), (60_000, True), (5_000, False)])
def test_without_the_startup_option_a_missing_server_timeout_is_logged(
    database: str, caplog: pytest.LogCaptureFixture, server_ms: int, complains: bool
) -> None:
    """With DB_STARTUP_OPTIONS=false nothing else bounds a statement on the server: say so."""
    import psycopg

    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(f"SET statement_timeout = {server_ms}")
        with caplog.at_level("ERROR", logger="shared.platform.db"):
            db._check_statement_timeout(conn, 10_000)
    assert any("statement_timeout" in r.getMessage() for r in caplog.records) is complains
