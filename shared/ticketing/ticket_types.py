"""Ticket types: what an event sells, each with its price, sales window and limits.

Every type is in the event quota and in any quotas it is given (shared/ticketing/quotas.py).
A change of what grants read (window, activity, visibility, limits, quotas) locks the
event row, then every stock row (:func:`quotas.locked_for_change`) before writing, so a
concurrent grant re-reads the type as changed; price and name changes take the same path
(one rule for every write; an order keeps the unit price it was granted at). A type that
was ever ordered or held is never deleted, only deactivated: its lines keep naming it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.platform import clock
from shared.platform.db import Connection, connection
from shared.platform.errors import BadRequest, Conflict, NotFound
from shared.ticketing import events
from shared.ticketing.access_codes import unlocked_types
from shared.ticketing.inventory import LINE_RULES, OPEN_SQL
from shared.ticketing.order_bounds import check_rules, event_limits
from shared.ticketing.quotas import (
    COUNTS_CTE,
    FREE_CTE,
    TYPE_AVAILABLE_SQL,
    check_quotas,
    event_quota_id,
    join,
    leave,
    locked_for_change,
    own_event,
    refuse_membership_change,
)

FIELDS = (
    "name", "description", "price_minor", "sales_start", "sales_end", "min_per_order", "max_per_order",
    "max_per_customer", "hidden", "position", "active",
)
_BOUNDS = frozenset({"min_per_order", "max_per_order", "max_per_customer"})
_DEFAULTS: dict[str, Any] = {
    "description": None, "price_minor": 0, "sales_start": None, "sales_end": None, "min_per_order": 1,
    "max_per_order": None, "max_per_customer": None, "hidden": False, "position": None, "active": True,
}

# The organizer's view of the event's types (after COUNTS_CTE), by display order.
_ORGANIZER_SQL = f"""{COUNTS_CTE}
SELECT t.id, t.event_id, t.name, t.description, t.price_minor, e.currency, t.sales_start, t.sales_end,
       t.min_per_order, t.max_per_order, t.max_per_customer, t.hidden, t.position, t.active, t.is_default,
       t.created_at, t.updated_at, c.sold, c.held, {TYPE_AVAILABLE_SQL.format(type="t")} AS available,
       array(SELECT qt.quota_id FROM quota_types qt JOIN quotas q ON q.id = qt.quota_id
              WHERE qt.ticket_type_id = t.id ORDER BY NOT q.is_event, q.id) AS quota_ids
  FROM ticket_types t JOIN events e ON e.id = t.event_id JOIN type_counts c ON c.id = t.id
 WHERE %(type_id)s::bigint IS NULL OR t.id = %(type_id)s
 ORDER BY t.position, t.id"""

# On sale: a grant's own rules would pass now, the event's (OPEN_SQL: exists, active, sales
# not closed) and each line rule on the type alone (visible or unlocked, active, its window
# with a presale opened by the code), skipping the rules on a line's quantity.
_ON_SALE_SQL = "(EXISTS (SELECT 1 FROM events WHERE {open})\n        AND {line})".format(
    open=OPEN_SQL,
    line="\n        AND ".join(
        rule.sql.replace("{unlocked}", "t.id = ANY(%(unlocked)s)")
        for rule in LINE_RULES
        if "r.quantity" not in rule.sql
    ),
)
# What customers see (after FREE_CTE): active types, hidden ones only when %(unlocked)s lists them.
_PUBLIC_SQL = f"""{FREE_CTE}
SELECT t.id, t.name, t.description, t.price_minor, e.currency, t.sales_start, t.sales_end,
       t.min_per_order, t.max_per_order, t.max_per_customer,
       {TYPE_AVAILABLE_SQL.format(type="t")} AS available, {_ON_SALE_SQL} AS on_sale
  FROM ticket_types t JOIN events e ON e.id = t.event_id
 WHERE t.event_id = %(event_id)s AND t.active AND (NOT t.hidden OR t.id = ANY(%(unlocked)s))
 ORDER BY t.position, t.id"""


def on_sale_types(conn: Connection, event_id: int, unlocked: list[int]) -> list[dict[str, Any]]:
    """The event's types as customers see them (``unlocked``: types a valid access code opens)."""
    return conn.execute(
        _PUBLIC_SQL, {"event_id": event_id, "now": clock.now(), "unlocked": unlocked}
    ).fetchall()


