"""The transactional outbox: write notification rows, publish committed ones to the Celery queue.

A change and its notification row commit together: producers write a contract of
:mod:`shared.notifications.contracts` with :func:`write` (or :func:`insert_select_sql`
inside their statement), never a task name of their own. Right after the commit the handler
calls :func:`publish_committed` (bounded by a short Redis timeout, never raising); any row
it could not publish stays ``published_at IS NULL`` and :func:`relay_pending` publishes it
later (relays lock rows ``FOR UPDATE SKIP LOCKED``, so several can run at once); a caller
whose statement returned the row's content calls :func:`publish_written`, which skips the
read back. Pushing comes before marking, so a crash in between publishes a row twice rather
than never: delivery is at-least-once and the worker's delivery keys make the effects
exactly-once.

Messages are Celery protocol v2 envelopes (:mod:`shared.notifications.envelope`) written to
the Redis list with redis-py: the HTTP functions never import celery or kombu.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import redis
from psycopg.types.json import Jsonb
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.notifications.contracts import Notification
from shared.notifications.envelope import task_message
from shared.platform.db import Connection, connection
from shared.platform.redis_breaker import REDIS_FAILURES
from shared.platform.settings import get_settings, running_in_lambda

log = logging.getLogger(__name__)

_clients: dict[tuple[str, float], redis.Redis] = {}
_clients_lock = threading.Lock()
# After a failed push, direct publishing pauses (the relay catches up), so a Redis that
# times out instead of refusing does not add its timeout to every booking.
_paused_until = 0.0


def redis_client() -> redis.Redis:
    """A process-wide client with short timeouts and no hidden retries."""
    settings = get_settings()
    key = (settings.redis_url, settings.outbox_publish_timeout)
    client = _clients.get(key)
    if client is None:
        with _clients_lock:
            client = _clients.get(key)
            if client is None:
                client = redis.Redis.from_url(
                    settings.redis_url,
                    socket_timeout=settings.outbox_publish_timeout,
                    socket_connect_timeout=settings.outbox_publish_timeout,
                    retry=Retry(NoBackoff(), 0),
                    retry_on_timeout=False,
                    health_check_interval=0,
                )
                _clients[key] = client
    return client


def reset() -> None:
    """Forget clients and any publish pause (tests that restart Redis, forked workers)."""
    global _paused_until
    with _clients_lock:
        for client in _clients.values():
            client.close()
        _clients.clear()
    _paused_until = 0.0


def write(conn: Connection, notification: Notification) -> int:
    """In the caller's transaction: the notification's outbox row; returns its id."""
    row = conn.execute(
        "INSERT INTO outbox (task, payload) VALUES (%s, %s) RETURNING id",
        (notification.published_as, Jsonb(notification.payload())),
    ).fetchone()
    assert row is not None
    return int(row["id"])


def insert_select_sql(contract: type[Notification], source: str, **columns: str) -> str:
    """``INSERT INTO outbox ... SELECT`` writing one ``contract`` row per row of ``source``.

    Each payload field is read from the ``source`` column of the same name, or from the
    SQL expression given for it in ``columns`` (``booking_id="id"``). For statements
    that write the change and its notification in one round trip (a booking).
    """
    unknown = columns.keys() - set(contract.field_names())
    if unknown:
        raise ValueError(f"{contract.name} has no field {sorted(unknown)}")
    pairs = ", ".join(f"'{name}', {columns.get(name, name)}" for name in contract.field_names())
    return (f"INSERT INTO outbox (task, payload)\n"
            f"    SELECT '{contract.published_as}', jsonb_build_object({pairs})\n      FROM {source}")


def row_kwargs(row: dict[str, Any]) -> dict[str, Any]:
    """Task keyword arguments of an outbox row: its payload plus its id (the delivery key)."""
    return {**row["payload"], "outbox_id": row["id"]}


def push(calls: Iterable[tuple[str, dict[str, Any]]]) -> int:
    """LPUSH task calls onto the notify queue in one round trip; raises on Redis errors."""
    queue = get_settings().notify_queue
    messages = [json.dumps(task_message(task, kwargs, queue=queue)) for task, kwargs in calls]
    if messages:
        redis_client().lpush(queue, *messages)
    return len(messages)


_PENDING_ROWS = """
SELECT id, task, payload FROM outbox WHERE id = ANY(%s) AND published_at IS NULL ORDER BY id
"""
# Rows younger than the grace period are left to the request that wrote them.
_LOCK_PENDING = """
SELECT id, task, payload FROM outbox
 WHERE published_at IS NULL AND created_at < now() - make_interval(secs => %s)
 ORDER BY id
 LIMIT %s
   FOR UPDATE SKIP LOCKED
