"""Bookings: the atomic ticket decrement, cancellation, and lookups of a customer's bookings.

A booking is ONE autocommit statement: the guarded decrement of one of the event's stock
rows, the booking row, the outbox row (and, with an Idempotency-Key, the stored answer) are
chained through RETURNING, so a stock row is locked for a single round trip and nothing is
inserted unless tickets were really taken. When no single row can serve it, the same
statement built on the exact grant runs under the lock of every row
(:func:`shared.ticketing.inventory.grant`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.notifications import outbox
from shared.notifications.contracts import BookingCancelled, BookingConfirmation
from shared.notifications.outbox import publish_committed
from shared.platform import clock
from shared.platform.db import Connection, connection
from shared.platform.errors import Conflict, Forbidden, NotFound, unknown_user_is_401
from shared.ticketing.idempotency import KeyLease, completion_cte
from shared.ticketing.inventory import (
    COUNT_CTE,
    CUSTOMER_MAX_SQL,
    EVENT_RULES,
    GRANT_CTE,
    GRANT_EXACT_CTE,
    Ask,
    count_cte,
    first_failed,
    give_back,
    grant,
    lock_return_shard,
    lock_stock,
    read_gate,
    rule_params,
    take_cte,
)

BOOKING_COLUMNS = "id, event_id, user_id, quantity, cancelled_quantity, status, hold_id, created_at, cancelled_at"

# The booking's confirmation, written by the statement that writes the booking.
CONFIRMATION_CTE = f"""notification AS (
    {outbox.insert_select_sql(BookingConfirmation, "booking", booking_id="id")}
    RETURNING id, (payload->>'booking_id')::bigint AS booking_id
)"""


def _book_sql(idempotent: bool, exact: bool = False) -> str:
    return f"""
WITH {GRANT_EXACT_CTE if exact else GRANT_CTE}, {COUNT_CTE}, booking AS (
    INSERT INTO bookings (event_id, user_id, quantity)
    SELECT event_id, %(user_id)s, %(quantity)s FROM counted
    RETURNING {BOOKING_COLUMNS}
), {CONFIRMATION_CTE}{completion_cte("booking") if idempotent else ""}
SELECT booking.*, notification.id AS outbox_id FROM booking, notification
"""


BOOK_SQL = _book_sql(idempotent=False)
BOOK_IDEMPOTENT_SQL = _book_sql(idempotent=True)
# The exact path's statements (every stock row locked): {idempotent: sql}.
_BOOK_EXACT_SQL = {idem: _book_sql(idem, exact=True) for idem in (False, True)}


def book(
    *,
    user_id: int,
    event_id: int,
    quantity: int,
    default_max: int | None = None,
    idempotency: KeyLease | None = None,
) -> dict[str, Any]:
    """Take ``quantity`` tickets of an event for a user, or raise why not.

    ``default_max``: the per-booking maximum of events without their own (None: the setting)."""
    params = rule_params(event_id=event_id, quantity=quantity, default_max=default_max, now=clock.now())
    params["user_id"] = user_id
    sql = BOOK_SQL
    if idempotency is not None:
        params.update(idempotency.params())
        sql = BOOK_IDEMPOTENT_SQL
    with connection() as conn:

        def run(statement: str = sql) -> dict[str, Any] | None:
            with unknown_user_is_401():
                return conn.execute(statement, params).fetchone()

        exact_sql = _BOOK_EXACT_SQL[idempotency is not None]
        row = grant(conn, run, exact=lambda: run(exact_sql), params=params, user_id=user_id)
        if idempotency is not None:
            idempotency.completed = True  # by the completion CTE, in the same statement
        outbox.publish_written(conn, [(row["outbox_id"], confirmation(row))])
    return row


def confirmation(row: dict[str, Any]) -> BookingConfirmation:
    """The confirmation :data:`CONFIRMATION_CTE` wrote for a booking row (no read back)."""
    return BookingConfirmation.parse({**row, "booking_id": row["id"]})


@dataclass
class BatchItem:
    """One request of a coalesced batch: who books how many, under which key (if any)."""

    user_id: int
    quantity: int
    idempotency: KeyLease | None = None


_BATCH_COUNT_CTE = count_cte(
    """SELECT granted.id, req.user_id, sum(req.quantity), granted.customer_max FROM req, granted
     GROUP BY granted.id, req.user_id, granted.customer_max"""
)

# Many bookings of one event in one statement, for a transaction that already holds every
# stock row's lock (the total is taken across rows). Booking ids are drawn up front so each
# answer maps back to its request.
BOOK_BATCH_SQL = f"""
WITH req AS MATERIALIZED (
    SELECT nextval(pg_get_serial_sequence('bookings', 'id')) AS id, r.*
      FROM unnest(%(seq)s::int[], %(user_ids)s::bigint[], %(quantities)s::int[],
                  %(idem_user_ids)s::bigint[], %(idem_keys)s::text[], %(idem_owners)s::uuid[])
           AS r(seq, user_id, quantity, idem_user_id, idem_key, idem_owner)
), {take_cte("%(total)s::int")}, granted AS (
    SELECT id, {CUSTOMER_MAX_SQL} AS customer_max FROM events WHERE id = %(event_id)s
), {_BATCH_COUNT_CTE}, booking AS (
    INSERT INTO bookings (id, event_id, user_id, quantity) OVERRIDING SYSTEM VALUE
    SELECT req.id, granted.id, req.user_id, req.quantity FROM req, granted ORDER BY req.seq
    RETURNING {BOOKING_COLUMNS}
), {CONFIRMATION_CTE}{completion_cte("booking", keys_from="req")}
SELECT req.seq, booking.*, notification.id AS outbox_id
  FROM req JOIN booking ON booking.id = req.id JOIN notification ON notification.booking_id = booking.id