def read_types(conn: Connection, event_id: int, type_id: int | None = None) -> list[dict[str, Any]]:
    return conn.execute(
        _ORGANIZER_SQL, {"event_id": event_id, "now": clock.now(), "type_id": type_id}
    ).fetchall()


def _read_type(conn: Connection, event_id: int, type_id: int) -> dict[str, Any]:
    rows = read_types(conn, event_id, type_id)
    if not rows:
        raise _not_found(event_id, type_id)
    return rows[0]


def _not_found(event_id: int, type_id: int) -> NotFound:
    return NotFound(
        "ticket_type_not_found", f"Ticket type {type_id} is not a type of event {event_id}", ticket_type_id=type_id
    )


def list_types(*, event_id: int, organizer_id: int) -> list[dict[str, Any]]:
    with connection() as conn:
        own_event(conn, event_id, organizer_id, reading=True)
        return read_types(conn, event_id)


def create_type(*, event_id: int, organizer_id: int, fields: dict[str, Any], quota_ids: list[int]) -> dict[str, Any]:
    """A new type in the event quota and in ``quota_ids``; by default after the others."""
    values = {**_DEFAULTS, **{k: v for k, v in fields.items() if k in FIELDS}}
    with connection() as conn:
        with conn.transaction():
            locked_for_change(conn, event_id, organizer_id)
            check_rules(values, event_limits(conn, event_id))
            extra = check_quotas(conn, event_id, quota_ids)
            row = conn.execute(
                """INSERT INTO ticket_types (event_id, name, description, price_minor, sales_start, sales_end,
                                             min_per_order, max_per_order, max_per_customer, hidden, position, active)
                   VALUES (%(event_id)s, %(name)s, %(description)s, %(price_minor)s, %(sales_start)s,
                           %(sales_end)s, %(min_per_order)s, %(max_per_order)s, %(max_per_customer)s, %(hidden)s,
                           coalesce(%(position)s::int, (SELECT coalesce(max(position) + 1, 0) FROM ticket_types
                                                          WHERE event_id = %(event_id)s)),
                           %(active)s)
                   RETURNING id""",
                {**values, "event_id": event_id},
            ).fetchone()
            assert row is not None
            for quota_id in [event_quota_id(conn, event_id), *extra]:
                join(conn, event_id, quota_id, [row["id"]])
        return _read_type(conn, event_id, row["id"])


def _lock_type(conn: Connection, event_id: int, type_id: int) -> dict[str, Any]:
    row = conn.execute(
        f"SELECT id, is_default, {', '.join(FIELDS)} FROM ticket_types WHERE id = %s AND event_id = %s FOR UPDATE",
        (type_id, event_id),
    ).fetchone()
    if row is None:
        raise _not_found(event_id, type_id)
    return row


def update_type(*, event_id: int, organizer_id: int, type_id: int, changes: dict[str, Any]) -> dict[str, Any]:
    """Apply the sent fields (``quota_ids``: the quotas besides the event quota, replaced)."""
    now = clock.now()
    with connection() as conn:
        with conn.transaction():
            locked_for_change(conn, event_id, organizer_id)
            current = _lock_type(conn, event_id, type_id)
            changed = {k: v for k, v in changes.items() if k in FIELDS and current[k] != v}
            bounds_changed = not changed.keys().isdisjoint(_BOUNDS)
            check_rules({**current, **changed}, event_limits(conn, event_id) if bounds_changed else None)
            if "quota_ids" in changes:
                _move(conn, event_id, type_id, check_quotas(conn, event_id, changes["quota_ids"]), now)
            if changed:
                conn.execute(
                    f"""UPDATE ticket_types SET {", ".join(f"{k} = %({k})s" for k in changed)}, updated_at = now()
                         WHERE id = %(id)s""",
                    {**changed, "id": type_id},
                )
            if changed.get("sales_end") is not None:
                events.holds_end_with_sales(conn, event_id)  # its live holds end with its sales
        return _read_type(conn, event_id, type_id)


