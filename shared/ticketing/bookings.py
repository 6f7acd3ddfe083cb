"""Bookings: the atomic ticket decrement, cancellation, and lookups of a customer's bookings.

A booking (an order) is ONE autocommit statement: the guarded decrement of one stock row of
every quota its lines' types belong to (the seed's request: the event quota's, one row), the
code's use, the customer's counters, the booking and its lines, the outbox row (and, with an
Idempotency-Key, the stored answer) are chained through RETURNING, so the stock rows are
locked for a single round trip and nothing is inserted unless tickets were really taken.
When no single row of some quota can serve it, the same statement built on the exact grant
runs under the lock of every stock row of the event (:func:`shared.ticketing.inventory.grant`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.notifications import outbox
from shared.notifications.contracts import BookingCancelled, BookingConfirmation
from shared.notifications.outbox import publish_committed
from shared.platform import clock
from shared.platform.db import Connection, connection
from shared.platform.errors import BadRequest, Conflict, Forbidden, NotFound, unknown_user_is_401
from shared.ticketing.idempotency import KeyLease, completion_cte
from shared.ticketing.inventory import (
    CUSTOMER_MAX_SQL,
    EVENT_RULES,
    GATE_RULES,
    NO_TYPE_LIMIT,
    TYPE_COLUMNS,
    Ask,
    Line,
    Order,
    TicketType,
    count_cte,
    count_ctes,
    first_failed,
    give_back,
    grant,
    grant_ctes,
    judge,
    lock_return_rows,
    lock_stock,
    order_params,
    read_gate,
    read_quotas,
    rule_params,
    take_cte,
    type_count_cte,
)
from shared.ticketing.order_states import REMAINING_TOTAL_SQL, code_uses_back_sql

BOOKING_COLUMNS = (
    "id, event_id, user_id, quantity, cancelled_quantity, status, hold_id, created_at, cancelled_at, "
    "total_minor, currency"
)

# A booking line as the API shows it (``bl``: booking_lines).
LINE_JSON = """json_build_object('id', bl.id, 'ticket_type_id', bl.ticket_type_id, 'quantity', bl.quantity,
                  'cancelled_quantity', bl.cancelled_quantity, 'unit_price_minor', bl.unit_price_minor)"""
# A booking's lines (``{booking}``: a bookings alias), for reads.
LINES_SQL = f"""(SELECT coalesce(json_agg({LINE_JSON} ORDER BY bl.ticket_type_id), '[]')
    FROM booking_lines bl WHERE bl.booking_id = {{booking}}.id) AS lines"""

# The order's lines, written with the booking (``lines``: ticket_type_id, quantity, price_minor).
BOOKED_LINES_CTE = """booked_lines AS (
    INSERT INTO booking_lines (booking_id, ticket_type_id, quantity, unit_price_minor)
    SELECT booking.id, l.ticket_type_id, l.quantity, l.price_minor FROM booking, lines l
     ORDER BY l.ticket_type_id
    RETURNING id, booking_id, ticket_type_id, quantity, cancelled_quantity, unit_price_minor
)"""

# The confirmation lists the lines by type name (``booked_lines``, written by the same statement).
_NOTIFIED_LINES_SQL = """(SELECT coalesce(jsonb_agg(jsonb_build_object(
        'ticket_type_id', bl.ticket_type_id, 'name', t.name, 'quantity', bl.quantity) ORDER BY bl.ticket_type_id), '[]')
      FROM booked_lines bl JOIN ticket_types t ON t.id = bl.ticket_type_id WHERE bl.booking_id = booking.id)"""

# The same for a statement of one booking whose ``lines`` CTE names its types (no join).
_ORDER_NOTIFIED_LINES_SQL = """(SELECT jsonb_agg(jsonb_build_object(
        'ticket_type_id', l.ticket_type_id, 'name', l.name, 'quantity', l.quantity) ORDER BY l.ticket_type_id)
      FROM lines l)"""


def confirmation_cte(lines: str = _NOTIFIED_LINES_SQL) -> str:
    """The booking's confirmation, written by the statement that writes the booking (after
    its lines; ``lines``: the SQL of its lines as the notification lists them)."""
    return f"""notification AS (
    {outbox.insert_select_sql(BookingConfirmation, "booking", booking_id="id", lines=lines)}
    RETURNING id, (payload->>'booking_id')::bigint AS booking_id, payload
)"""


CONFIRMATION_CTE = confirmation_cte()

# What a keyed booking statement stores as the key's answer: the booking with its lines.
ANSWER_CTE = f""", answer AS (
    SELECT booking.*, (SELECT json_agg({LINE_JSON} ORDER BY bl.ticket_type_id)
                         FROM booked_lines bl WHERE bl.booking_id = booking.id) AS lines
      FROM booking
)"""


def keyed_answer(idempotent: bool, keys_from: str | None = None) -> str:
    """The CTEs storing the booking (with its lines) as the key's answer, when ``idempotent``."""
    return f"{ANSWER_CTE}{completion_cte('answer', keys_from=keys_from)}" if idempotent else ""


