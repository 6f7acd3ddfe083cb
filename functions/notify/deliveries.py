"""PostgreSQL side of notifying: delivery keys, fan-out plans and their progress.

A delivery key (outbox id, user id) is inserted in the same transaction that sends:
if the send fails the key is rolled back, if it succeeds a redelivered task finds the
key and skips the user. Two copies of a task racing block on the key's unique index,
so one sends and the other skips.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from shared.accounts import email_verification
from shared.notifications.contracts import EmailVerification
from shared.platform.db import connection
from shared.platform.logging import bind_context


class PermanentFailure(Exception):
    """Retrying cannot help (the booking or user is gone): dead-letter at once."""


def deliver_once(*, outbox_id: int, user_id: int, kind: str, channel: str, recipient: str,
                 send: Callable[[], None]) -> bool:
    """Run ``send`` unless this notification already reached this user; True if it ran."""
    with connection() as conn, conn.transaction():
        # No flush wait per user: a key lost to a database crash means a resend, not a miss.
        conn.execute("SET LOCAL synchronous_commit = off")
        reserved = conn.execute(
            """INSERT INTO notification_deliveries (outbox_id, user_id, kind, channel, recipient)
               VALUES (%s, %s, %s, %s, %s)
               ON CONFLICT (outbox_id, user_id) DO NOTHING RETURNING 1""",
            (outbox_id, user_id, kind, channel, recipient),
        ).fetchone()
        if reserved is None:
            return False
        with bind_context(delivery_key=f"{outbox_id}:{user_id}"):
            send()
    return True


def record_skipped(*, outbox_id: int, kind: str, channel: str,
                   users: Sequence[tuple[int, str]]) -> tuple[set[int], int]:
    """Keys for users this notification deliberately skips (address not verified).

    A redelivered task then skips them too instead of retrying forever; verifying the
    address releases the held booking mails (:mod:`shared.accounts.email_verification`).

    The caller's view of ``email_verified_at`` may be stale: the key is written only for
    users still unverified, their rows locked FOR SHARE in this statement. A ``verify()``
    that committed first is seen (the user is not held: send now); one that commits later
    waits for this key and releases it. Returns (ids held, how many keys were new).
    """
    if not users:
        return set(), 0
    with connection() as conn:
        row = conn.execute(
            """WITH still AS (
                   SELECT id FROM users WHERE id = ANY(%(ids)s) AND email_verified_at IS NULL
                   FOR SHARE),
               recorded AS (
                   INSERT INTO notification_deliveries
                          (outbox_id, user_id, kind, channel, recipient, status)
                   SELECT %(outbox_id)s, t.user_id, %(kind)s, %(channel)s, t.recipient,
                          'skipped_unverified'
                     FROM unnest(%(ids)s::bigint[], %(recipients)s::text[]) AS t(user_id, recipient)
                     JOIN still ON still.id = t.user_id
                   ON CONFLICT (outbox_id, user_id) DO NOTHING RETURNING 1)
               SELECT coalesce((SELECT array_agg(id) FROM still), '{}') AS held,
                      (SELECT count(*) FROM recorded) AS recorded""",
            {"ids": [u for u, _ in users], "recipients": [r for _, r in users],
             "outbox_id": outbox_id, "kind": kind, "channel": channel},
        ).fetchone()
    assert row is not None
    return set(row["held"]), int(row["recorded"])


def deliver_verification(*, outbox_id: int, user_id: int, channel: str, ttl_seconds: int,
                         send: Callable[[str, str], None]) -> str | None:
    """Mint a verification token and ``send(recipient, token)`` it, once per outbox row.

    The token's hash, the delivery key and the send share one transaction: a failed
    send leaves no token and no key (the retry mints a new one), a redelivered task
    finds the key. Returns the address mailed, or None (already sent, already verified).
    """
    with connection() as conn, conn.transaction():
        # Locked: two sends for one user (a resend racing the first mail) take turns, so
        # the later one revokes the earlier token and at most one is ever live.
        user = conn.execute(
            "SELECT id, email, email_verified_at FROM users WHERE id = %s FOR UPDATE", (user_id,)
        ).fetchone()
        if user is None:
            raise PermanentFailure(f"user {user_id} does not exist")
        if user["email_verified_at"] is not None:
            return None
        reserved = conn.execute(
            """INSERT INTO notification_deliveries (outbox_id, user_id, kind, channel, recipient)
               VALUES (%s, %s, %s, %s, %s)
               ON CONFLICT (outbox_id, user_id) DO NOTHING RETURNING 1""",
            (outbox_id, user_id, EmailVerification.name, channel, user["email"]),
        ).fetchone()
        if reserved is None:
            return None
        token = email_verification.mint(conn, user_id=user_id, email=user["email"],
                                        ttl_seconds=ttl_seconds)
        with bind_context(delivery_key=f"{outbox_id}:{user_id}"):
            send(user["email"], token)
    return str(user["email"])


def deliver_batch(*, outbox_id: int, kind: str, channel: str, sends_per_commit: int,
                  items: Sequence[tuple[int, str, Callable[[], None]]]) -> int:
    """:func:`deliver_once` for a page of users, ``sends_per_commit`` per transaction.

    One INSERT reserves the keys of a group of users not reached yet, so a fast channel
    pays one round trip and one commit per group instead of per user. A worker killed
    inside a group resends at most that group (its keys were not committed). If a send
    fails, the keys of the users not yet sent are given back (the retry reaches them),
    those already sent are kept, and the error is raised after commit.
    """
    sent = 0
    step = max(1, sends_per_commit)
    for start in range(0, len(items), step):
        sent += _deliver_group(outbox_id=outbox_id, kind=kind, channel=channel,
                               items=items[start:start + step])
    return sent


def _deliver_group(*, outbox_id: int, kind: str, channel: str,
                   items: Sequence[tuple[int, str, Callable[[], None]]]) -> int:
    failure: BaseException | None = None
    sent = 0
    with connection() as conn, conn.transaction():
        conn.execute("SET LOCAL synchronous_commit = off")
        reserved = {
            row["user_id"]
            for row in conn.execute(
                """INSERT INTO notification_deliveries (outbox_id, user_id, kind, channel, recipient)
                   SELECT %s, t.user_id, %s, %s, t.recipient
                     FROM unnest(%s::bigint[], %s::text[]) AS t(user_id, recipient)
                   ON CONFLICT (outbox_id, user_id) DO NOTHING RETURNING user_id""",
                (outbox_id, kind, channel, [i[0] for i in items], [i[1] for i in items]),
            ).fetchall()
        }
        pending = [item for item in items if item[0] in reserved]
        for position, (user_id, _, send) in enumerate(pending):
            try:
                with bind_context(delivery_key=f"{outbox_id}:{user_id}"):
                    send()
            except Exception as exc:
                failure = exc
                conn.execute(
                    "DELETE FROM notification_deliveries WHERE outbox_id = %s AND user_id = ANY(%s)",
                    (outbox_id, [u for u, _, _ in pending[position:]]),
                )
                break
            sent += 1
    if failure is not None:
        raise failure
    return sent


def booking_details(booking_id: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The booking, its user and its event, or PermanentFailure."""
    with connection() as conn:
        row = conn.execute(
            """SELECT to_jsonb(b) AS booking, to_jsonb(u) - 'password_hash' AS user,
                      e.id, e.title, e.venue, e.start_time, e.status
                 FROM bookings b JOIN users u ON u.id = b.user_id
                 JOIN events e ON e.id = b.event_id WHERE b.id = %s""",
            (booking_id,),
        ).fetchone()
    if row is None:
        raise PermanentFailure(f"booking {booking_id} does not exist")
    event = {k: row[k] for k in ("id", "title", "venue", "start_time", "status")}
    return row["booking"], row["user"], event