def _move(conn: Connection, event_id: int, type_id: int, extra: list[int], now: datetime) -> None:
    """Put the type in the event quota plus ``extra``, if it has no sales (quotas.py)."""
    current = {
        r["quota_id"]
        for r in conn.execute(
            """SELECT qt.quota_id FROM quota_types qt JOIN quotas q ON q.id = qt.quota_id
                WHERE qt.ticket_type_id = %s AND NOT q.is_event""",
            (type_id,),
        )
    }
    wanted = set(extra)
    if wanted == current:
        return
    refuse_membership_change(conn, event_id, [type_id], now)
    for quota_id in sorted(wanted - current):
        join(conn, event_id, quota_id, [type_id])
    for quota_id in sorted(current - wanted):
        leave(conn, quota_id, [type_id])


def delete_type(*, event_id: int, organizer_id: int, type_id: int) -> None:
    """Delete a type never ordered nor held; one with sales can only be deactivated."""
    with connection() as conn, conn.transaction():
        locked_for_change(conn, event_id, organizer_id)
        current = _lock_type(conn, event_id, type_id)
        if current["is_default"]:
            raise Conflict(
                "default_ticket_type",
                "The default type is what {event_id, quantity} bookings take: deactivate it instead",
            )
        sales = conn.execute(
            """SELECT EXISTS (SELECT 1 FROM booking_lines WHERE ticket_type_id = %(id)s)
                   OR EXISTS (SELECT 1 FROM hold_lines WHERE ticket_type_id = %(id)s) AS found""",
            {"id": type_id},
        ).fetchone()
        if sales and sales["found"]:
            raise Conflict(
                "ticket_type_has_sales",
                f"Ticket type {type_id} was ordered or held: deactivate it (PATCH active=false) instead",
                ticket_type_id=type_id,
            )
        for table in ("quota_types", "access_code_types", "customer_type_tickets"):
            conn.execute(f"DELETE FROM {table} WHERE ticket_type_id = %s", (type_id,))
        conn.execute("DELETE FROM ticket_types WHERE id = %s", (type_id,))


def reorder(*, event_id: int, organizer_id: int, type_ids: list[int]) -> list[dict[str, Any]]:
    """The listed types first, in the order given; the others after them, in their old order."""
    if len(set(type_ids)) != len(type_ids):
        raise BadRequest("duplicate_ticket_type", "A ticket type is listed more than once")
    with connection() as conn:
        with conn.transaction():
            own_event(conn, event_id, organizer_id, lock=True)  # the display order is not a grant rule
            known = {r["id"] for r in conn.execute("SELECT id FROM ticket_types WHERE event_id = %s", (event_id,))}
            missing = [i for i in type_ids if i not in known]
            if missing:
                raise _not_found(event_id, missing[0])
            conn.execute(
                """WITH listed AS (SELECT id, ord FROM unnest(%(ids)s::bigint[]) WITH ORDINALITY AS u(id, ord)),
                        ranked AS (
                            SELECT t.id, row_number() OVER (ORDER BY l.ord NULLS LAST, t.position, t.id) - 1 AS pos
                              FROM ticket_types t LEFT JOIN listed l ON l.id = t.id
                             WHERE t.event_id = %(event_id)s)
                   UPDATE ticket_types t SET position = r.pos, updated_at = now()
                     FROM ranked r WHERE r.id = t.id AND t.position <> r.pos""",
                {"ids": type_ids, "event_id": event_id},
            )
        return read_types(conn, event_id)


def with_types(conn: Connection, event: dict[str, Any], access_code: str | None = None) -> dict[str, Any]:
    """``event`` (a read of events.read_event) with its types as customers see them; a code
    given must be usable (``access_code_invalid``) and shows the hidden types it unlocks."""
    unlocked = unlocked_types(conn, event["id"], access_code, clock.now()) if access_code is not None else []
    return {**event, "ticket_types": on_sale_types(conn, event["id"], unlocked)}


def event_for_customers(event_id: int, access_code: str | None = None) -> dict[str, Any]:
    """``GET /events/{id}``: the event with its exact availability and its types."""
    with connection() as conn:
        return with_types(conn, events.read_event(conn, event_id), access_code)


def attach_types(event: dict[str, Any]) -> dict[str, Any]:
    """An event just written (created, changed, cancelled) with its types, read after the commit."""
    with connection() as conn:
        return with_types(conn, event)
