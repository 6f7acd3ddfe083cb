"""Seat holds: tickets set aside for a customer until they confirm, release, or time runs out.

Creating a hold is the same one-statement grant as a booking, under the same rules
(shared/ticketing/inventory.py), and counts against the customer's limit until it ends. Its lifetime
is what the customer asked (or ``HOLD_TTL_SECONDS``), capped by the event's
``max_hold_seconds`` (or ``HOLD_TTL_MAX_SECONDS``), and never past the moment the event's
sales close (its end, or its start when it has no end) nor the earliest ``sales_end`` of its
lines' types (a hold outliving its type's sales would sell after them): ``expires_at`` says
which. A type's ``sales_end`` moved earlier shortens its live holds (ticket_types.py).
Expiry needs no sweeper:
an active hold past ``expires_at`` is counted as free by every reader and reclaimed by
the first grant that needs its tickets; :func:`tidy_expired_holds` only tidies.
Confirming a live hold re-checks only that the event can still grant (its tickets were
granted when it was made): it confirms even after its type was deactivated, its type's
sales ended or its code was deactivated or used up meanwhile, at the prices stored on its
lines when it was made (``hold_lines.unit_price_minor``). Safe: the hold already took
its units of every quota, its counters and its code's use, so confirming takes nothing
new; the rules were met when those were taken. Confirming an expired one grants its
tickets again under every rule, at today's prices (a new grant), a shortage then saying
``hold_expired``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from shared.notifications.outbox import publish_written
from shared.platform import clock
from shared.platform.db import Connection, connection
from shared.platform.errors import AppError, Conflict, NotFound, unknown_user_is_401
from shared.platform.settings import get_settings
from shared.ticketing.bookings import (
    BOOKED_LINES_CTE,
    BOOKED_SQL,
    BOOKING_COLUMNS,
    BOOKING_READ_COLUMNS,
    CONFIRMATION_CTE,
    confirmation,
    keyed_answer,
)
from shared.ticketing.idempotency import KeyLease, completion_cte
from shared.ticketing.inventory import (
    EVENT_RULES,
    OPEN_SQL,
    TICKETS_LEFT,
    Ask,
    Gate,
    count_ctes,
    expired_hold_sql,
    give_back,
    grant,
    grant_ctes,
    is_live,
    live_hold_sql,
    lock_codes,
    lock_return_rows,
    lock_stock,
    order_params,
    read_gate,
    reclaim_expired_holds,
    refusal,
    rule_params,
)

HOLD_COLUMNS = "id, event_id, user_id, quantity, status, expires_at, created_at, closed_at, access_code_id"

# A hold line as the API shows it (``hl``: hold_lines), with its type's price when held.
_LINE_JSON = """json_build_object('ticket_type_id', hl.ticket_type_id, 'quantity', hl.quantity,
                  'unit_price_minor', hl.unit_price_minor)"""
# A hold's columns with its lines, what they cost (at the prices when held) and in which
# currency (``h``: holds).
HOLD_READ_COLUMNS = ", ".join(f"h.{c.strip()}" for c in HOLD_COLUMNS.split(",")) + f""",
       (SELECT coalesce(json_agg({_LINE_JSON} ORDER BY hl.ticket_type_id), '[]')
          FROM hold_lines hl WHERE hl.hold_id = h.id) AS lines,
       (SELECT coalesce(sum(hl.quantity * hl.unit_price_minor), 0) FROM hold_lines hl
         WHERE hl.hold_id = h.id)::bigint AS total_minor,
       (SELECT currency FROM events e WHERE e.id = h.event_id) AS currency"""


@functools.cache
def _hold_sql(idempotent: bool, exact: bool = False, order: bool = False) -> str:
    return f"""