def event_details(event_id: int) -> dict[str, Any]:
    with connection() as conn:
        row = conn.execute(
            "SELECT id, title, venue, start_time, status FROM events WHERE id = %s", (event_id,)
        ).fetchone()
    if row is None:
        raise PermanentFailure(f"event {event_id} does not exist")
    return row


def _page_bounds_sql(audience: str) -> str:
    return f"""
    SELECT min(user_id) AS first, max(user_id) AS last FROM (
        SELECT DISTINCT a.user_id FROM ({audience}) a
         WHERE a.user_id > %(after)s
         ORDER BY a.user_id LIMIT %(size)s) page"""


def plan_fanout(*, outbox_id: int, kind: str, audience: str, event_id: int,
                chunk_size: int) -> int | None:
    """Split the ``audience`` into user-id ranges of ``chunk_size`` users, once per outbox id.

    ``audience`` is a query of ``user_id`` rows (duplicates allowed) that may read
    ``%(event_id)s``: a fan-out's declaration in :mod:`functions.notify.tasks`.

    Keyset pagination: each page returns only its bounds, never the users. Returns the
    number of chunks, or None when an earlier run already planned this fan-out.
    """
    with connection() as conn, conn.transaction():
        created = conn.execute(
            """INSERT INTO notification_fanouts (outbox_id, kind, event_id, chunks_total)
               VALUES (%s, %s, %s, 0) ON CONFLICT (outbox_id) DO NOTHING RETURNING 1""",
            (outbox_id, kind, event_id),
        ).fetchone()
        if created is None:
            return None
        chunk_no, after = 0, 0
        while True:
            page = conn.execute(
                _page_bounds_sql(audience), {"event_id": event_id, "after": after, "size": chunk_size}
            ).fetchone()
            if page is None or page["last"] is None:
                break
            conn.execute(
                """INSERT INTO notification_chunks (outbox_id, chunk_no, first_user_id, last_user_id)
                   VALUES (%s, %s, %s, %s)""",
                (outbox_id, chunk_no, page["first"], page["last"]),
            )
            chunk_no, after = chunk_no + 1, page["last"]
        done = "now()" if chunk_no == 0 else "NULL"
        conn.execute(
            f"""UPDATE notification_fanouts SET chunks_total = %s, notified = CASE WHEN %s = 0
                THEN 0 END, finished_at = {done} WHERE outbox_id = %s""",
            (chunk_no, chunk_no, outbox_id),
        )
    return chunk_no