"""
_MARK_PUBLISHED = "UPDATE outbox SET published_at = now() WHERE id = ANY(%s)"
_MARK_FAILED = (
    "UPDATE outbox SET attempts = attempts + 1, last_error = %s WHERE id = ANY(%s)"
)


def _publish_rows(conn: Connection, rows: Sequence[dict[str, Any]]) -> bool:
    """Push rows, then mark them published; on a Redis error record it and leave them."""
    global _paused_until
    ids = [row["id"] for row in rows]
    try:
        push((row["task"], row_kwargs(row)) for row in rows)
    except REDIS_FAILURES as exc:
        _paused_until = time.monotonic() + get_settings().outbox_publish_pause
        conn.execute(_MARK_FAILED, (f"{type(exc).__name__}: {exc}"[:500], ids))
        log.warning("outbox rows %s left for the relay: %s", ids, exc)
        return False
    conn.execute(_MARK_PUBLISHED, (ids,))
    _paused_until = 0.0
    return True


class BackgroundPublisher:
    """Publishes committed outbox rows from a thread, many per Redis and database round trip.

    The request only enqueues ids, so a booking pays nothing for publishing. The thread
    drains what has queued up, reads those rows, pushes them in one LPUSH and marks them
    in one UPDATE. Rows a dying process never published are the relay's, as always.
    Not for Lambda: an environment is frozen between invocations, threads included.
    """

    def __init__(self, max_batch: int = 500) -> None:
        self._queue: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._max_batch = max_batch
        self._thread: threading.Thread | None = None
        self._done = threading.Condition()
        self._pending = 0

    def submit(self, outbox_ids: Sequence[int]) -> None:
        with self._done:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="outbox-publisher", daemon=True)
                self._thread.start()
            self._pending += len(outbox_ids)
        for outbox_id in outbox_ids:
            self._queue.put(outbox_id)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything submitted so far was handled (tests, shutdown)."""
        with self._done:
            return self._done.wait_for(lambda: self._pending == 0, timeout)

    def _run(self) -> None:
        while True:
            ids = [self._queue.get()]
            while len(ids) < self._max_batch:
                try:
                    ids.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                if time.monotonic() >= _paused_until:
                    with connection() as conn:
                        rows = conn.execute(_PENDING_ROWS, (ids,)).fetchall()
                        if rows:
                            _publish_rows(conn, rows)
            except Exception:
                log.exception("publishing outbox rows %s failed; the relay will retry", ids[:10])
            finally:
                with self._done:
                    self._pending -= len(ids)
                    self._done.notify_all()


_background = BackgroundPublisher()


def flush_background(timeout: float = 5.0) -> bool:
    return _background.flush(timeout)


def publish_committed(conn: Connection, outbox_ids: Sequence[int]) -> bool:
    """Publish just-committed outbox rows; never raises, the relay covers failures.

    In a long-running process the rows go to the :class:`BackgroundPublisher` (returns
    True once queued); under Lambda, or with ``OUTBOX_PUBLISH=inline``, they are pushed
    before the request answers.

    Three round trips and no row locks: the relay leaves rows younger than
    ``OUTBOX_RELAY_GRACE`` seconds alone, so the two rarely both publish a row (and a
    double publish is harmless). ``conn`` must not be inside the writing transaction.
    """
    if not outbox_ids or time.monotonic() < _paused_until:
        return False
    try:
        if get_settings().outbox_publish == "background" and not running_in_lambda():
            _background.submit(outbox_ids)  # may fail to start its thread: caught below
            return True
        rows = conn.execute(_PENDING_ROWS, (list(outbox_ids),)).fetchall()
        return _publish_rows(conn, rows) if rows else False
    except Exception:  # the change is committed: a publish problem must not fail the request
        log.exception("publishing outbox rows %s failed; the relay will retry", outbox_ids)
        return False


def publish_written(conn: Connection, written: Sequence[tuple[int, Notification]]) -> bool:
    """:func:`publish_committed` for rows whose content the caller holds: ``(outbox_id,
    notification)`` as the statement that wrote them returned it.

    Two round trips instead of three (no read back): ~85 us of CPU less per publish under
    Lambda (348 -> 265 us, medians of 4 alternating rounds of 1,000). The read back's
    ``published_at IS NULL`` only guarded against a relay that already published the row,
    which the relay's grace period makes rare, and a double publish is harmless (delivery
    keys); a Redis failure still leaves the row pending.
    """
    if not written or time.monotonic() < _paused_until:
        return False
    if get_settings().outbox_publish == "background" and not running_in_lambda():
        return publish_committed(conn, [outbox_id for outbox_id, _ in written])
    try:
        rows = [{"id": outbox_id, "task": notification.published_as, "payload": notification.payload()}
                for outbox_id, notification in written]
        return _publish_rows(conn, rows)
    except Exception:  # the change is committed: a publish problem must not fail the request
        log.exception("publishing outbox rows %s failed; the relay will retry", [i for i, _ in written])
        return False


def publish(outbox_ids: Sequence[int]) -> bool:
    """:func:`publish_committed` on a pooled connection; never raises (database down too)."""
    if not outbox_ids or time.monotonic() < _paused_until:
        return False
    try:
        with connection() as conn:
            return publish_committed(conn, outbox_ids)
    except Exception:
        log.exception("publishing outbox rows %s failed; the relay will retry", outbox_ids)
        return False


def relay_pending(
    *, batch_size: int | None = None, min_age: float | None = None,
    max_batches: int | None = None,
) -> int:
    """Publish unpublished outbox rows, oldest first, batch by batch; returns how many.

    Rows are locked ``FOR UPDATE SKIP LOCKED`` while pushed, so relays can run side by
    side. Stops quietly at the first Redis failure: the rows stay pending.
    """
    settings = get_settings()
    batch_size = batch_size or settings.relay_batch_size
    min_age = settings.outbox_relay_grace if min_age is None else min_age
    published = batches = 0
    while max_batches is None or batches < max_batches:
        batches += 1
        with connection() as conn, conn.transaction():
            rows = conn.execute(_LOCK_PENDING, (min_age, batch_size)).fetchall()
            if not rows or not _publish_rows(conn, rows):
                break
        published += len(rows)
        if len(rows) < batch_size:
            break
    return published
