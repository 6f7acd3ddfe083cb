"""Taking tickets out of an event's pool: the rules every granting path obeys, and why not.

Every path that grants tickets (a booking, a coalesced batch, a hold, the re-claim of an
expired hold) goes through the same rules, written once here:

* the event exists, is active and has not ended (:data:`OPEN_SQL` / :func:`closed`);
  an event ends at ``end_time``, or at ``start_time`` when it has no ``end_time``, and
  never when it has neither;
* one request takes at most the event's per-booking maximum (:func:`too_large`);
* there are enough tickets (:data:`CLAIM_CTE`);
* a customer's booked plus actively held tickets of the event stay within the event's
  per-customer limit (:data:`COUNT_CTE`, enforced by a CHECK on ``customer_tickets`` in
  the same statement, so concurrent requests of one customer cannot pass it together).

Lock order everywhere: the event row first, then its holds, bookings or customer counters.
The hot path (a claim) locks only the event row and one counter row, for one statement.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import psycopg

from shared.platform.db import Connection
from shared.platform.errors import AppError, BadRequest, Conflict, NotFound, ServiceUnavailable
from shared.platform.settings import get_settings

CUSTOMER_LIMIT_CONSTRAINT = "customer_tickets_within_limit"

# When sales close: the end, or the start of an event without an end; NULL: never.
SALES_END_SQL = "coalesce(end_time, start_time)"
# An event that can grant tickets at the application's time %(now)s.
OPEN_SQL = f"status = 'active' AND coalesce({SALES_END_SQL}, 'infinity') > %(now)s"
# The event's per-customer limit: its own, else the default but never below the per-booking
# maximum in force, the event's or the server's (who allows 30 in one booking allows 30).
CUSTOMER_MAX_SQL = (
    "coalesce(max_tickets_per_customer,"
    " greatest(%(customer_max)s, coalesce(max_tickets_per_booking, %(default_max)s)))"
)

# The guarded decrement, shared by bookings, holds and re-claims: a CTE named ``claimed``.
CLAIM_CTE = f"""claimed AS (
    UPDATE events
       SET available_tickets = available_tickets - %(quantity)s
     WHERE id = %(event_id)s
       AND {OPEN_SQL}
       AND available_tickets >= %(quantity)s
       AND %(quantity)s <= coalesce(max_tickets_per_booking, %(default_max)s)
    RETURNING id, {CUSTOMER_MAX_SQL} AS customer_max, {SALES_END_SQL} AS sales_end, max_hold_seconds
)"""


def count_cte(rows: str) -> str:
    """A CTE named ``counted`` that adds ``rows`` (event_id, user_id, tickets, limit) to
    customers' counters. Passing the limit violates CUSTOMER_LIMIT_CONSTRAINT and aborts
    the whole statement, whatever else it wrote."""
    return f"""counted AS (
    INSERT INTO customer_tickets AS ct (event_id, user_id, tickets, limit_at_claim)
    {rows}
    ON CONFLICT (event_id, user_id) DO UPDATE
       SET tickets = ct.tickets + excluded.tickets, limit_at_claim = excluded.limit_at_claim
    RETURNING event_id
)"""


# One request's counter, raised in the same statement as the claim and after it (so the
# event row is locked first).
COUNT_CTE = count_cte("SELECT id, %(user_id)s, %(quantity)s, customer_max FROM claimed")

# Giving tickets back: the customer's counter goes down by %(n)s (event row locked first).
UNCOUNT_SQL = """UPDATE customer_tickets SET tickets = tickets - %(n)s
 WHERE event_id = %(event_id)s AND user_id = %(user_id)s"""

# What the rules read from an event row (a diagnosis, a batch, a re-claim).
GATE_COLUMNS = f"""status, available_tickets, {SALES_END_SQL} AS sales_end,
       coalesce(max_tickets_per_booking, %(default_max)s) AS max_quantity,
       {CUSTOMER_MAX_SQL} AS customer_max"""

# Active holds past their expiry no longer count: readers add them back.
EXPIRED_HELD_SQL = """coalesce((SELECT sum(h.quantity) FROM holds h
     WHERE h.event_id = {event}.id AND h.status = 'active' AND h.expires_at <= %(now)s), 0)::int"""

_RECLAIM_SQL = """
WITH expired AS (
    UPDATE holds SET status = 'expired', closed_at = %(now)s
     WHERE event_id = %(event_id)s AND status = 'active' AND expires_at <= %(now)s
    RETURNING user_id, quantity
), uncounted AS (
    UPDATE customer_tickets ct SET tickets = ct.tickets - e.quantity
      FROM (SELECT user_id, sum(quantity)::int AS quantity FROM expired GROUP BY user_id) e
     WHERE ct.event_id = %(event_id)s AND ct.user_id = e.user_id
)
UPDATE events SET available_tickets = available_tickets + (SELECT coalesce(sum(quantity), 0) FROM expired)
 WHERE id = %(event_id)s