def pending_chunks(outbox_id: int) -> list[int]:
    with connection() as conn:
        rows = conn.execute(
            """SELECT chunk_no FROM notification_chunks WHERE outbox_id = %s AND done_at IS NULL
               ORDER BY chunk_no""",
            (outbox_id,),
        ).fetchall()
    return [row["chunk_no"] for row in rows]


def outbox_payload(outbox_id: int) -> dict[str, Any]:
    """The payload its producer wrote (outbox rows are never deleted)."""
    with connection() as conn:
        row = conn.execute("SELECT payload FROM outbox WHERE id = %s", (outbox_id,)).fetchone()
    return dict(row["payload"]) if row else {}


def chunk_range(outbox_id: int, chunk_no: int) -> dict[str, Any] | None:
    """The chunk's user-id range, or None if it is already done."""
    with connection() as conn:
        return conn.execute(
            """SELECT first_user_id, last_user_id FROM notification_chunks
                WHERE outbox_id = %s AND chunk_no = %s AND done_at IS NULL""",
            (outbox_id, chunk_no),
        ).fetchone()


def audience_pages(*, audience: str, event_id: int, first_user_id: int, last_user_id: int,
                   page_size: int) -> Iterator[list[dict[str, Any]]]:
    """Distinct users of ``audience`` in one range, ``page_size`` at a time (keyset on user id)."""
    after = first_user_id - 1
    while True:
        with connection() as conn:
            page = conn.execute(
                f"""SELECT u.id, u.email, u.name, u.email_verified_at FROM users u WHERE u.id IN (
                        SELECT DISTINCT a.user_id FROM ({audience}) a
                         WHERE a.user_id > %(after)s AND a.user_id <= %(last)s
                         ORDER BY a.user_id LIMIT %(size)s)
                    ORDER BY u.id""",
                {"event_id": event_id, "after": after, "last": last_user_id, "size": page_size},
            ).fetchall()
        if not page:
            return
        yield page
        after = page[-1]["id"]


def complete_chunk(outbox_id: int, chunk_no: int) -> int | None:
    """Mark a chunk done; for the chunk that completes the fan-out, return the user count.

    Completions serialise on the fan-out row, so exactly one chunk sees the last one, and
    the count (delivery keys of this notification) includes every earlier chunk's work.
    """
    with connection() as conn, conn.transaction():
        marked = conn.execute(
            """UPDATE notification_chunks SET done_at = now()
                WHERE outbox_id = %s AND chunk_no = %s AND done_at IS NULL RETURNING 1""",
            (outbox_id, chunk_no),
        ).fetchone()
        if marked is None:
            return None
        progress = conn.execute(
            """UPDATE notification_fanouts SET chunks_done = chunks_done + 1
                WHERE outbox_id = %s RETURNING chunks_done, chunks_total""",
            (outbox_id,),
        ).fetchone()
        assert progress is not None
        if progress["chunks_done"] < progress["chunks_total"]:
            return None
        finished = conn.execute(
            """UPDATE notification_fanouts SET finished_at = now(), notified = (
                   SELECT count(*) FROM notification_deliveries
                    WHERE outbox_id = %s AND status = 'sent')
                WHERE outbox_id = %s RETURNING notified""",
            (outbox_id, outbox_id),
        ).fetchone()
    assert finished is not None
    return int(finished["notified"])
