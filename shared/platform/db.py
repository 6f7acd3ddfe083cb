"""The PostgreSQL connection pool: opened on first use, reused by warm Lambda environments.

Connections are autocommit: single statements commit on their own and multi-statement
work opens an explicit ``conn.transaction()``, so no request leaves a transaction open.

Every :func:`connection` block has a client-side deadline (``DB_REQUEST_DEADLINE_SECONDS``)
covering the wait for a connection, the pool's probe, every statement and the commit.
``statement_timeout`` is enforced by the server, so a server that stops answering (frozen
process, lost host) never sends it; TCP keepalives catch a dead host but not a stopped
process on a live one (its kernel still ACKs). At the deadline one watchdog thread shuts
the connection's socket down: the blocked call fails at once, the pool discards the
connection and the request answers 503 ``database_unavailable`` with ``Retry-After``.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import socket
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
from psycopg.rows import DictRow, dict_row, tuple_row
from psycopg_pool import ConnectionPool, PoolTimeout

from shared.platform.errors import ServiceUnavailable
from shared.platform.settings import get_settings, running_in_lambda

log = logging.getLogger(__name__)

Connection = psycopg.Connection[DictRow]
"""What :func:`connection` lends: autocommit, rows as dicts."""

_pool: ConnectionPool | None = None
_pool_lock = threading.Lock()

# A clock of our own: tests that patch ``time.monotonic`` must not fire or stall deadlines.
_now = time.monotonic

# When each pooled connection was last handed back (containers only; see _check).
_returned_at: weakref.WeakKeyDictionary[psycopg.Connection, float] = weakref.WeakKeyDictionary()


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


class DeadlineExceeded(ServiceUnavailable):
    """The database did not answer within the deadline; the connection was cut.

    ``sent`` is True when the cut came after the connection was lent, so a statement may
    have reached the server: a write's outcome is then unknown (it may still commit when
    a frozen server resumes) and must not be retried or have its idempotency key freed.
    """

    def __init__(self, sent: bool) -> None:
        message = "The database did not answer in time"
        if sent:
            message += (
                "; a change this request asked for may still be made. "
                "A retry with the same Idempotency-Key replays it if so"
            )
        super().__init__("database_unavailable", message)
        self.sent = sent


class OutcomeUnknown(ServiceUnavailable):
    """A write failed after it may have committed: retry only with the same Idempotency-Key."""


def outcome_unknown(err: BaseException) -> bool:
    """Whether ``err`` leaves a write possibly committed (never retry it, never free its key)."""
    return isinstance(err, OutcomeUnknown) or (isinstance(err, DeadlineExceeded) and err.sent)


class _Cutoff:
    """One armed deadline: the connection to cut if it is still in use when it passes."""

    __slots__ = ("at", "conn", "disarmed", "fired")

    def __init__(self, at: float) -> None:
        self.at = at
        self.conn: psycopg.Connection | None = None
        self.fired = False
        self.disarmed = False


def _cut(conn: psycopg.Connection) -> None:
    """Shut the socket down so a call blocked on it fails now with an OperationalError.

    Done on a duplicate descriptor: ``shutdown`` acts on the socket itself, while libpq
    keeps owning (and later closes) its own descriptor, so no descriptor is ever closed
    under it or reused by another connection. ``conn.cancel()`` is no use here: it opens
    a new connection to the same unresponsive server (and would block this thread).
    """
    try:
        fd = os.dup(conn.fileno())
    except (OSError, psycopg.Error):
        return  # already closed: nothing is blocked on it
    with socket.socket(fileno=fd) as sock, contextlib.suppress(OSError):  # OSError: not connected any more
        sock.shutdown(socket.SHUT_RDWR)


class _Watchdog:
    """One thread and a heap of deadlines; arming and disarming is a push and a flag.

    A disarmed deadline stays in the heap until it is due (no search to remove it): at
    N database steps a second that is N x DB_REQUEST_DEADLINE_SECONDS small entries.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, _Cutoff]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, at: float) -> _Cutoff:
        cutoff = _Cutoff(at)
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="db-deadlines", daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, (at, next(self._seq), cutoff))
            if self._heap[0][2] is cutoff:
                self._cond.notify()
        return cutoff

    def attach(self, cutoff: _Cutoff, conn: psycopg.Connection) -> None:
        """Name the connection the armed work now blocks on; cut at once if already late."""
        with self._cond:
            cutoff.conn = conn
            if cutoff.fired and not cutoff.disarmed:
                _cut(conn)

    def disarm(self, cutoff: _Cutoff) -> None:
        """After this returns the connection is never cut (it may go back to the pool)."""
        with self._cond:
            cutoff.disarmed = True
            cutoff.conn = None

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > _now():
                    self._cond.wait(self._heap[0][0] - _now() if self._heap else None)
                _, _, cutoff = heapq.heappop(self._heap)
                if cutoff.disarmed:
                    continue
                cutoff.fired = True
                if cutoff.conn is not None:
                    log.warning("database deadline passed; cutting the connection")
                    try:
                        _cut(cutoff.conn)
                    except Exception:  # this thread must outlive any one connection
                        log.exception("cutting a connection at its deadline failed")


_watchdog = _Watchdog()
_current = threading.local()  # the cutoff of the connection() block this thread is in


def _after_fork() -> None:
    """A forked child gets fresh deadlines: its parent's lock may have been held mid-fork."""
    global _watchdog
    _watchdog = _Watchdog()


os.register_at_fork(after_in_child=_after_fork)


