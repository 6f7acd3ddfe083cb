"""Idempotency keys for booking-creating POSTs: a retried request replays the first answer.

A key belongs to one user. The first request with it takes a lease on the key's row
(``in_progress``, a :class:`KeyLease`); the SQL that creates the booking or hold also
completes that row in the same statement (:func:`completion_cte`), so a committed booking
and its stored answer cannot part. A refusal (4xx) is stored too; a server-side failure
frees the key for a retry. A lease left ``in_progress`` by a crashed process may be taken
over after ``locked_until``,
which is well past the pool and statement timeouts, so the first attempt can no longer
commit by then.

On a server, the leases of concurrent requests are taken together (:class:`_Leaser`): one
statement and one worker-thread hop for the keys of a loop iteration, as the lanes share a
booking transaction. Under Mangum each request takes its own, on its loop.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from shared.platform import clock
from shared.platform.db import Connection, connection, outcome_unknown
from shared.platform.errors import AppError, Conflict, ServiceUnavailable, Unprocessable
from shared.platform.settings import get_settings
from shared.platform.threads import Offload, in_thread

REPLAY_HEADER = "Idempotent-Replayed"

log = logging.getLogger(__name__)


@dataclass
class KeyLease:
    """This request's ownership of a key, until ``locked_until``; passed down to the SQL that completes it.

    ``completed`` is set by the code whose statement stored the answer (the completion
    CTE); otherwise :func:`run` stores it after the action returns.
    """

    user_id: int
    key: str
    owner: uuid.UUID
    completed: bool = False

    def params(self) -> dict[str, Any]:
        return {"idem_user_id": self.user_id, "idem_key": self.key, "idem_owner": self.owner}


def completion_cte(source: str, status: int = 201, *, keys_from: str | None = None) -> str:
    """A CTE that stores ``source``'s row as the key's answer, in the creating statement.

    The key is the statement's parameters (:meth:`KeyLease.params`), or, for a statement
    that creates many rows, each row's own: ``keys_from`` names a relation joined on ``id``
    whose ``idem_user_id``, ``idem_key`` and ``idem_owner`` columns are the row's key.
    """
    if keys_from is None:
        rows, key = f"{source} s", "%(idem_{})s"
    else:
        rows, key = f"{source} s JOIN {keys_from} r ON r.id = s.id", "r.idem_{}"
    return f""", idem AS (
    UPDATE idempotency_keys k
       SET state = 'done', response_status = {status}, response_body = to_jsonb(s)
      FROM {rows}
     WHERE k.user_id = {key.format("user_id")} AND k.key = {key.format("key")} AND k.owner = {key.format("owner")}
)"""


class Replayed(AppError):
    """A stored refusal replayed: same status, code, message and details as the first time."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("code", "error"), body.get("message", ""), **(body.get("details") or {}))
        self.status_code = status
        self.headers = {REPLAY_HEADER: "true"}