# What a booking statement answers: the booking, its lines, its confirmation.
BOOKED_SQL = f"""SELECT booking.*, notification.id AS outbox_id, notification.payload AS outbox_payload,
       (SELECT json_agg({LINE_JSON} ORDER BY bl.ticket_type_id)
          FROM booked_lines bl WHERE bl.booking_id = booking.id) AS lines"""


@functools.cache
def book_sql(*, idempotent: bool, exact: bool = False, order: bool = False) -> str:
    """The one-statement booking (``exact``: its exact-path twin, every stock row locked;
    ``order``: of any order, lines and code, else the seed's request: the hot path)."""
    return f"""
WITH {grant_ctes(exact=exact, order=order)}, {count_ctes(order=order)}, booking AS (
    INSERT INTO bookings (event_id, user_id, quantity, total_minor, currency, access_code_id)
    SELECT g.id, %(user_id)s, g.quantity, g.total_minor, g.currency, g.access_code_id
      FROM granted g, (SELECT count(*) FROM type_counted) AS counters
    RETURNING {BOOKING_COLUMNS}
), {BOOKED_LINES_CTE}, {confirmation_cte(_ORDER_NOTIFIED_LINES_SQL)}{keyed_answer(idempotent)}
{BOOKED_SQL} FROM booking, notification
"""


BOOK_SQL = book_sql(idempotent=False)
BOOK_IDEMPOTENT_SQL = book_sql(idempotent=True)


def book(
    *,
    user_id: int,
    event_id: int,
    quantity: int | None = None,
    lines: Sequence[tuple[int, int]] | None = None,
    access_code: str | None = None,
    default_max: int | None = None,
    idempotency: KeyLease | None = None,
) -> dict[str, Any]:
    """Book an order for a user, or raise why not: ``quantity`` tickets of the event's
    default type, or ``lines`` ((ticket_type_id, quantity) each), with an ``access_code``.

    ``default_max``: the per-booking maximum of events without their own (None: the setting)."""
    params = order_params(
        rule_params(event_id=event_id, quantity=quantity or 0, default_max=default_max, now=clock.now()),
        lines, access_code,
    )
    params["user_id"] = user_id
    order = params["order"]
    if idempotency is not None:
        params.update(idempotency.params())
    idem = idempotency is not None
    with connection() as conn:

        def run(statement: str) -> dict[str, Any] | None:
            with unknown_user_is_401():
                return conn.execute(statement, params).fetchone()

        row = grant(
            conn, lambda: run(book_sql(idempotent=idem, order=order)),
            exact=lambda: run(book_sql(idempotent=idem, exact=True, order=order)), params=params, user_id=user_id,
        )
        if idempotency is not None:
            idempotency.completed = True  # by the completion CTE, in the same statement
        outbox.publish_written(conn, [(row["outbox_id"], confirmation(row))])
    return row


