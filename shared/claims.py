"""Taking tickets out of an event's pool: the guarded decrement and what to say when it fails.

Lock order everywhere: the event row first, then its holds or bookings. The hot path
(a claim) locks only the event row, for one statement.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg

from shared.db import Connection
from shared.errors import BadRequest, Conflict, NotFound, ServiceUnavailable

# The guarded decrement, shared by bookings and holds: a CTE named ``claimed``.
CLAIM_CTE = """claimed AS (
    UPDATE events
       SET available_tickets = available_tickets - %(quantity)s
     WHERE id = %(event_id)s
       AND status = 'active'
       AND available_tickets >= %(quantity)s
       AND %(quantity)s <= coalesce(max_tickets_per_booking, %(default_max)s)
    RETURNING id
)"""

# Active holds past their expiry no longer count: readers add them back.
EXPIRED_HELD_SQL = """coalesce((SELECT sum(h.quantity) FROM holds h
     WHERE h.event_id = {event}.id AND h.status = 'active' AND h.expires_at <= %(now)s), 0)::int"""

_RECLAIM_SQL = """
WITH expired AS (
    UPDATE holds SET status = 'expired', closed_at = %(now)s
     WHERE event_id = %(event_id)s AND status = 'active' AND expires_at <= %(now)s
    RETURNING quantity
)
UPDATE events SET available_tickets = available_tickets + (SELECT coalesce(sum(quantity), 0) FROM expired)
 WHERE id = %(event_id)s
RETURNING (SELECT coalesce(sum(quantity), 0) FROM expired)::int AS freed
"""

_ATTEMPTS = 3
_RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


def reclaim_expired_holds(conn: Connection, event_id: int, now: datetime) -> int:
    """Mark the event's expired holds expired and return their tickets; returns how many."""
    with conn.transaction():
        if conn.execute("SELECT 1 FROM events WHERE id = %s FOR UPDATE", (event_id,)).fetchone() is None:
            return 0
        row = conn.execute(_RECLAIM_SQL, {"event_id": event_id, "now": now}).fetchone()
    return int(row["freed"]) if row else 0


def claim(
    conn: Connection,
    run: Callable[[], dict[str, Any] | None],
    *,
    event_id: int,
    quantity: int,
    default_max: int,
    now: datetime,
) -> dict[str, Any]:
    """Run a claiming statement; on refusal, reclaim expired holds and retry, or raise why.

    The statement is a single autocommit round trip. Only a refusal pays for the
    diagnosis, and only a shortage with expired holds pays for reclaiming them.
    """
    available: int | None = None
    for _ in range(_ATTEMPTS):
        try:
            row = run()
        except _RETRYABLE:
            continue
        if row is not None:
            return row
        event = conn.execute(
            f"""SELECT status, available_tickets,
                       coalesce(max_tickets_per_booking, %(default_max)s) AS max_quantity,
                       {EXPIRED_HELD_SQL.format(event="events")} AS expired_held
                  FROM events WHERE id = %(event_id)s""",
            {"event_id": event_id, "default_max": default_max, "now": now},
        ).fetchone()
        if event is None:
            raise NotFound("event_not_found", f"Event {event_id} does not exist")
        if event["status"] != "active":
            raise Conflict("event_cancelled", f"Event {event_id} is cancelled")
        if quantity > event["max_quantity"]:
            raise BadRequest(
                "quantity_too_large",
                f"At most {event['max_quantity']} tickets can be booked at once for this event",
                max_quantity=event["max_quantity"],
            )
        available = event["available_tickets"] + event["expired_held"]
        if available < quantity:
            break
        if event["expired_held"] and event["available_tickets"] < quantity:
            reclaim_expired_holds(conn, event_id, now)
        # else: tickets came back (a cancellation) since the claim ran; try again.
    if available is None or available >= quantity:  # lost every race (or deadlock) for free tickets
        raise ServiceUnavailable("contention", "The event is too busy right now; retry", retry_after=1)
    if available == 0:
        raise BadRequest("sold_out", f"Event {event_id} is sold out", available=0)
    raise BadRequest(
        "insufficient_tickets",
        f"Only {available} {'ticket' if available == 1 else 'tickets'} left for event {event_id}",
        available=available,
        requested=quantity,
    )