def fingerprint(method: str, path: str, body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{method} {path}\n{canonical}".encode()).hexdigest()


# When an existing key is taken over: it expired, or its holder's lock ran out on the same request.
_TAKE_OVER_SQL = """
ON CONFLICT (user_id, key) DO UPDATE
   SET fingerprint = EXCLUDED.fingerprint, owner = EXCLUDED.owner, state = 'in_progress',
       response_status = NULL, response_body = NULL, created_at = now(),
       locked_until = EXCLUDED.locked_until, expires_at = EXCLUDED.expires_at
 WHERE k.expires_at <= %(now)s
    OR (k.state = 'in_progress' AND k.locked_until <= %(now)s AND k.fingerprint = EXCLUDED.fingerprint)
"""

_ACQUIRE_SQL = f"""
INSERT INTO idempotency_keys AS k
       (user_id, key, fingerprint, owner, state, locked_until, expires_at)
VALUES (%(user_id)s, %(key)s, %(fingerprint)s, %(owner)s, 'in_progress', %(locked_until)s, %(expires_at)s)
{_TAKE_OVER_SQL}RETURNING owner
"""


def _acquire(
    user_id: int, key: str, print_: str, *, lock_wait_ms: int | None = None
) -> KeyLease | tuple[int, dict[str, Any]]:
    """Own the key, or return the stored (status, body) to replay; raise on misuse.

    ``lock_wait_ms``: wait at most that long for the key's row while another statement
    holds it (a request with this key is being written), then answer 409 in progress.
    """
    owner = uuid.uuid4()
    params = {"user_id": user_id, "key": key, "fingerprint": print_, "owner": owner, **_lease_window()}
    with connection() as conn:
        if lock_wait_ms is None:
            acquired = conn.execute(_ACQUIRE_SQL, params).fetchone() is not None
        else:
            try:
                with _waiting_at_most(conn, lock_wait_ms):
                    acquired = conn.execute(_ACQUIRE_SQL, params).fetchone() is not None
            except _CONTENDED as exc:
                raise _in_progress() from exc
        if acquired:
            return KeyLease(user_id, key, owner)
        row = conn.execute(
            "SELECT fingerprint, state, response_status, response_body FROM idempotency_keys "
            "WHERE user_id = %s AND key = %s",
            (user_id, key),
        ).fetchone()
    if row is None:  # expired and deleted between the two statements: try once more
        return _acquire(user_id, key, print_, lock_wait_ms=lock_wait_ms)
    return _stored(row, print_)


def _lease_window() -> dict[str, datetime]:
    """``now`` and the ends of a lease taken now: its lock and the key's life."""
    settings = get_settings()
    now = clock.now()
    return {
        "now": now,
        "locked_until": now + timedelta(seconds=settings.idempotency_lock_seconds),
        "expires_at": now + timedelta(seconds=settings.idempotency_ttl_seconds),
    }


@contextmanager
def _waiting_at_most(conn: Connection, ms: int) -> Iterator[None]:
    """A transaction whose statements wait at most ``ms`` for a row lock (then LockNotAvailable)."""
    with conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = '{int(ms)}ms'")
        yield


def _in_progress() -> Conflict:
    err = Conflict("request_in_progress", "A request with this Idempotency-Key is still being processed")
    err.headers = {"Retry-After": "1"}
    return err


def _stored(row: dict[str, Any], print_: str) -> tuple[int, dict[str, Any]]:
    """A key someone else holds: its stored (status, body) to replay; raise on misuse or while in progress."""
    if row["fingerprint"] != print_:
        raise Unprocessable(
            "idempotency_key_reused",
            "This Idempotency-Key was used with a different request",
        )
    if row["state"] != "done":
        raise _in_progress()
    return row["response_status"], row["response_body"]


# Many keys in one statement: the same rule as _ACQUIRE_SQL, row by row. A batch never holds one
# (user, key) twice (ON CONFLICT DO UPDATE may not touch a row twice in one statement), and its
# rows come in key order, so two processes' batches lock the keys they share in the same order.
_ACQUIRE_MANY_SQL = f"""
INSERT INTO idempotency_keys AS k
       (user_id, key, fingerprint, owner, state, locked_until, expires_at)
SELECT a.user_id, a.key, a.fingerprint, a.owner, 'in_progress', %(locked_until)s, %(expires_at)s
  FROM unnest(%(user_ids)s::bigint[], %(keys)s::text[], %(fingerprints)s::text[], %(owners)s::uuid[])
       WITH ORDINALITY AS a(user_id, key, fingerprint, owner, n)
 ORDER BY a.n
{_TAKE_OVER_SQL}RETURNING user_id, key
"""

_HELD_SQL = """
SELECT user_id, key, fingerprint, state, response_status, response_body FROM idempotency_keys
 WHERE (user_id, key) IN (SELECT * FROM unnest(%s::bigint[], %s::text[]))
"""

_Ask = tuple[int, str, str]  # user_id, key, fingerprint
_Acquired = KeyLease | tuple[int, dict[str, Any]] | AppError


# How long a batch of keys may wait for a row another statement holds before it takes its
# keys one by one instead, each waiting as long again at most (then 409 in progress): a batch
# locking several keys must not wait in a cycle with another multi-key writer (the purge, a
# booking batch's completion), nor let one busy key strand the others for the deadline.
_BATCH_LOCK_WAIT_MS = 100
_CONTENDED = (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected)


def _acquire_many(asks: list[_Ask]) -> list[_Acquired]:
    """:func:`_acquire` for keys all distinct, in one statement (and one SELECT for those not taken).

    Each ask gets what it would have got alone: its lease, the stored answer, or the error
    (422 reuse, 409 in progress) as a value. Trouble with the database is raised, for all.
    """
    if len(asks) == 1:  # alone: the one-row statement is cheaper
        return [_capture(_acquire, *asks[0])]
    ordered = sorted(asks)
    owners = {(u, k): uuid.uuid4() for u, k, _ in ordered}
    params = {
        "user_ids": [u for u, _, _ in ordered],
        "keys": [k for _, k, _ in ordered],
        "fingerprints": [f for _, _, f in ordered],
        "owners": list(owners.values()),
        **_lease_window(),
    }
    with connection() as conn:
        try:
            with _waiting_at_most(conn, _BATCH_LOCK_WAIT_MS):
                taken = {(r["user_id"], r["key"]) for r in conn.execute(_ACQUIRE_MANY_SQL, params).fetchall()}
        except _CONTENDED:
            contended = True
        else:
            contended = False
            rest = [(u, k) for u, k, _ in ordered if (u, k) not in taken]
            held = {}
            if rest:
                rows = conn.execute(_HELD_SQL, ([u for u, _ in rest], [k for _, k in rest])).fetchall()
                held = {(r["user_id"], r["key"]): r for r in rows}
    if contended:
        return [_capture(functools.partial(_acquire, lock_wait_ms=_BATCH_LOCK_WAIT_MS), *ask) for ask in asks]
    out: list[_Acquired] = []
    for user_id, key, print_ in asks:
        if (user_id, key) in taken:
            out.append(KeyLease(user_id, key, owners[user_id, key]))
        elif (row := held.get((user_id, key))) is None:  # expired and deleted meanwhile: alone, again
            out.append(_capture(_acquire, user_id, key, print_))
        else:
            out.append(_capture(_stored, row, print_))
    return out


def _capture(func: Callable[..., KeyLease | tuple[int, dict[str, Any]]], *args: Any) -> _Acquired:
    try:
        return func(*args)
    except (Unprocessable, Conflict) as err:
        return err


_BATCH_MAX = 1024  # keys per statement; more wait for the next


class _Leaser:
    """The key acquisitions of one event loop, batched: while one batch is on a worker thread,
    the requests that arrive wait for the next, which takes them all in one statement.

    An idle leaser sends at the next loop iteration, so the acquisitions of one iteration go
    together. Every wait is bounded by the database deadline (:func:`shared.platform.db.connection`):
    a batch that ends without an answer ends the wait of those queued behind it too (503).
    """

    def __init__(self) -> None:
        self._pending: list[tuple[_Ask, asyncio.Future[_Acquired]]] = []
        self._busy = False
        self._tasks: set[asyncio.Future[Any]] = set()  # referenced until done

    async def acquire(self, user_id: int, key: str, print_: str) -> KeyLease | tuple[int, dict[str, Any]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_Acquired] = loop.create_future()
        self._pending.append(((user_id, key, print_), future))
        if not self._busy:
            self._busy = True
            loop.call_soon(self._send)
        acquired = await future
        if isinstance(acquired, AppError):
            raise acquired
        return acquired

    def _send(self) -> None:
        """Start the next batch: the waiting asks, a key at most once (a repeat waits for the next)."""
        batch: list[tuple[_Ask, asyncio.Future[_Acquired]]] = []
        later: list[tuple[_Ask, asyncio.Future[_Acquired]]] = []
        seen: set[tuple[int, str]] = set()
        for ask, future in self._pending:
            if future.done():  # its request went away before it was sent: nothing to undo
                continue
            if len(batch) >= _BATCH_MAX or ask[:2] in seen:
                later.append((ask, future))
            else:
                seen.add(ask[:2])
                batch.append((ask, future))
        self._pending = later
        if not batch:
            self._busy = False
            return
        self._start(functools.partial(_acquire_many, [ask for ask, _ in batch]), functools.partial(self._answer, batch))

    def _answer(self, batch: list[tuple[_Ask, asyncio.Future[_Acquired]]], work: asyncio.Future[Any]) -> None:
        if work.cancelled():  # the loop is stopping
            for _, future in batch + self._pending:
                future.cancel()
            self._pending, self._busy = [], False
            return
        exc = work.exception()
        if exc is not None:  # each request gets the failure, as from its own statement
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if isinstance(exc, ServiceUnavailable):
                # The database did not answer (deadline, pool timeout): those that queued
                # meanwhile hear 503 now, unsent, rather than wait a deadline of their own.
                for _, future in self._pending:
                    if not future.done():
                        future.set_exception(
                            ServiceUnavailable("database_unavailable", "The database did not answer in time")
                        )
                self._pending = []
        else:
            for (_, future), acquired in zip(batch, work.result(), strict=True):
                if not future.done():
                    future.set_result(acquired)
                elif isinstance(acquired, KeyLease):  # its request went away: free the key it never used
                    self._start(functools.partial(release, acquired), _log_failure)
        self._send()

    def _start(self, call: Callable[[], Any], answer: Callable[[asyncio.Future[Any]], None]) -> None:
        """Run ``call`` on a worker thread; ``answer`` takes its outcome when it ends."""
        work = asyncio.ensure_future(in_thread(call))
        self._tasks.add(work)  # a task nobody references may be collected mid-run
        work.add_done_callback(self._tasks.discard)
        work.add_done_callback(answer)


def _log_failure(work: asyncio.Future[Any]) -> None:
    if not work.cancelled() and work.exception() is not None:
        log.error("freeing an unused idempotency key failed", exc_info=work.exception())


_leasers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Leaser] = weakref.WeakKeyDictionary()