"""


class BatchNotWritten(Exception):
    """A batch failed before its COMMIT: nothing was written, each request may go alone."""


def book_batch(
    *, event_id: int, items: list[BatchItem], default_max: int | None = None
) -> list[dict[str, Any] | None]:
    """Book many requests for one event in one transaction; ``None`` where not granted here.

    Every stock row of the event is locked first, then requests are granted in order while the grant
    rules allow (first fit: a later, smaller request may still fit). A request not granted
    (no tickets left for it, above the per-booking maximum or its customer's limit), or a
    whole batch on an event that is missing, cancelled or ended, gets ``None``: the caller
    sends it down the one-request path (:func:`book`), which decides it exactly and says why.

    Raises :class:`BatchNotWritten` for a failure before COMMIT (the caller may then try
    each request alone). A failure AT commit is raised as it is: the outcome is unknown,
    so retrying here could book twice.
    """
    committing = False
    try:
        with connection() as conn:
            with conn.transaction():
                rows = _write_batch(conn, event_id, items, default_max)
                committing = bool(rows)  # a COMMIT that wrote nothing may fail harmlessly
            # Committed.
            results: list[dict[str, Any] | None] = [None] * len(items)
            for row in rows:
                seq = row.pop("seq")
                results[seq] = row
                lease = items[seq].idempotency
                if lease is not None:
                    lease.completed = True  # by the batch statement's idem CTE
            publish_committed(conn, [row["outbox_id"] for row in rows])  # never raises
    except Exception as exc:
        if not committing:
            raise BatchNotWritten(str(exc)) from exc
        raise
    return results


def _write_batch(
    conn: Connection, event_id: int, items: list[BatchItem], default_max: int | None
) -> list[dict[str, Any]]:
    """Grant what the rules (:data:`shared.ticketing.inventory.RULES`) allow, under the stock rows' locks.

    The rules' checks decide here, on what the lock makes exact; the statement then relies
    on the database for the customer limit too (its CHECK would abort the batch rather
    than let a wrong decision through). Expired holds are not reclaimed here: a request
    they stand in the way of is left to the one-request path, which reclaims them.
    """
    params = rule_params(event_id=event_id, quantity=0, default_max=default_max, now=clock.now())
    lock_stock(conn, event_id)  # every writer of the gate or the stock takes these too
    event = read_gate(conn, params, expired_held=False)
    if first_failed(event, Ask(event_id, 0, params["now"]), EVENT_RULES) is not None:
        return []  # the event grants nobody now: each request hears why on the one-request path
    assert event is not None
    # A new statement after the locks: it sees every committed counter of this event, and
    # nobody changes them while the locks are held (every writer takes a stock row first).
    has: dict[int, int] = {
        row["user_id"]: row["tickets"]
        for row in conn.execute(
            "SELECT user_id, tickets FROM customer_tickets WHERE event_id = %s AND user_id = ANY(%s)",
            (event_id, sorted({i.user_id for i in items})),
        ).fetchall()
    }
    left = event["available_tickets"]
    granted: list[int] = []
    for seq, item in enumerate(items):
        mine = has.get(item.user_id, 0)  # the counter: booked plus held, expired holds too
        ask = Ask(event_id, item.quantity, params["now"], available=left, booked=mine)
        if first_failed(event, ask) is None:
            granted.append(seq)
            left -= item.quantity
            has[item.user_id] = mine + item.quantity
    if not granted:
        return []
    chosen = [items[seq] for seq in granted]
    return conn.execute(
        BOOK_BATCH_SQL,
        {
            "event_id": event_id,
            "customer_max": params["customer_max"],
            "default_max": params["default_max"],
            "total": event["available_tickets"] - left,
            "seq": granted,
            "user_ids": [i.user_id for i in chosen],
            "quantities": [i.quantity for i in chosen],
            "idem_user_ids": [i.idempotency.user_id if i.idempotency else None for i in chosen],
            "idem_keys": [i.idempotency.key if i.idempotency else None for i in chosen],
            "idem_owners": [i.idempotency.owner if i.idempotency else None for i in chosen],
        },
    ).fetchall()


def cancel_booking(*, booking_id: int, user_id: int, quantity: int | None) -> dict[str, Any]:
    """Give back all (``quantity`` None) or some tickets of a booking; repeating is harmless.

    Locks the event row, then the stock row the tickets go back to, then the booking row:
    the order every writer uses.
    """
    with connection() as conn:
        with conn.transaction():
            current = conn.execute(
                f"SELECT {BOOKING_COLUMNS} FROM bookings WHERE id = %s AND user_id = %s",
                (booking_id, user_id),
            ).fetchone()
            if current is None:
                raise NotFound("booking_not_found", f"Booking {booking_id} does not exist")
            conn.execute("SELECT 1 FROM events WHERE id = %s FOR NO KEY UPDATE", (current["event_id"],))
            shard = lock_return_shard(conn, current["event_id"])
            current = conn.execute(
                f"SELECT {BOOKING_COLUMNS} FROM bookings WHERE id = %s FOR UPDATE", (booking_id,)
            ).fetchone()
            assert current is not None
            if current["status"] == "cancelled":
                return current  # cancelling twice changes nothing
            returned = current["quantity"] if quantity is None else quantity
            if returned > current["quantity"]:
                raise Conflict(
                    "cancel_exceeds_booking",
                    f"Booking {booking_id} holds only {current['quantity']} tickets",
                    held=current["quantity"],
                    requested=returned,
                )
            row = conn.execute(
                f"""UPDATE bookings
                       SET quantity = quantity - %(n)s,
                           cancelled_quantity = cancelled_quantity + %(n)s,
                           status = CASE WHEN quantity = %(n)s THEN 'cancelled' ELSE status END,
                           cancelled_at = CASE WHEN quantity = %(n)s THEN now() ELSE cancelled_at END
                     WHERE id = %(id)s
                 RETURNING {BOOKING_COLUMNS}""",
                {"n": returned, "id": booking_id},
            ).fetchone()
            assert row is not None
            give_back(conn, row["event_id"], shard, user_id, returned)
            outbox_id = outbox.write(conn, BookingCancelled(
                booking_id=booking_id, event_id=row["event_id"], user_id=user_id,
                quantity=returned, remaining=row["quantity"]))
        publish_committed(conn, [outbox_id])
    return row


def get_booking(*, booking_id: int, user_id: int) -> dict[str, Any]:
    """A booking is visible to the customer who made it and to the event's organizer."""
    columns = ", ".join(f"b.{c.strip()}" for c in BOOKING_COLUMNS.split(","))
    with connection() as conn:
        row = conn.execute(
            f"""SELECT {columns}
                  FROM bookings b JOIN events e ON e.id = b.event_id
                 WHERE b.id = %s AND (b.user_id = %s OR e.organizer_id = %s)""",
            (booking_id, user_id, user_id),
        ).fetchone()
    if row is None:
        raise NotFound("booking_not_found", f"Booking {booking_id} does not exist")
    return row


def list_event_bookings(*, event_id: int, organizer_id: int, limit: int, offset: int) -> list[dict[str, Any]]:
    """An event's bookings, newest first, for its organizer."""
    with connection() as conn:
        event = conn.execute("SELECT organizer_id FROM events WHERE id = %s", (event_id,)).fetchone()
        if event is None:
            raise NotFound("event_not_found", f"Event {event_id} does not exist")
        if event["organizer_id"] != organizer_id:
            raise Forbidden("not_event_owner", "Only the event's organizer can list its bookings")
        return conn.execute(
            f"""SELECT {BOOKING_COLUMNS} FROM bookings WHERE event_id = %s
                ORDER BY id DESC LIMIT %s OFFSET %s""",
            (event_id, limit, offset),
        ).fetchall()


def list_bookings(*, user_id: int, limit: int, offset: int) -> list[dict[str, Any]]:
    with connection() as conn:
        return conn.execute(
            f"""SELECT {BOOKING_COLUMNS} FROM bookings WHERE user_id = %s
                ORDER BY id DESC LIMIT %s OFFSET %s""",
            (user_id, limit, offset),
        ).fetchall()