WITH {grant_ctes(exact=exact, order=order)}, {count_ctes(order=order)}, hold AS (
    INSERT INTO holds (event_id, user_id, quantity, expires_at, access_code_id)
    SELECT g.id, %(user_id)s, g.quantity,
           least(%(now)s + least(%(ttl)s, coalesce(g.max_hold_seconds, %(ttl_max)s)) * interval '1 second',
                 g.sales_end,
                 (SELECT min(t.sales_end) FROM lines l JOIN ticket_types t ON t.id = l.ticket_type_id)),
           g.access_code_id
      FROM granted g, (SELECT count(*) FROM type_counted) AS counters
    RETURNING {HOLD_COLUMNS}
), held_lines AS (
    INSERT INTO hold_lines (hold_id, ticket_type_id, quantity, unit_price_minor)
    SELECT hold.id, l.ticket_type_id, l.quantity, l.price_minor FROM hold, lines l ORDER BY l.ticket_type_id
    RETURNING ticket_type_id, quantity, unit_price_minor
), answer AS (
    SELECT hold.*, g.total_minor, g.currency,
           (SELECT json_agg({_LINE_JSON} ORDER BY hl.ticket_type_id) FROM held_lines hl) AS lines
      FROM hold, granted g
){completion_cte("answer") if idempotent else ""}
SELECT * FROM answer
"""


# What a confirmed hold's lines cost: a live hold's tickets were granted when it was made,
# at the prices then (stored on its lines); an expired hold granted again is a new grant,
# at today's prices.
HELD_PRICE = "hl.unit_price_minor"
TODAYS_PRICE = "t.price_minor"


def _booking_from_hold_sql(which: str, idempotent: bool, *, before: str = "", price: str = HELD_PRICE) -> str:
    """One statement that confirms the hold ``which`` selects (a predicate on ``holds h``)
    and writes its booking (carrying ``hold_id``), the confirmation and, if ``idempotent``,
    the key's answer. ``before``: CTEs ``which`` reads, each followed by a comma; ``price``:
    each line's unit price (:data:`HELD_PRICE` or :data:`TODAYS_PRICE`)."""
    return f"""
WITH {before}held AS (
    UPDATE holds h SET status = 'confirmed', closed_at = %(now)s
     WHERE {which}
    RETURNING id, event_id, user_id, quantity, access_code_id
), lines AS MATERIALIZED (
    SELECT hl.ticket_type_id, hl.quantity, {price} AS price_minor
      FROM held JOIN hold_lines hl ON hl.hold_id = held.id JOIN ticket_types t ON t.id = hl.ticket_type_id
), booking AS (
    INSERT INTO bookings (event_id, user_id, quantity, hold_id, total_minor, currency, access_code_id)
    SELECT held.event_id, held.user_id, held.quantity, held.id,
           (SELECT coalesce(sum(quantity * price_minor), 0) FROM lines), e.currency, held.access_code_id
      FROM held JOIN events e ON e.id = held.event_id
    RETURNING {BOOKING_COLUMNS}
), {BOOKED_LINES_CTE}, {CONFIRMATION_CTE}{keyed_answer(idempotent)}
{BOOKED_SQL} FROM booking, notification
"""


def _confirm_sql(idempotent: bool) -> str:
    # The event is share-locked first (event before hold, like every writer), so a
    # concurrent event cancellation cannot miss the booking this creates. A live hold's
    # tickets were granted when it was made: only the event's own rules are checked again.
    return _booking_from_hold_sql(
        f"""h.id = %(hold_id)s AND h.user_id = %(user_id)s AND {live_hold_sql("h")}
       AND h.event_id IN (SELECT id FROM event)""",
        idempotent,
        before=f"""event AS (
    SELECT id FROM events
     WHERE {OPEN_SQL}
       FOR SHARE
), """,
    )


def create_hold(
    *,
    user_id: int,
    event_id: int,
    quantity: int | None = None,
    ttl_seconds: int | None,
    lines: Sequence[tuple[int, int]] | None = None,
    access_code: str | None = None,
    default_max: int | None = None,
    idempotency: KeyLease | None = None,
) -> dict[str, Any]:
    """Hold an order (``quantity`` of the default type, or ``lines``, with an
    ``access_code``) for ``ttl_seconds`` (None: the default), within the event's bounds."""
    settings = get_settings()
    params = order_params(
        rule_params(event_id=event_id, quantity=quantity or 0, default_max=default_max, now=clock.now()),
        lines, access_code,
    )
    params.update(
        user_id=user_id,
        ttl=settings.hold_ttl_seconds if ttl_seconds is None else ttl_seconds,
        ttl_max=settings.hold_ttl_max_seconds,
    )
    if idempotency is not None:
        params.update(idempotency.params())
    with connection() as conn, unknown_user_is_401():
        idem, order = idempotency is not None, params["order"]
        row = grant(
            conn,
            lambda: conn.execute(_hold_sql(idem, False, order), params).fetchone(),
            exact=lambda: conn.execute(_hold_sql(idem, True, order), params).fetchone(),
            params=params,
            user_id=user_id,
        )
    if idempotency is not None:
        idempotency.completed = True  # by the completion CTE, in the same statement
    return row