async def _begin_batched(user_id: int, key: str, request_fingerprint: str) -> KeyLease | tuple[dict[str, Any], int]:
    """:func:`_begin` through the running loop's :class:`_Leaser`: one thread hop per batch."""
    loop = asyncio.get_running_loop()
    leaser = _leasers.get(loop)
    if leaser is None:
        leaser = _leasers[loop] = _Leaser()
    return _replay_or_lease(await leaser.acquire(user_id, key, request_fingerprint))


def _finish(lease: KeyLease, status: int | None, body: dict[str, Any] | None) -> None:
    """Store an answer for the key, or free it (``status`` None) for a retry.

    Only a key still ``in_progress`` under this owner is touched: one that the creating
    statement already completed keeps its answer.
    """
    where = "WHERE user_id = %s AND key = %s AND owner = %s AND state = 'in_progress'"
    with connection() as conn:
        if status is None:
            conn.execute(f"DELETE FROM idempotency_keys {where}", (lease.user_id, lease.key, lease.owner))
        else:
            conn.execute(
                f"UPDATE idempotency_keys SET state = 'done', response_status = %s, response_body = %s {where}",
                (status, Jsonb(body, dumps=_dumps), lease.user_id, lease.key, lease.owner),
            )


def release(lease: KeyLease) -> None:
    """Free a key whose request is known never to have reached the booking statement."""
    _finish(lease, None, None)


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)