def _configure(conn: psycopg.Connection) -> None:
    settings = get_settings()
    conn.prepare_threshold = settings.db_prepare_threshold
    conn.adapters.register_loader(_TIMESTAMPTZ, _SafeTimestamptzLoader)
    conn.adapters.register_loader(_TIMESTAMPTZ, _SafeTimestamptzBinaryLoader)
    if not settings.db_startup_options and not _timeout_checked.is_set():
        _check_statement_timeout(conn, settings.db_statement_timeout_ms)


_timeout_checked = threading.Event()


def _check_statement_timeout(conn: psycopg.Connection, wanted_ms: int) -> None:
    """Without the startup option the role or the pooler must set ``statement_timeout``: say
    loudly (once per process) when it does not, since a cut-off write could then still commit
    long after its idempotency key's lock ran out."""
    _timeout_checked.set()
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute("SELECT setting::bigint FROM pg_settings WHERE name = 'statement_timeout'").fetchone()
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.rollback()
    found = int(row[0]) if row else 0
    if found == 0 or found > wanted_ms:
        log.error(
            "DB_STARTUP_OPTIONS=false but the server's statement_timeout is %s ms (wanted at most %s): "
            "set it on the role (ALTER ROLE ... SET statement_timeout) or in the pooler",
            found or "no limit,", wanted_ms,
        )


def _check(conn: psycopg.Connection) -> None:
    """Probe a connection before lending it, unless it was in use a moment ago.

    A dead socket (restarted server, idle timeout, frozen Lambda) is caught here and
    replaced. A connection returned within ``DB_CHECK_AFTER_IDLE`` seconds skips the
    probe's round trip. Under Lambda every checkout is probed: the monotonic clock may
    not advance while an environment is frozen. The probe is under the borrower's
    deadline too: on a hung server it blocks like any query.
    """
    idle_limit = get_settings().db_check_after_idle
    returned = _returned_at.get(conn)
    if running_in_lambda() or returned is None or time.monotonic() - returned > idle_limit:
        cutoff: _Cutoff | None = getattr(_current, "cutoff", None)
        if cutoff is not None:
            if cutoff.fired:
                raise psycopg.OperationalError("database deadline passed")
            _watchdog.attach(cutoff, conn)
        ConnectionPool.check_connection(conn)


def _connect_kwargs() -> dict[str, object]:
    """libpq parameters: autocommit, dict rows, and every network wait bounded.

    Keepalives notice a dead host or a broken network on an idle or waiting connection;
    ``tcp_user_timeout`` drops one whose sent data stays unacknowledged. Neither notices a
    stopped server process on a live host: the request deadline does.
    """
    settings = get_settings()
    # Behind PgBouncer (DB_STARTUP_OPTIONS=false) the role or the pooler sets statement_timeout.
    options = {"options": f"-c statement_timeout={settings.db_statement_timeout_ms}"}
    if not settings.db_startup_options:
        options = {}
    return {
        "autocommit": True,
        "row_factory": dict_row,
        "connect_timeout": settings.db_connect_timeout,
        **options,
        "application_name": "ticketing",
        "keepalives": 1,
        "keepalives_idle": settings.db_keepalives_idle,
        "keepalives_interval": settings.db_keepalives_interval,
        "keepalives_count": settings.db_keepalives_count,
        "tcp_user_timeout": settings.db_tcp_user_timeout_ms,
    }


def get_pool() -> ConnectionPool:
    """Return the process-wide pool, creating it on the first call."""
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                settings = get_settings()
                min_size, max_size = settings.pool_bounds
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
                    kwargs=_connect_kwargs(),
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
def bounded(conn: psycopg.Connection, seconds: float) -> Iterator[None]:
    """Cut ``conn`` if the block runs past ``seconds``: for connections outside the pool
    (the readiness probe), which a frozen server would otherwise hold forever."""
    cutoff = _watchdog.arm(_now() + seconds)
    _watchdog.attach(cutoff, conn)
    try:
        yield
    finally:
        _watchdog.disarm(cutoff)


@contextmanager
def connection() -> Iterator[Connection]:
    """Borrow a connection; an unreachable or unresponsive database becomes a 503, never a hang.

    The whole block (waiting for a connection, its probe, the statements, the commit) is
    bounded by ``DB_REQUEST_DEADLINE_SECONDS``; past it, :class:`DeadlineExceeded`.
    """
    settings = get_settings()
    budget = settings.db_request_deadline_seconds
    cutoff = _watchdog.arm(_now() + budget)
    outer = getattr(_current, "cutoff", None)
    _current.cutoff = cutoff
    lent = False
    try:
        with get_pool().connection(timeout=min(settings.db_pool_timeout, budget)) as conn:
            lent = True
            _watchdog.attach(cutoff, conn)
            try:
                yield cast(Connection, conn)
            finally:
                _watchdog.disarm(cutoff)  # before the pool can lend it to anyone else
                # Stamped before the pool takes it back, so _check sees it at once.
                _returned_at[conn] = time.monotonic()
    except Exception as exc:
        if cutoff.fired:  # whatever the cut surfaced as
            raise DeadlineExceeded(sent=lent) from exc
        if isinstance(exc, PoolTimeout | psycopg.OperationalError):
            raise ServiceUnavailable("database_unavailable", "The database is not reachable") from exc
        raise
    finally:
        if not cutoff.disarmed:  # never lent (pool timeout, failed probe)
            _watchdog.disarm(cutoff)
        _current.cutoff = outer
