"""The PostgreSQL connection pool: opened on first use, reused by warm Lambda environments.

Connections are autocommit: single statements commit on their own and multi-statement
work opens an explicit ``conn.transaction()``, so no request leaves a transaction open.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, cast

import psycopg
from psycopg.adapt import Buffer, Loader
from psycopg.pq import Format
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from shared.errors import ServiceUnavailable
from shared.settings import get_settings, running_in_lambda

Connection = psycopg.Connection[DictRow]
"""What :func:`connection` lends: autocommit, rows as dicts."""

_pool: ConnectionPool | None = None
_pool_lock = threading.Lock()


# When each pooled connection was last handed back (containers only; see _check).
_returned_at: weakref.WeakKeyDictionary[psycopg.Connection, float] = weakref.WeakKeyDictionary()


log = logging.getLogger("ticketing.db")
_TIMESTAMPTZ = psycopg.postgres.types["timestamptz"].oid
_FAR_PAST = datetime.min.replace(tzinfo=UTC)
_FAR_FUTURE = datetime.max.replace(tzinfo=UTC)


class _SafeTimestamptzLoader(Loader):
    """psycopg's own timestamptz loader, except that a value Python cannot hold reads as
    the nearest one it can instead of raising.

    PostgreSQL keeps years up to 294276 and ``infinity``; Python stops at 9999. One such
    stored value used to fail every listing, read, update and cancel of its row (and the
    INSERT that wrote it answered an error after committing). Migration 0006 keeps client
    timestamps in range; this keeps reads working whatever a row holds. Costs ~0.3 us per
    timestamp read (a Python call around the C loader).
    """

    format = Format.TEXT
    _base = psycopg.adapters.get_loader(_TIMESTAMPTZ, Format.TEXT)

    def __init__(self, oid: int, context: Any = None) -> None:
        super().__init__(oid, context)
        assert self._base is not None
        self._load = self._base(oid, context).load

    def load(self, data: Buffer) -> Any:
        try:
            return self._load(data)
        except psycopg.DataError:
            text = bytes(data)
            log.warning("timestamp %r cannot be represented in Python; read as the nearest one", text)
            return _FAR_PAST if text.startswith(b"-") or text.endswith(b"BC") else _FAR_FUTURE


class _SafeTimestamptzBinaryLoader(_SafeTimestamptzLoader):
    format = Format.BINARY
    _base = psycopg.adapters.get_loader(_TIMESTAMPTZ, Format.BINARY)

    def load(self, data: Buffer) -> Any:
        try:
            return self._load(data)
        except psycopg.DataError:
            micros = int.from_bytes(bytes(data), "big", signed=True)  # since 2000-01-01 UTC
            log.warning("timestamp (%d us after 2000) cannot be represented in Python", micros)
            return _FAR_PAST if micros < 0 else _FAR_FUTURE


def _configure(conn: psycopg.Connection) -> None:
    conn.prepare_threshold = get_settings().db_prepare_threshold
    conn.adapters.register_loader(_TIMESTAMPTZ, _SafeTimestamptzLoader)
    conn.adapters.register_loader(_TIMESTAMPTZ, _SafeTimestamptzBinaryLoader)


def _check(conn: psycopg.Connection) -> None:
    """Probe a connection before lending it, unless it was in use a moment ago.

    A dead socket (restarted server, idle timeout, frozen Lambda) is caught here and
    replaced. A connection returned within ``DB_CHECK_AFTER_IDLE`` seconds skips the
    probe's round trip. Under Lambda every checkout is probed: the monotonic clock may
    not advance while an environment is frozen.
    """
    idle_limit = get_settings().db_check_after_idle
    returned = _returned_at.get(conn)
    if running_in_lambda() or returned is None or time.monotonic() - returned > idle_limit:
        ConnectionPool.check_connection(conn)


def get_pool() -> ConnectionPool:
    """Return the process-wide pool, creating it on the first call."""
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                settings = get_settings()
                min_size, max_size = settings.pool_bounds
                options = f"-c statement_timeout={settings.db_statement_timeout_ms}"
                pool = ConnectionPool(
                    settings.database_url,
                    min_size=min_size,
                    max_size=max_size,
                    timeout=settings.db_pool_timeout,
                    # A frozen Lambda environment or a restarted server leaves dead sockets.
                    check=_check,
                    configure=_configure,
                    # No ``reset`` callback on purpose: with one, psycopg_pool hands every
                    # return to a worker thread, so a connection comes back later than
                    # the request that used it. connection() stamps the return instead.
                    kwargs={
                        "autocommit": True,
                        "row_factory": dict_row,
                        "connect_timeout": settings.db_connect_timeout,
                        "options": options,
                        "application_name": "ticketing",
                    },
                    open=False,
                    name="ticketing",
                )
                pool.open(wait=False)
                _pool = pool
    return _pool


def close_pool() -> None:
    """Close the pool (tests and process shutdown); the next use opens a new one."""
    global _pool
    with _pool_lock:
        if _pool is not None:
            _pool.close()
            _pool = None


@contextmanager
def connection() -> Iterator[Connection]:
    """Borrow a connection; an unreachable database becomes a 503, never a hang or a 500."""
    try:
        with get_pool().connection() as conn:
            try:
                yield cast(Connection, conn)
            finally:
                # Stamped before the pool takes it back, so _check sees it at once.
                _returned_at[conn] = time.monotonic()
    except PoolTimeout as exc:
        raise ServiceUnavailable("database_unavailable", "The database is not reachable") from exc
    except psycopg.OperationalError as exc:
        raise ServiceUnavailable("database_unavailable", "The database is not reachable") from exc