def get_hold(*, hold_id: int, user_id: int) -> dict[str, Any]:
    with connection() as conn:
        row = conn.execute(
            f"SELECT {HOLD_READ_COLUMNS} FROM holds h WHERE h.id = %s AND h.user_id = %s", (hold_id, user_id)
        ).fetchone()
    if row is None:
        raise NotFound("hold_not_found", f"Hold {hold_id} does not exist")
    return _effective(row)


def _effective(row: dict[str, Any]) -> dict[str, Any]:
    """An active hold past its expiry is expired, whether or not it was tidied yet."""
    if row["status"] == "active" and not is_live(row, clock.now()):
        return {**row, "status": "expired"}
    return row


def confirm_hold(
    *, hold_id: int, user_id: int, default_max: int | None = None, idempotency: KeyLease | None = None
) -> tuple[dict[str, Any], bool]:
    """Turn a hold into a booking; returns (booking, created).

    Confirming twice returns the same booking. A hold that expired is confirmed only if
    its tickets can still be had under every grant rule; otherwise ``hold_expired`` says
    how many are left (or the rule says why).
    """
    hold = get_hold(hold_id=hold_id, user_id=user_id)
    now = clock.now()
    params: dict[str, Any] = {"hold_id": hold_id, "user_id": user_id, "event_id": hold["event_id"], "now": now}
    if idempotency is not None:
        params.update(idempotency.params())
    with connection() as conn:
        row = conn.execute(_confirm_sql(idempotency is not None), params).fetchone()
        if row is None:
            rules = order_params(
                rule_params(event_id=hold["event_id"], quantity=hold["quantity"], default_max=default_max, now=now),
                [(line["ticket_type_id"], line["quantity"]) for line in hold["lines"]],
                code_id=hold["access_code_id"],
            )
            row = _confirm_expired(conn, hold, {**rules, "user_id": user_id}, idempotency)
            if row is None:  # confirmed before: the same booking again
                existing = conn.execute(
                    f"SELECT {BOOKING_READ_COLUMNS} FROM bookings b WHERE b.hold_id = %s", (hold_id,)
                ).fetchone()
                assert existing is not None
                return existing, False
        elif idempotency is not None:
            idempotency.completed = True
        publish_written(conn, [(row["outbox_id"], confirmation(row))])
    return row, True


# An expired hold's tickets granted again, to the same customer, under every stock row's lock.
_REGRANT_SQL = f"WITH {grant_ctes(exact=True, order=True)}, {count_ctes(order=True)} SELECT event_id FROM counted"


def _confirm_expired(
    conn: Connection, hold: dict[str, Any], params: dict[str, Any], idempotency: KeyLease | None
) -> dict[str, Any] | None:
    """The slow path of a confirmation: the hold is not active any more (or never was).

    A hold that expired gets its tickets back and is booked again *as this hold* if the
    grant rules allow (the booking carries ``hold_id``, the hold becomes ``confirmed``),
    so a second confirm finds it confirmed. Returns None when it was already confirmed.
    One transaction, in the lock order: the event row, every stock row, the codes the
    reclaim gives back and the grant uses (the hold's), then the hold.
    """
    hold_id, event_id, now = hold["id"], hold["event_id"], params["now"]
    with conn.transaction():
        event = read_gate(conn, params, "FOR NO KEY UPDATE")
        lock_stock(conn, event_id)
        lock_codes(conn, event_id, now, hold["access_code_id"])  # its code_id never changes
        current = conn.execute(
            f"SELECT {HOLD_COLUMNS} FROM holds WHERE id = %s FOR UPDATE", (hold_id,)
        ).fetchone()
        assert current is not None
        if current["status"] == "confirmed":
            return None
        if current["status"] == "released":
            raise Conflict("hold_released", f"Hold {hold_id} was released")
        closed = refusal(event, Ask.of(params), EVENT_RULES)
        if closed is not None:
            raise closed
        price = HELD_PRICE
        if not is_live(current, now):
            reclaim_expired_holds(conn, event_id, now)  # this hold's tickets back in the pool
            grant(conn, lambda: conn.execute(_REGRANT_SQL, params).fetchone(),
                  params=params, user_id=params["user_id"], locked=True,
                  wording={TICKETS_LEFT: functools.partial(_hold_expired, hold_id)})
            price = TODAYS_PRICE  # a new grant
        row = conn.execute(
            _booking_from_hold_sql("h.id = %(hold_id)s", idempotency is not None, price=price),
            {**params, "hold_id": hold_id, **(idempotency.params() if idempotency else {})},
        ).fetchone()
    assert row is not None
    if idempotency is not None:
        idempotency.completed = True
    return row