def _begin(user_id: int, key: str, request_fingerprint: str) -> KeyLease | tuple[dict[str, Any], int]:
    """Own the key, or return the stored (body, status) of a success; raise a stored refusal."""
    return _replay_or_lease(_acquire(user_id, key, request_fingerprint))


def _replay_or_lease(acquired: KeyLease | tuple[int, dict[str, Any]]) -> KeyLease | tuple[dict[str, Any], int]:
    if isinstance(acquired, KeyLease):
        return acquired
    status, body = acquired
    if status >= 400:
        raise Replayed(status, body)
    return body, status


def settle_failure(lease: KeyLease, err: BaseException) -> None:
    """A refusal (4xx) is the key's answer; anything else frees the key for a retry.

    Except a write cut off with its outcome unknown (:func:`shared.platform.db.outcome_unknown`):
    it may still commit (a frozen server resumes and runs it), and a freed key would let
    a retry book again. The key stays leased: the write's own statement completes it if
    it commits (a retry then replays), else ``locked_until`` frees it.
    """
    if outcome_unknown(err):
        return
    if isinstance(err, AppError) and err.status_code < 500:
        _finish(lease, err.status_code, {"code": err.code, "message": err.message, "details": err.details})
    else:
        _finish(lease, None, None)


def run(
    *,
    user_id: int,
    key: str | None,
    request_fingerprint: str,
    action: Callable[[KeyLease | None], dict[str, Any]],
    success_status: Callable[[], int] = lambda: 201,
) -> tuple[dict[str, Any], int | None]:
    """Run ``action`` at most once per (user, key); return (body, replayed status or None).

    ``success_status`` gives the status of a successful answer, read after the action.
    """
    if key is None:
        return action(None), None
    lease = _begin(user_id, key, request_fingerprint)
    if not isinstance(lease, KeyLease):  # a stored answer: replay it
        return lease[0], lease[1]
    try:
        body = action(lease)
    except BaseException as err:
        settle_failure(lease, err)
        raise
    if not lease.completed:
        _finish(lease, success_status(), body)
    return body, None


async def run_async(
    *,
    user_id: int,
    key: str | None,
    request_fingerprint: str,
    action: Callable[[KeyLease | None], Awaitable[dict[str, Any]]],
    success_status: Callable[[], int] = lambda: 201,
    offload: Offload = in_thread,
) -> tuple[dict[str, Any], int | None]:
    """:func:`run` for an async action: the key's SQL runs through ``offload`` (worker threads;
    under Mangum the loop itself), the action on the event loop, so no thread is held while
    the action waits (a coalescing lane)."""
    if key is None:
        return await action(None), None
    if offload is in_thread:  # a server's loop: acquired with the other requests' keys
        lease = await _begin_batched(user_id, key, request_fingerprint)
    else:
        lease = await offload(_begin, user_id, key, request_fingerprint)
    if not isinstance(lease, KeyLease):  # a stored answer: replay it
        return lease[0], lease[1]
    try:
        body = await action(lease)
    except asyncio.CancelledError:
        # The request went away, but a worker thread may still be booking it: keep the key
        # leased (that booking's statement completes it) until locked_until frees it.
        raise
    except BaseException as err:
        await offload(settle_failure, lease, err)
        raise
    if not lease.completed:
        await offload(_finish, lease, success_status(), body)
    return body, None


def purge_expired(batch: int = 5000) -> int:
    """Delete keys past their window (periodic tidy); returns how many."""
    with connection() as conn:
        cur = conn.execute(
            "DELETE FROM idempotency_keys WHERE ctid IN "
            "(SELECT ctid FROM idempotency_keys WHERE expires_at <= %s LIMIT %s)",
            (clock.now(), batch),
        )
        return cur.rowcount
