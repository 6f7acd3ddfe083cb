"""Databases of a test's own: a scratch database on the suite's server, a whole throwaway server.

Tests that run migrations from nothing, stop or freeze PostgreSQL, or start a stack need a
database no other test shares; every one is dropped (or its server removed) afterwards.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from local.embedded import Server, start_postgres
from shared.platform import migrate as migrations


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` (for Redis: the db number)."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@contextmanager
def scratch_database(admin_url: str, prefix: str) -> Iterator[str]:
    """An empty database named ``prefix_<random>``; dropped with its connections afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def migrate_before(url: str, version: int, folder: Path) -> None:
    """Apply only the migrations older than ``version`` (copied to ``folder``), as an older release did."""
    folder.mkdir()
    for m in migrations.discover():
        if m.version < version:
            (folder / f"{m.version:04d}_{m.name}.sql").write_text(m.sql)
    default = migrations.discover.__defaults__
    migrations.discover.__defaults__ = (folder,)
    try:
        migrations.migrate(url)
    finally:
        migrations.discover.__defaults__ = default


@contextmanager
def throwaway_postgres(prefix: str) -> Iterator[tuple[Path, Server, str]]:
    """An embedded PostgreSQL of the test's own (free to stop or freeze), with ``ticketing`` migrated.

    Yields its folder, the server and the database URL; the server is stopped and the folder removed.
    """
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    server = start_postgres(tmp / "pg", durable=False)
    try:
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE ticketing")
        url = with_database(server.url, "ticketing")
        migrations.migrate(url)
        yield tmp, server, url
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