RETURNING (SELECT coalesce(sum(quantity), 0) FROM expired)::int AS freed
"""

_CUSTOMER_SQL = """
SELECT (SELECT coalesce(sum(quantity), 0) FROM bookings
         WHERE event_id = %(event_id)s AND user_id = %(user_id)s AND status = 'confirmed')::int AS booked,
       (SELECT coalesce(sum(quantity), 0) FROM holds
         WHERE event_id = %(event_id)s AND user_id = %(user_id)s AND status = 'active'
           AND expires_at > %(now)s)::int AS held,
       (SELECT coalesce(sum(quantity), 0) FROM holds
         WHERE event_id = %(event_id)s AND user_id = %(user_id)s AND status = 'active'
           AND expires_at <= %(now)s)::int AS expired_held
"""

_ATTEMPTS = 3
_RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


def rule_params(
    *, event_id: int, quantity: int, default_max: int | None = None, now: datetime
) -> dict[str, Any]:
    """The parameters every claiming statement and gate read share (defaults: settings)."""
    settings = get_settings()
    return {
        "event_id": event_id,
        "quantity": quantity,
        "default_max": settings.max_tickets_per_booking if default_max is None else default_max,
        "customer_max": settings.max_tickets_per_customer,
        "now": now,
    }


def read_gate(conn: Connection, params: Mapping[str, Any], lock: str = "") -> dict[str, Any] | None:
    """The event's row as the rules read it (``lock``: e.g. ``FOR UPDATE``)."""
    return conn.execute(
        f"SELECT {GATE_COLUMNS}, {EXPIRED_HELD_SQL.format(event='events')} AS expired_held "
        f"FROM events WHERE id = %(event_id)s {lock}",
        params,
    ).fetchone()


def closed(event_id: int, event: Mapping[str, Any] | None, now: datetime) -> AppError | None:
    """Why an event cannot grant tickets now (missing, cancelled, ended), or None."""
    if event is None:
        return NotFound("event_not_found", f"Event {event_id} does not exist")
    if event["status"] != "active":
        return Conflict("event_cancelled", f"Event {event_id} is cancelled")
    if event["sales_end"] is not None and event["sales_end"] <= now:
        return Conflict(
            "event_ended", f"Event {event_id} has ended", ended_at=_json_time(event["sales_end"])
        )
    return None


def too_large(event: Mapping[str, Any], quantity: int) -> AppError | None:
    """Above the event's per-booking maximum, or None."""
    if quantity <= event["max_quantity"]:
        return None
    return BadRequest(
        "quantity_too_large",
        f"At most {event['max_quantity']} tickets can be booked at once for this event",
        max_quantity=event["max_quantity"],
    )


def within_customer_limit(event: Mapping[str, Any], has: int, quantity: int) -> bool:
    return has + quantity <= event["customer_max"]


def customer_limit_exceeded(event_id: int, limit: int, booked: int, held: int, quantity: int) -> AppError:
    return BadRequest(
        "customer_limit_exceeded",
        f"One customer may have at most {limit} tickets of event {event_id} (booked and held); "
        f"you have {booked + held}",
        limit=limit,
        booked=booked,
        held=held,
        requested=quantity,
    )