def confirmation(row: dict[str, Any]) -> BookingConfirmation:
    """The confirmation :data:`CONFIRMATION_CTE` wrote for a booking row (no read back)."""
    return BookingConfirmation.parse(row["outbox_payload"])


@dataclass
class BatchItem:
    """One request of a coalesced batch: who books how many, under which key (if any)."""

    user_id: int
    quantity: int
    idempotency: KeyLease | None = None
    lines: Sequence[tuple[int, int]] | None = None  # (ticket_type_id, quantity); None: the default type


_BATCH_COUNT_CTE = count_cte(
    """SELECT granted.id, req.user_id, sum(req.quantity), granted.customer_max FROM req, granted
     GROUP BY granted.id, req.user_id, granted.customer_max"""
)
_BATCH_TYPE_COUNT_CTE = type_count_cte(
    """SELECT l.ticket_type_id, req.user_id, sum(l.quantity), max(l.type_max)
      FROM req_lines l JOIN req ON req.seq = l.seq, (SELECT count(*) FROM counted) AS after_event
     GROUP BY l.ticket_type_id, req.user_id ORDER BY l.ticket_type_id, req.user_id"""
)

# What a batch takes of each quota: every request's lines, one unit per ticket of each type's quotas.
_BATCH_DEMAND_SQL = """SELECT qt.quota_id, sum(l.quantity)::int FROM req_lines l
                 JOIN quota_types qt ON qt.ticket_type_id = l.ticket_type_id GROUP BY qt.quota_id"""

