"""Idempotency keys for booking-creating POSTs: a retried request replays the first answer.

A key belongs to one user. The first request with it takes a lease on the key's row
(``in_progress``, a :class:`KeyLease`); the SQL that creates the booking or hold also
completes that row in the same statement (:func:`completion_cte`), so a committed booking
and its stored answer cannot part. A refusal (4xx) is stored too; a server-side failure
frees the key for a retry. A lease left ``in_progress`` by a crashed process may be taken
over after ``locked_until``,
which is well past the pool and statement timeouts, so the first attempt can no longer
commit by then.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from psycopg.types.json import Jsonb

from shared.platform import clock
from shared.platform.db import connection, outcome_unknown
from shared.platform.errors import AppError, Conflict, Unprocessable
from shared.platform.settings import get_settings
from shared.platform.threads import Offload, in_thread

REPLAY_HEADER = "Idempotent-Replayed"


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


_ACQUIRE_SQL = """
INSERT INTO idempotency_keys AS k
       (user_id, key, fingerprint, owner, state, locked_until, expires_at)
VALUES (%(user_id)s, %(key)s, %(fingerprint)s, %(owner)s, 'in_progress', %(locked_until)s, %(expires_at)s)
ON CONFLICT (user_id, key) DO UPDATE
   SET fingerprint = EXCLUDED.fingerprint, owner = EXCLUDED.owner, state = 'in_progress',
       response_status = NULL, response_body = NULL, created_at = now(),
       locked_until = EXCLUDED.locked_until, expires_at = EXCLUDED.expires_at
 WHERE k.expires_at <= %(now)s
    OR (k.state = 'in_progress' AND k.locked_until <= %(now)s AND k.fingerprint = EXCLUDED.fingerprint)
RETURNING owner
"""


def _acquire(user_id: int, key: str, print_: str) -> KeyLease | tuple[int, dict[str, Any]]:
    """Own the key, or return the stored (status, body) to replay; raise on misuse."""
    settings = get_settings()
    now = clock.now()
    owner = uuid.uuid4()
    params = {
        "user_id": user_id,
        "key": key,
        "fingerprint": print_,
        "owner": owner,
        "now": now,
        "locked_until": now + timedelta(seconds=settings.idempotency_lock_seconds),
        "expires_at": now + timedelta(seconds=settings.idempotency_ttl_seconds),
    }
    with connection() as conn:
        if conn.execute(_ACQUIRE_SQL, params).fetchone() is not None:
            return KeyLease(user_id, key, owner)
        row = conn.execute(
            "SELECT fingerprint, state, response_status, response_body FROM idempotency_keys "
            "WHERE user_id = %s AND key = %s",
            (user_id, key),
        ).fetchone()
    if row is None:  # expired and deleted between the two statements: try once more
        return _acquire(user_id, key, print_)
    if row["fingerprint"] != print_:
        raise Unprocessable(
            "idempotency_key_reused",
            "This Idempotency-Key was used with a different request",
        )
    if row["state"] != "done":
        err = Conflict("request_in_progress", "A request with this Idempotency-Key is still being processed")
        err.headers = {"Retry-After": "1"}
        raise err
    return row["response_status"], row["response_body"]


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
    acquired = _acquire(user_id, key, request_fingerprint)
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