def _hold_expired(hold_id: int, event: Gate, ask: Ask) -> AppError:
    """An expired hold's wording of a shortage: its tickets are gone (every stock row is locked)."""
    return Conflict(
        "hold_expired",
        f"Hold {hold_id} expired and its tickets are no longer available",
        available=ask.free(event),
        requested=ask.quantity,
    )


def release_hold(*, hold_id: int, user_id: int) -> dict[str, Any]:
    """Give a hold's tickets back now; releasing twice (or after expiry) is harmless."""
    hold = get_hold(hold_id=hold_id, user_id=user_id)
    with connection() as conn, conn.transaction():
        conn.execute("SELECT 1 FROM events WHERE id = %s FOR NO KEY UPDATE", (hold["event_id"],))
        lines = conn.execute(_HOLD_LINES_SQL, (hold_id,)).fetchall()
        # Before the hold: the lock order (stock rows, then its code).
        rows = lock_return_rows(conn, hold["event_id"], [line["ticket_type_id"] for line in lines])
        if hold["access_code_id"] is not None:
            conn.execute("SELECT 1 FROM access_codes WHERE id = %s FOR NO KEY UPDATE", (hold["access_code_id"],))
        row = conn.execute(
            f"""UPDATE holds SET status = 'released', closed_at = %s
                 WHERE id = %s AND status = 'active' RETURNING {HOLD_COLUMNS}""",
            (clock.now(), hold_id),
        ).fetchone()
        if row is None:
            current = conn.execute(f"SELECT {HOLD_READ_COLUMNS} FROM holds h WHERE h.id = %s", (hold_id,)).fetchone()
            assert current is not None
            return current
        if row["access_code_id"] is not None:  # an unconfirmed hold gives its code's use back
            conn.execute("UPDATE access_codes SET uses = uses - 1 WHERE id = %s", (row["access_code_id"],))
        give_back(conn, row["event_id"], rows, row["user_id"],
                  [(line["ticket_type_id"], line["quantity"]) for line in lines])
    return {**row, "lines": lines, "total_minor": hold["total_minor"], "currency": hold["currency"]}


_HOLD_LINES_SQL = """SELECT ticket_type_id, quantity, unit_price_minor FROM hold_lines
 WHERE hold_id = %s ORDER BY ticket_type_id"""


def list_holds(*, user_id: int, limit: int, offset: int) -> list[dict[str, Any]]:
    with connection() as conn:
        rows = conn.execute(
            f"SELECT {HOLD_READ_COLUMNS} FROM holds h WHERE h.user_id = %s ORDER BY h.id DESC LIMIT %s OFFSET %s",
            (user_id, limit, offset),
        ).fetchall()
    return [_effective(r) for r in rows]


def tidy_expired_holds(batch_events: int = 100) -> int:
    """Mark expired holds and return their tickets, event by event; returns tickets freed.

    Only tidies: availability is already exact without it.
    """
    now = clock.now()
    freed = 0
    with connection() as conn:
        events = conn.execute(
            f"SELECT DISTINCT event_id FROM holds WHERE {expired_hold_sql('holds')} LIMIT %(limit)s",
            {"now": now, "limit": batch_events},
        ).fetchall()
        for event in events:
            freed += reclaim_expired_holds(conn, event["event_id"], now)
    return freed