# Many bookings of one event in one statement, for a transaction that already holds every
# stock row's lock and has decided every request (each quota's total is taken across its
# rows). Booking ids are drawn up front so each answer maps back to its request.
BOOK_BATCH_SQL = f"""
WITH req AS MATERIALIZED (
    SELECT nextval(pg_get_serial_sequence('bookings', 'id')) AS id, r.*
      FROM unnest(%(seq)s::int[], %(user_ids)s::bigint[], %(quantities)s::int[], %(totals)s::bigint[],
                  %(idem_user_ids)s::bigint[], %(idem_keys)s::text[], %(idem_owners)s::uuid[])
           AS r(seq, user_id, quantity, total_minor, idem_user_id, idem_key, idem_owner)
), req_lines AS MATERIALIZED (
    SELECT * FROM unnest(%(line_seqs)s::int[], %(line_types)s::bigint[], %(line_quantities)s::int[],
                         %(line_prices)s::bigint[], %(line_limits)s::int[])
           AS l(seq, ticket_type_id, quantity, price_minor, type_max)
), {take_cte(_BATCH_DEMAND_SQL)},
granted AS (
    SELECT id, currency, {CUSTOMER_MAX_SQL} AS customer_max FROM events WHERE id = %(event_id)s
), {_BATCH_COUNT_CTE}, {_BATCH_TYPE_COUNT_CTE}, booking AS (
    INSERT INTO bookings (id, event_id, user_id, quantity, total_minor, currency) OVERRIDING SYSTEM VALUE
    SELECT req.id, granted.id, req.user_id, req.quantity, req.total_minor, granted.currency
      FROM req, granted, (SELECT count(*) FROM type_counted) AS counters ORDER BY req.seq
    RETURNING {BOOKING_COLUMNS}
), booked_lines AS (
    INSERT INTO booking_lines (booking_id, ticket_type_id, quantity, unit_price_minor)
    SELECT booking.id, l.ticket_type_id, l.quantity, l.price_minor
      FROM booking JOIN req ON req.id = booking.id JOIN req_lines l ON l.seq = req.seq
     ORDER BY booking.id, l.ticket_type_id
    RETURNING id, booking_id, ticket_type_id, quantity, cancelled_quantity, unit_price_minor
), {CONFIRMATION_CTE}{keyed_answer(True, keys_from="req")}
{BOOKED_SQL}, req.seq
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
    """Grant what the rules (:data:`shared.ticketing.inventory.RULES`, the line rules, each
    quota's room, both customer limits: :func:`shared.ticketing.inventory.judge`) allow,
    under the stock rows' locks.

    The rules' checks decide here, on what the lock makes exact; the statement then relies
    on the database for the customer limits too (their CHECKs would abort the batch rather
    than let a wrong decision through). Expired holds are not reclaimed here: a request
    they stand in the way of is left to the one-request path, which reclaims them.
    """
    params = rule_params(event_id=event_id, quantity=0, default_max=default_max, now=clock.now())
    lock_stock(conn, event_id)  # every writer of the gate or the stock takes these too
    event = read_gate(conn, params, expired_held=False)
    if first_failed(event, Ask(event_id, 0, params["now"]), EVENT_RULES) is not None:
        return []  # the event grants nobody now: each request hears why on the one-request path
    assert event is not None
    # New statements after the locks: they see every committed count of this event, and
    # nobody changes them while the locks are held (every writer takes a stock row first).
    types: dict[int, TicketType] = {t["id"]: t for t in conn.execute(_EVENT_TYPES_SQL, (event_id,)).fetchall()}
    default = next(t["id"] for t in types.values() if t["is_default"])
    # Expired holds are not counted as free here (module docstring of inventory: reclaiming is the one path's).
    every_quota = read_quotas(conn, params)  # no types query: the batch read them above
    quotas = [{**q, "expired_held": 0} for q in every_quota]
    users = sorted({i.user_id for i in items})
    has: dict[int, int] = {
        row["user_id"]: row["tickets"]
        for row in conn.execute(
            "SELECT user_id, tickets FROM customer_tickets WHERE event_id = %s AND user_id = ANY(%s)",
            (event_id, users),
        ).fetchall()
    }
    type_has: dict[tuple[int, int], int] = {
        (row["ticket_type_id"], row["user_id"]): row["tickets"]
        for row in conn.execute(
            "SELECT ticket_type_id, user_id, tickets FROM customer_type_tickets"
            " WHERE ticket_type_id = ANY(%s) AND user_id = ANY(%s)",
            (list(types), users),
        ).fetchall()
    }
    granted: list[tuple[int, list[Line]]] = []
    for seq, item in enumerate(items):
        lines = [Line(t, n) for t, n in item.lines] if item.lines is not None else [Line(default, item.quantity)]
        if len({line.ticket_type_id for line in lines}) != len(lines):
            continue
        ask = Ask(event_id, sum(line.quantity for line in lines), params["now"])
        order = Order(lines, types, None, False, quotas, booked=has.get(item.user_id, 0),
                      per_type={line.ticket_type_id: type_has.get((line.ticket_type_id, item.user_id), 0)
                                for line in lines})
        if first_failed(event, ask, GATE_RULES) is not None or judge(event, ask, order) is not None:
            continue
        granted.append((seq, lines))
        for quota in quotas:
            quota["available"] -= order.demand(quota)
        has[item.user_id] = order.booked + ask.quantity
        for line in lines:
            key = (line.ticket_type_id, item.user_id)
            type_has[key] = type_has.get(key, 0) + line.quantity
    if not granted:
        return []
    chosen = [(items[seq], lines) for seq, lines in granted]
    flat = [(seq, line) for seq, lines in granted for line in lines]
    return conn.execute(
        BOOK_BATCH_SQL,
        {
            "event_id": event_id,
            "customer_max": params["customer_max"],
            "default_max": params["default_max"],
            "seq": [seq for seq, _ in granted],
            "user_ids": [i.user_id for i, _ in chosen],
            "quantities": [sum(line.quantity for line in lines) for _, lines in chosen],
            "totals": [sum(line.quantity * types[line.ticket_type_id]["price_minor"] for line in lines)
                       for _, lines in chosen],
            "line_seqs": [seq for seq, _ in flat],
            "line_types": [line.ticket_type_id for _, line in flat],
            "line_quantities": [line.quantity for _, line in flat],
            "line_prices": [types[line.ticket_type_id]["price_minor"] for _, line in flat],
            "line_limits": [types[line.ticket_type_id]["max_per_customer"] or NO_TYPE_LIMIT for _, line in flat],
            "idem_user_ids": [i.idempotency.user_id if i.idempotency else None for i, _ in chosen],
            "idem_keys": [i.idempotency.key if i.idempotency else None for i, _ in chosen],
            "idem_owners": [i.idempotency.owner if i.idempotency else None for i, _ in chosen],
        },
    ).fetchall()


_EVENT_TYPES_SQL = f"SELECT {TYPE_COLUMNS}, is_default FROM ticket_types WHERE event_id = %s"


def cancel_booking(
    *, booking_id: int, user_id: int, quantity: int | None, line_id: int | None = None
) -> dict[str, Any]:
    """Give back all (``quantity`` None) or some tickets of a booking (of its line
    ``line_id``); repeating is harmless. A line's tickets go back to every quota of its type.

    Locks the event row, then the stock rows the tickets go back to, then its access code
    (a booking cancelled in full gives its code's use back), then the booking row: the order
    every writer uses. ``total_minor`` becomes what the remaining tickets cost.
    """
    with connection() as conn:
        with conn.transaction():
            current = conn.execute(
                f"SELECT {BOOKING_COLUMNS}, access_code_id FROM bookings WHERE id = %s AND user_id = %s",
                (booking_id, user_id),
            ).fetchone()
            if current is None:
                raise NotFound("booking_not_found", f"Booking {booking_id} does not exist")
            conn.execute("SELECT 1 FROM events WHERE id = %s FOR NO KEY UPDATE", (current["event_id"],))
            lines = conn.execute(_LINES_SQL, (booking_id,)).fetchall()
            rows = lock_return_rows(conn, current["event_id"], [line["ticket_type_id"] for line in lines])
            if current["access_code_id"] is not None:
                conn.execute("SELECT 1 FROM access_codes WHERE id = %s FOR NO KEY UPDATE", (current["access_code_id"],))
            current = conn.execute(
                f"SELECT {BOOKING_COLUMNS}, access_code_id FROM bookings WHERE id = %s FOR UPDATE", (booking_id,)
            ).fetchone()
            assert current is not None
            if current["status"] == "cancelled":
                return with_lines(conn, current)  # cancelling twice changes nothing
            lines = conn.execute(_LINES_SQL, (booking_id,)).fetchall()  # under the booking's lock
            back = _cancelled_lines(booking_id, current, lines, quantity, line_id)
            returned = sum(n for _, n in back)
            conn.execute(
                """UPDATE booking_lines l
                       SET quantity = l.quantity - b.n, cancelled_quantity = l.cancelled_quantity + b.n
                      FROM unnest(%s::bigint[], %s::int[]) AS b(id, n) WHERE l.id = b.id""",
                ([line_id for line_id, _ in back], [n for _, n in back]),
            )
            row = conn.execute(
                f"""UPDATE bookings
                       SET quantity = quantity - %(n)s,
                           cancelled_quantity = cancelled_quantity + %(n)s,
                           status = CASE WHEN quantity = %(n)s THEN 'cancelled' ELSE status END,
                           cancelled_at = CASE WHEN quantity = %(n)s THEN now() ELSE cancelled_at END,
                           total_minor = {REMAINING_TOTAL_SQL.format(booking="bookings")}
                     WHERE id = %(id)s
                 RETURNING {BOOKING_COLUMNS}""",
                {"n": returned, "id": booking_id},
            ).fetchone()
            assert row is not None
            if row["status"] == "cancelled" and current["access_code_id"] is not None:
                conn.execute(code_uses_back_sql("SELECT %(id)s::bigint AS id"), {"id": current["access_code_id"]})
            by_id = {line["id"]: line["ticket_type_id"] for line in lines}
            give_back(conn, row["event_id"], rows, user_id, [(by_id[i], n) for i, n in back])
            names = {t["id"]: t["name"] for t in conn.execute(
                "SELECT id, name FROM ticket_types WHERE id = ANY(%s)", (list(by_id.values()),)).fetchall()}
            outbox_id = outbox.write(conn, BookingCancelled(
                booking_id=booking_id, event_id=row["event_id"], user_id=user_id,
                quantity=returned, remaining=row["quantity"],
                lines=[{"ticket_type_id": by_id[i], "name": names[by_id[i]], "quantity": n} for i, n in back if n]))
            row = with_lines(conn, row)
        publish_committed(conn, [outbox_id])
    return row


_LINES_SQL = """SELECT id, ticket_type_id, quantity, cancelled_quantity, unit_price_minor
  FROM booking_lines WHERE booking_id = %s ORDER BY ticket_type_id"""


def _cancelled_lines(
    booking_id: int, booking: dict[str, Any], lines: list[dict[str, Any]], quantity: int | None, line_id: int | None
) -> list[tuple[int, int]]:
    """What a cancellation gives back, as (line id, tickets): every line's remaining tickets,
    or ``quantity`` of the line ``line_id`` (of the only line when the booking has one)."""
    if line_id is None:
        if quantity is None:
            return [(line["id"], line["quantity"]) for line in lines]
        if len(lines) > 1:
            raise BadRequest(
                "line_required",
                f"Booking {booking_id} has {len(lines)} lines: say which one to cancel tickets of (line_id)",
                line_ids=[line["id"] for line in lines],
            )
    line = next((x for x in lines if line_id is None or x["id"] == line_id), None)
    if line is None:
        raise NotFound("booking_line_not_found", f"Booking {booking_id} has no line {line_id}")
    returned = line["quantity"] if quantity is None else quantity
    if returned > line["quantity"]:
        raise Conflict(
            "cancel_exceeds_booking",
            f"Booking {booking_id} holds only {line['quantity']} tickets"
            + ("" if len(lines) == 1 else f" of line {line['id']}"),
            held=line["quantity"],
            requested=returned,
        )
    return [(line["id"], returned)]


def with_lines(conn: Connection, booking: dict[str, Any]) -> dict[str, Any]:
    """The booking with its ``lines`` (ticket type order)."""
    return {**booking, "lines": conn.execute(_LINES_SQL, (booking["id"],)).fetchall()}


# A booking's columns and its lines, for reads (``b``: bookings).
BOOKING_READ_COLUMNS = ", ".join(
    [*(f"b.{c.strip()}" for c in BOOKING_COLUMNS.split(",")), LINES_SQL.format(booking="b")]
)


def get_booking(*, booking_id: int, user_id: int) -> dict[str, Any]:
    """A booking is visible to the customer who made it and to the event's organizer."""
    columns = BOOKING_READ_COLUMNS
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
            f"""SELECT {BOOKING_READ_COLUMNS} FROM bookings b WHERE b.event_id = %s
                ORDER BY b.id DESC LIMIT %s OFFSET %s""",
            (event_id, limit, offset),
        ).fetchall()


def list_bookings(*, user_id: int, limit: int, offset: int) -> list[dict[str, Any]]:
    with connection() as conn:
        return conn.execute(
            f"""SELECT {BOOKING_READ_COLUMNS} FROM bookings b WHERE b.user_id = %s
                ORDER BY b.id DESC LIMIT %s OFFSET %s""",
            (user_id, limit, offset),
        ).fetchall()
