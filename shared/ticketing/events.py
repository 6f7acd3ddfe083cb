"""Events: creation, updates (with atomic capacity changes), cancellation, lookups, listings.

An event's available tickets live in its stock rows (shared/ticketing/inventory.py): readers
see their sum; creation makes the rows; every change of what the grant rules read (times,
limits, capacity, cancellation) locks the event row, then every stock row (bumping the gate
sequence, :func:`shared.ticketing.inventory.touch_gate`) before it writes anything.
"""

from __future__ import annotations

from typing import Any, Literal

from shared.notifications import outbox
from shared.notifications.contracts import EventCancelled, EventUpdate
from shared.platform import clock
from shared.platform.db import Connection, connection
from shared.platform.errors import Forbidden, NotFound, Unprocessable, unknown_user_is_401
from shared.ticketing.inventory import (
    AVAILABLE_SQL,
    EVENT_ACTIVE,
    EXPIRED_HELD_SQL,
    SALES_END_SQL,
    Ask,
    refusal,
    set_stock,
    shards_for,
    stock_quota,
    touch_gate,
)
from shared.ticketing.order_bounds import check_active_types
from shared.ticketing.order_states import SOLD_STATUSES, code_uses_back_sql
from shared.ticketing.quotas import lock_event_quota, resize

_COLUMNS = (
    "id", "organizer_id", "title", "venue", "start_time", "end_time", "total_tickets",
    "available_tickets", "max_tickets_per_booking", "max_tickets_per_customer", "max_hold_seconds",
    "status", "currency", "created_at", "updated_at",
)
# The event row's own columns (available tickets are not one of them).
EVENT_COLUMNS = ", ".join(c for c in _COLUMNS if c != "available_tickets")
# What readers see: the sum of the stock rows, in the statement's one snapshot, with expired
# holds counted as available even before anything reclaims them.
EVENT_READ_COLUMNS = ", ".join(
    f"{AVAILABLE_SQL.format(event='events')} + {EXPIRED_HELD_SQL.format(event='events')} AS available_tickets"
    if c == "available_tickets"
    else c
    for c in _COLUMNS
)
UPDATABLE = (
    "title", "venue", "start_time", "end_time", "total_tickets",
    "max_tickets_per_booking", "max_tickets_per_customer", "max_hold_seconds",
)
_OPTIONAL = {"currency": "EUR", "venue": None, "start_time": None, "end_time": None, "max_tickets_per_booking": None,
             "max_tickets_per_customer": None, "max_hold_seconds": None}


def create_event(*, organizer_id: int, fields: dict[str, Any]) -> dict[str, Any]:
    """A new event with all its tickets available: its default type ('General admission',
    free) in its event quota, spread over the quota's stock rows (:func:`shards_for`)."""
    values = {"organizer_id": organizer_id, **_OPTIONAL, **fields}
    with connection() as conn, unknown_user_is_401():
        with conn.transaction():
            row = conn.execute(_CREATE_SQL, {**values, "shards": shards_for(values["total_tickets"])}).fetchone()
            assert row is not None
            stock_quota(conn, row["quota_id"])
        return read_event(conn, row["id"])


# The event, its default type and its event quota listing it, in one statement.
_CREATE_SQL = """
WITH event AS (
    INSERT INTO events (organizer_id, title, venue, start_time, end_time, total_tickets,
                        max_tickets_per_booking, max_tickets_per_customer, max_hold_seconds, currency)
    VALUES (%(organizer_id)s, %(title)s, %(venue)s, %(start_time)s, %(end_time)s, %(total_tickets)s,
            %(max_tickets_per_booking)s, %(max_tickets_per_customer)s, %(max_hold_seconds)s, %(currency)s)
    RETURNING id, total_tickets
), type AS (
    INSERT INTO ticket_types (event_id, name, price_minor, is_default)
    SELECT id, 'General admission', 0, true FROM event
    RETURNING id, event_id
), quota AS (
    INSERT INTO quotas (event_id, name, size, shards, is_event)
    SELECT id, 'Event capacity', total_tickets, %(shards)s, true FROM event
    RETURNING id, event_id
), listed AS (
    INSERT INTO quota_types (quota_id, ticket_type_id, event_id)
    SELECT quota.id, type.id, quota.event_id FROM quota, type
)
SELECT quota.event_id AS id, quota.id AS quota_id FROM quota
"""


def get_event(event_id: int) -> dict[str, Any]:
    with connection() as conn:
        return read_event(conn, event_id)


