"""Order bounds: a ticket type some order can buy, under its own and its event's maximums.

One rule for both sides: a type's fields (create, PATCH: shared/ticketing/ticket_types.py) and
the event's per-booking and per-customer maximums (PUT /events: shared/ticketing/events.py)
never leave an active type with a min_per_order no order could reach.
"""

from __future__ import annotations

from typing import Any

from shared.platform import clock
from shared.platform.db import Connection
from shared.platform.errors import Unprocessable
from shared.ticketing.inventory import BOOKING_MAX_SQL, CUSTOMER_MAX_SQL, rule_params


def check_rules(fields: dict[str, Any], limits: dict[str, Any] | None, *, type_id: int | None = None) -> None:
    """The rules across a type's fields, on its values once merged (a PATCH sends one end).

    With the event's ``limits`` (:func:`event_limits`), its order bounds too: a type no order
    could buy is refused. A PATCH that changes no bound passes None, so a type the event's
    limits left unbuyable can still be renamed or deactivated. ``type_id``: the type judged is
    an existing one the event's new limits would leave unbuyable (named in the refusal).
    """
    start, end = fields.get("sales_start"), fields.get("sales_end")
    if start is not None and end is not None and end <= start:
        raise Unprocessable("invalid_sales_window", "sales_end must be after sales_start")
    if limits is None:
        return
    low = fields.get("min_per_order") or 1
    ceilings = (
        ("max_per_order", fields.get("max_per_order"), "the type's max_per_order"),
        ("max_per_customer", fields.get("max_per_customer"), "the type's max_per_customer"),
        ("max_tickets_per_booking", limits["booking_max"], "the event's per-booking maximum"),
        ("max_tickets_per_customer", limits["customer_max"], "the event's per-customer maximum"),
    )
    for key, high, what in ceilings:
        if high is not None and high < low:
            named = {} if type_id is None else {"ticket_type_id": type_id}
            whose = "" if type_id is None else f" of ticket type {fields.get('name')!r}"
            raise Unprocessable(
                "invalid_order_bounds",
                f"min_per_order ({low}){whose} is above {what} ({high}): no order could buy it",
                min_per_order=low, **{key: high}, **named,
            )


def event_limits(conn: Connection, event_id: int) -> dict[str, Any]:
    """The event's per-booking and per-customer maximums as grants apply them (defaults resolved)."""
    row = conn.execute(
        f"SELECT {BOOKING_MAX_SQL} AS booking_max, {CUSTOMER_MAX_SQL} AS customer_max FROM events WHERE id = %(id)s",
        {**rule_params(event_id=event_id, quantity=0, now=clock.now()), "id": event_id},
    ).fetchone()
    assert row is not None, f"event {event_id} is locked, so it exists"
    return row


def check_active_types(conn: Connection, event_id: int) -> None:
    """The event's maximums just changed (its row written, locked): every active type stays
    buyable, else ``invalid_order_bounds`` naming the first that would not."""
    limits = event_limits(conn, event_id)
    for row in conn.execute(
        """SELECT id, name, min_per_order, max_per_order, max_per_customer FROM ticket_types
            WHERE event_id = %s AND active ORDER BY position, id""",
        (event_id,),
    ).fetchall():
        check_rules(row, limits, type_id=row["id"])