def is_customer_limit(exc: BaseException) -> bool:
    """The CHECK that keeps a customer's counter within the event's limit refused a claim."""
    return (
        isinstance(exc, psycopg.errors.CheckViolation)
        and exc.diag.constraint_name == CUSTOMER_LIMIT_CONSTRAINT
    )


def reclaim_expired_holds(conn: Connection, event_id: int, now: datetime) -> int:
    """Mark the event's expired holds expired and return their tickets; returns how many."""
    with conn.transaction():
        if conn.execute("SELECT 1 FROM events WHERE id = %s FOR UPDATE", (event_id,)).fetchone() is None:
            return 0
        row = conn.execute(_RECLAIM_SQL, {"event_id": event_id, "now": now}).fetchone()
    return int(row["freed"]) if row else 0


def customer_refusal(conn: Connection, params: Mapping[str, Any], user_id: int) -> AppError | None:
    """After the limit CHECK refused a claim: the refusal, or None once a retry may pass.

    Holds past their expiry still sit in the counter until reclaimed: if they are what
    stands in the way, reclaim them (the whole event's, one transaction) and say retry.
    """
    event = read_gate(conn, params)
    if event is None:
        return closed(params["event_id"], event, params["now"])
    mine = conn.execute(_CUSTOMER_SQL, {**params, "user_id": user_id}).fetchone()
    assert mine is not None
    quantity = params["quantity"]
    if within_customer_limit(event, mine["booked"] + mine["held"], quantity):
        if mine["expired_held"]:
            reclaim_expired_holds(conn, params["event_id"], params["now"])
        return None  # expired holds reclaimed, or tickets given back meanwhile: retry
    return customer_limit_exceeded(
        params["event_id"], event["customer_max"], mine["booked"], mine["held"], quantity
    )


def claim(
    conn: Connection,
    run: Callable[[], dict[str, Any] | None],
    *,
    params: Mapping[str, Any],
    user_id: int,
) -> dict[str, Any]:
    """Run a claiming statement; on refusal, reclaim expired holds and retry, or raise why.

    The statement is a single autocommit round trip. Only a refusal pays for the
    diagnosis, and only a shortage with expired holds pays for reclaiming them.
    """
    event_id, quantity, now = params["event_id"], params["quantity"], params["now"]
    available: int | None = None
    for _ in range(_ATTEMPTS):
        try:
            row = run()
        except _RETRYABLE:
            continue
        except psycopg.errors.CheckViolation as exc:
            if not is_customer_limit(exc):
                raise
            refusal = customer_refusal(conn, params, user_id)
            if refusal is not None:
                raise refusal from None
            continue
        if row is not None:
            return row
        event = read_gate(conn, params)
        refusal = closed(event_id, event, now) or too_large(event, quantity)  # type: ignore[arg-type]
        if refusal is not None:
            raise refusal
        assert event is not None
        available = event["available_tickets"] + event["expired_held"]
        if available < quantity:
            break
        if event["expired_held"] and event["available_tickets"] < quantity:
            reclaim_expired_holds(conn, event_id, now)
        # else: tickets came back (a cancellation) since the claim ran; try again.
    if available is None or available >= quantity:  # lost every race (or deadlock) for free tickets
        raise ServiceUnavailable("contention", "The event is too busy right now; retry", retry_after=1)
    raise shortage(event_id, available, quantity)


def shortage(event_id: int, available: int, quantity: int) -> AppError:
    if available == 0:
        return BadRequest("sold_out", f"Event {event_id} is sold out", available=0)
    return BadRequest(
        "insufficient_tickets",
        f"Only {available} {'ticket' if available == 1 else 'tickets'} left for event {event_id}",
        available=available,
        requested=quantity,
    )


def _json_time(value: datetime) -> str:
    """A UTC time as the API writes every other one (``...Z``, like the response models)."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