def read_event(conn: Connection, event_id: int) -> dict[str, Any]:
    """An event with its exact availability, on a connection the caller holds."""
    row = conn.execute(
        f"SELECT {EVENT_READ_COLUMNS} FROM events WHERE id = %(id)s",
        {"id": event_id, "now": clock.now()},
    ).fetchone()
    if row is None:
        raise NotFound("event_not_found", f"Event {event_id} does not exist")
    return row


def list_events(
    *,
    limit: int,
    offset: int,
    order: Literal["newest", "upcoming"],
    organizer_id: int | None = None,
) -> list[dict[str, Any]]:
    """One page of events. ``upcoming`` lists events not yet started, soonest first."""
    where = ["TRUE"]
    params: dict[str, Any] = {"limit": limit, "offset": offset, "now": clock.now()}
    if organizer_id is not None:
        where.append("organizer_id = %(organizer_id)s")
        params["organizer_id"] = organizer_id
    if order == "upcoming":
        where.append("start_time >= %(now)s AND status = 'active'")
        order_by = "start_time, id"
    else:
        order_by = "id DESC"
    with connection() as conn:
        return conn.execute(
            f"""SELECT {EVENT_READ_COLUMNS} FROM events WHERE {" AND ".join(where)}
                ORDER BY {order_by} LIMIT %(limit)s OFFSET %(offset)s""",
            params,
        ).fetchall()


def _lock_own_event(conn: Connection, event_id: int, organizer_id: int) -> dict[str, Any]:
    current = conn.execute(
        f"SELECT {EVENT_COLUMNS} FROM events WHERE id = %s FOR NO KEY UPDATE", (event_id,)
    ).fetchone()
    if current is None:
        raise NotFound("event_not_found", f"Event {event_id} does not exist")
    if current["organizer_id"] != organizer_id:
        raise Forbidden("not_event_owner", "Only the event's organizer can change it")
    return current


def update_event(*, event_id: int, organizer_id: int, changes: dict[str, Any]) -> dict[str, Any]:
    """Apply the sent fields; a new ``total_tickets`` moves availability by the same delta.

    The row is locked for the check and the write, so a capacity cut can never drop
    below what concurrent bookings and live holds have taken. The notification to
    booked users is written to the outbox in the same transaction.
    """
    changes = {k: v for k, v in changes.items() if k in UPDATABLE}
    now = clock.now()
    with connection() as conn:
        with conn.transaction():
            current = _lock_own_event(conn, event_id, organizer_id)
            cancelled = refusal(current, Ask(event_id, 0, now), (EVENT_ACTIVE,))
            if cancelled is not None:
                raise cancelled

            start = changes.get("start_time", current["start_time"])
            end = changes.get("end_time", current["end_time"])
            if start is not None and end is not None and end < start:
                raise Unprocessable("invalid_time_range", "end_time must not be before start_time")

            changed = {k: v for k, v in changes.items() if current[k] != v}
            if not changed:
                return read_event(conn, event_id)
            touch_gate(conn, event_id)  # every stock row locked: no grant reads the old event now

            assignments = [f"{column} = %({column})s" for column in changed]
            if "total_tickets" in changed:  # the event quota's size: one rule for every quota
                resize(conn, event_id, lock_event_quota(conn, event_id), changed["total_tickets"], now)
            row = conn.execute(
                f"""UPDATE events SET {", ".join(assignments)}, updated_at = now()
                    WHERE id = %(id)s RETURNING {EVENT_COLUMNS}""",
                {**changed, "id": event_id},
            ).fetchone()
            assert row is not None
            if {"max_tickets_per_booking", "max_tickets_per_customer"} & changed.keys():
                check_active_types(conn, event_id)
            if {"start_time", "end_time"} & changed.keys():
                holds_end_with_sales(conn, event_id)
            outbox_id = outbox.write(conn, EventUpdate(event_id=event_id, changes={
                k: {"old": _jsonable(current[k]), "new": _jsonable(row[k])} for k in changed}))
        outbox.publish_committed(conn, [outbox_id])  # the relay covers a failure
        return read_event(conn, event_id)


def holds_end_with_sales(conn: Connection, event_id: int) -> None:
    """Sales now close earlier (the event's, or a type's sales_end): a live hold ends when the
    sales of anything it holds close, at the latest. Call it under the event row's and the
    stock rows' locks (holds come after them in the lock order)."""
    conn.execute(_HOLDS_END_SQL, {"id": event_id})


# Each active hold of event %(id)s ends by the earliest close of its sales: the event's, or
# a type's of its lines (least() skips a NULL: no close).
_HOLDS_END_SQL = f"""
UPDATE holds h SET expires_at = c.closes
  FROM (SELECT hl.hold_id, least((SELECT {SALES_END_SQL} FROM events WHERE id = %(id)s), min(t.sales_end)) AS closes
          FROM holds x JOIN hold_lines hl ON hl.hold_id = x.id JOIN ticket_types t ON t.id = hl.ticket_type_id
         WHERE x.event_id = %(id)s AND x.status = 'active'
         GROUP BY hl.hold_id) AS c
 WHERE h.id = c.hold_id AND h.expires_at > c.closes"""


