"""Migrations: versioned, idempotent, safe when several processes start at once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.platform import migrate as migrations
from tests.support.databases import scratch_database


@pytest.fixture
def empty_database(server_urls: dict[str, str]) -> Iterator[str]:
    with scratch_database(server_urls["database"], "migrate_test") as url:
        yield url


def test_concurrent_runners_apply_each_migration_once(empty_database: str) -> None:
    results: list[list[int]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def run() -> None:
        start.wait()
        try:
            results.append(migrations.migrate(empty_database))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    expected = [m.version for m in migrations.discover()]
    assert sorted(v for r in results for v in r) == expected  # each applied by exactly one runner
    assert migrations.migrate(empty_database) == []  # and a later run has nothing to do


def test_edited_migration_is_detected(empty_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    migrations.migrate(empty_database)
    edited = tmp_path / "migrations"
    edited.mkdir()
    for m in migrations.discover():
        (edited / f"{m.version:04d}_{m.name}.sql").write_text(m.sql + "\n-- edited\n")
    monkeypatch.setattr(migrations, "MIGRATIONS_DIR", edited)
    monkeypatch.setattr(migrations.discover, "__defaults__", (edited,))
    with pytest.raises(RuntimeError, match="was edited"):
        migrations.migrate(empty_database)


@pytest.mark.parametrize(("raw", "expected"), [("", None), ("none", None), ("0", 0), ("7", 7)])
def test_prepare_threshold_can_be_switched_off_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: int | None
) -> None:
    from shared.platform.settings import Settings

    monkeypatch.setenv("DB_PREPARE_THRESHOLD", raw)
    assert Settings().db_prepare_threshold == expected