def cancel_event(*, event_id: int, organizer_id: int) -> dict[str, Any]:
    """Cancel an event and every booking of it; booked customers are notified.

    Cancelling twice is harmless. Live holds stay counted until they expire or are
    released, and can no longer be confirmed: customers' counters keep only those.
    """
    with connection() as conn:
        with conn.transaction():
            current = _lock_own_event(conn, event_id, organizer_id)
            if current["status"] == "cancelled":
                return read_event(conn, event_id)
            touch_gate(conn, event_id)  # every stock row locked: no grant reads the old event now
            conn.execute(_LOCK_BOOKED_CODES_SQL, {"id": event_id})  # after the stock rows: the lock order
            cancelled = conn.execute(_CANCEL_BOOKINGS_SQL, {"id": event_id}).fetchone()
            conn.execute(_RECOUNT_HOLDS_SQL, {"id": event_id})
            conn.execute(
                "UPDATE events SET status = 'cancelled', updated_at = now() WHERE id = %s", (event_id,)
            )
            for quota in conn.execute(_UNHELD_SQL, {"id": event_id}).fetchall():
                set_stock(conn, quota["id"], quota["unheld"])
            outbox_id = outbox.write(conn, EventCancelled(
                event_id=event_id, bookings_cancelled=cancelled["bookings"] if cancelled else 0))
        outbox.publish_committed(conn, [outbox_id])
        return read_event(conn, event_id)


# An event cancelled: customers' counters keep only their active holds (event and types).
_RECOUNT_HOLDS_SQL = """
WITH held AS MATERIALIZED (
    SELECT h.user_id, hl.ticket_type_id, hl.quantity FROM holds h JOIN hold_lines hl ON hl.hold_id = h.id
     WHERE h.event_id = %(id)s AND h.status = 'active'
), events_counted AS (
    UPDATE customer_tickets ct
       SET tickets = coalesce((SELECT sum(quantity) FROM held WHERE held.user_id = ct.user_id), 0)
     WHERE ct.event_id = %(id)s
    RETURNING ct.user_id
)
UPDATE customer_type_tickets ct
   SET tickets = coalesce((SELECT sum(quantity) FROM held
                            WHERE held.user_id = ct.user_id AND held.ticket_type_id = ct.ticket_type_id), 0)
  FROM (SELECT count(*) FROM events_counted) AS after_event
 WHERE ct.ticket_type_id IN (SELECT id FROM ticket_types WHERE event_id = %(id)s)
"""

# The access codes of the orders an event's cancellation ends, whose uses go back.
_LOCK_BOOKED_CODES_SQL = f"""SELECT id FROM access_codes
 WHERE id IN (SELECT access_code_id FROM bookings WHERE event_id = %(id)s AND status IN {SOLD_STATUSES})
 ORDER BY id FOR NO KEY UPDATE"""

# An event cancelled: every order holding tickets is cancelled in full (its lines, its total,
# its code's use).
_CANCEL_BOOKINGS_SQL = f"""
WITH c AS (
    UPDATE bookings
       SET status = 'cancelled', cancelled_quantity = cancelled_quantity + quantity,
           quantity = 0, cancelled_at = now(), total_minor = 0
     WHERE event_id = %(id)s AND status IN {SOLD_STATUSES}
    RETURNING id, access_code_id
), lines AS (
    UPDATE booking_lines l
       SET cancelled_quantity = l.cancelled_quantity + l.quantity, quantity = 0
      FROM c WHERE l.booking_id = c.id
), codes_back AS (
    {code_uses_back_sql("SELECT access_code_id AS id FROM c WHERE access_code_id IS NOT NULL")}
) SELECT count(*)::int AS bookings FROM c"""

# An event cancelled: what each quota holds but its active holds' units.
_UNHELD_SQL = """
SELECT q.id, (q.size - coalesce((SELECT sum(hl.quantity) FROM holds h
                                   JOIN hold_lines hl ON hl.hold_id = h.id
                                   JOIN quota_types qt ON qt.ticket_type_id = hl.ticket_type_id
                                  WHERE h.event_id = %(id)s AND h.status = 'active' AND qt.quota_id = q.id),
                                0))::int AS unheld
  FROM quotas q WHERE q.event_id = %(id)s ORDER BY q.id"""


def _jsonable(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value
