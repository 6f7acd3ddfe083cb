"""Quotas: named capacities shared by ticket types of one event, and the counts organizers read.

A quota's tickets are its stock rows (shared/ticketing/inventory.py); a type is available
only while every quota it is in has room. The counts, in one statement's snapshot:

* sold: tickets of the quota's types in orders that hold them (:data:`SOLD_STATUSES`);
* held: tickets of its types in live holds (active, not expired at ``now``);
* free: its stock rows plus the tickets of expired holds not yet reclaimed: exact, and
  always ``size - sold - held``.

Changes follow the lock order of the whole system: the event row (``FOR NO KEY UPDATE``),
then every stock row of the event through :func:`touch_gate` (so no grant acts on the
catalog as it was, inventory.py "Staleness"), then whatever is written. Capacity and
membership are judged under those locks after reclaiming expired holds, as
``events.update_event`` does for ``total_tickets``: no grant can take a unit meanwhile.

The event quota's size is ``events.total_tickets`` and its types are every type: it is
changed through ``PUT /events/{id}`` only (here: 409 ``event_quota``), never deleted.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from shared.platform import clock
from shared.platform.db import Connection, connection
from shared.platform.errors import Conflict, Forbidden, NotFound
from shared.ticketing.inventory import (
    QUOTA_AVAILABLE_SQL,
    quota_expired_held_sql,
    reclaim_expired_holds,
    shards_for,
    shift_stock,
    stock_quota,
    touch_gate,
)
from shared.ticketing.order_states import SOLD_STATUSES

# Per type of event %(event_id)s at %(now)s: sold and held tickets.
TYPE_COUNTS_CTE = f"""type_counts AS (
    SELECT t.id,
           coalesce((SELECT sum(bl.quantity) FROM booking_lines bl JOIN bookings b ON b.id = bl.booking_id
                      WHERE bl.ticket_type_id = t.id AND b.status IN {SOLD_STATUSES}), 0)::int AS sold,
           coalesce((SELECT sum(hl.quantity) FROM hold_lines hl JOIN holds h ON h.id = hl.hold_id
                      WHERE hl.ticket_type_id = t.id AND h.status = 'active' AND h.expires_at > %(now)s), 0)::int
               AS held
      FROM ticket_types t WHERE t.event_id = %(event_id)s
)"""

# Per quota of event %(event_id)s: its free tickets, exact (the stock rows plus expired holds).
# All a customer's read needs: no sums over orders.
FREE_CTE = f"""WITH quota_free AS MATERIALIZED (
    SELECT q.id, {QUOTA_AVAILABLE_SQL.format(quota="q")} + {quota_expired_held_sql("q")} AS free
      FROM quotas q WHERE q.event_id = %(event_id)s
)"""

# Per quota of the event: its row, its types, sold, held and free (after TYPE_COUNTS_CTE).
QUOTA_COUNTS_CTE = """quota_counts AS (
    SELECT q.id, q.event_id, q.name, q.size, q.is_event, q.created_at, q.updated_at,
           coalesce(array_agg(qt.ticket_type_id ORDER BY qt.ticket_type_id)
                    FILTER (WHERE qt.ticket_type_id IS NOT NULL), '{}') AS ticket_type_ids,
           coalesce(sum(c.sold), 0)::int AS sold,
           coalesce(sum(c.held), 0)::int AS held,
           f.free
      FROM quotas q
      JOIN quota_free f ON f.id = q.id
      LEFT JOIN quota_types qt ON qt.quota_id = q.id
      LEFT JOIN type_counts c ON c.id = qt.ticket_type_id
     WHERE q.event_id = %(event_id)s
     GROUP BY q.id, f.free
)"""

COUNTS_CTE = f"{FREE_CTE}, {TYPE_COUNTS_CTE}, {QUOTA_COUNTS_CTE}"

# A type's exact room: the least free over its quotas (every type is in the event quota).
TYPE_AVAILABLE_SQL = """(SELECT min(qf.free) FROM quota_types qt JOIN quota_free qf ON qf.id = qt.quota_id
      WHERE qt.ticket_type_id = {type}.id)::int"""

_QUOTA_ORDER = "ORDER BY NOT is_event, id"


def own_event(
    conn: Connection, event_id: int, organizer_id: int, *, lock: bool = False, reading: bool = False
) -> dict[str, Any]:
    """The organizer's event; ``lock``: its row ``FOR NO KEY UPDATE``, first in the lock order.

    A change of a cancelled event's catalog is refused (``event_cancelled``) like its updates;
    ``reading``: the caller only reads it (a refusal says "see", not "change").
    """
    row = conn.execute(
        f"SELECT id, organizer_id, status, currency FROM events WHERE id = %s {'FOR NO KEY UPDATE' if lock else ''}",
        (event_id,),
    ).fetchone()
    if row is None:
        raise NotFound("event_not_found", f"Event {event_id} does not exist")
    if row["organizer_id"] != organizer_id:
        raise Forbidden("not_event_owner", f"Only the event's organizer can {'see' if reading else 'change'} it")
    if lock and row["status"] != "active":
        raise Conflict("event_cancelled", f"Event {event_id} is cancelled")
    return row


def locked_for_change(conn: Connection, event_id: int, organizer_id: int) -> dict[str, Any]:
    """Lock the organizer's event row, then every stock row (:func:`touch_gate`): call first in any
    transaction that changes what grants read (windows, limits, activity, membership, capacity)."""
    event = own_event(conn, event_id, organizer_id, lock=True)
    touch_gate(conn, event_id)
    return event


def types_with_sales(conn: Connection, type_ids: Iterable[int]) -> list[int]:
    """Which of ``type_ids`` have sold or held tickets, expired holds too (reclaim them first)."""
    rows = conn.execute(
        f"""SELECT t.id FROM unnest(%(ids)s::bigint[]) AS t(id)
             WHERE EXISTS (SELECT 1 FROM booking_lines bl JOIN bookings b ON b.id = bl.booking_id
                            WHERE bl.ticket_type_id = t.id AND bl.quantity > 0 AND b.status IN {SOLD_STATUSES})
                OR EXISTS (SELECT 1 FROM hold_lines hl JOIN holds h ON h.id = hl.hold_id
                            WHERE hl.ticket_type_id = t.id AND h.status = 'active')
             ORDER BY t.id""",
        {"ids": sorted(set(type_ids))},
    ).fetchall()
    return [row["id"] for row in rows]


def refuse_membership_change(conn: Connection, event_id: int, type_ids: Iterable[int], now: datetime) -> None:
    """A type with sold or held tickets can neither join nor leave a quota: its units were taken
    from the quotas it was in and go back to the quotas it is in (every stock row locked)."""
    changed = sorted(set(type_ids))
    if not changed:
        return
    reclaim_expired_holds(conn, event_id, now)
    locked = types_with_sales(conn, changed)
    if locked:
        raise Conflict(
            "quota_membership_locked",
            f"Ticket types {locked} have sold or held tickets: their quotas cannot change",
            ticket_type_ids=locked,
        )


def check_types(conn: Connection, event_id: int, type_ids: Iterable[int]) -> list[int]:
    """``type_ids`` deduplicated, each a type of the event (else ``ticket_type_not_found``)."""
    wanted = sorted(set(type_ids))
    found = {
        row["id"]
        for row in conn.execute(
            "SELECT id FROM ticket_types WHERE event_id = %s AND id = ANY(%s)", (event_id, wanted)
        ).fetchall()
    }
    missing = [i for i in wanted if i not in found]
    if missing:
        raise NotFound(
            "ticket_type_not_found", f"Ticket type {missing[0]} is not a type of event {event_id}",
            ticket_type_id=missing[0],
        )
    return wanted


def check_quotas(conn: Connection, event_id: int, quota_ids: Iterable[int]) -> list[int]:
    """``quota_ids`` deduplicated without the event quota, each of the event (else ``quota_not_found``)."""
    wanted = sorted(set(quota_ids))
    found = {
        row["id"]: row["is_event"]
        for row in conn.execute(
            "SELECT id, is_event FROM quotas WHERE event_id = %s AND id = ANY(%s)", (event_id, wanted)
        ).fetchall()
    }
    missing = [i for i in wanted if i not in found]
    if missing:
        raise NotFound("quota_not_found", f"Quota {missing[0]} is not a quota of event {event_id}", quota_id=missing[0])
    return [i for i in wanted if not found[i]]


def event_quota_id(conn: Connection, event_id: int) -> int:
    row = conn.execute("SELECT id FROM quotas WHERE event_id = %s AND is_event", (event_id,)).fetchone()
    assert row is not None, f"event {event_id} has no event quota"
    return int(row["id"])


def join(conn: Connection, event_id: int, quota_id: int, type_ids: Iterable[int]) -> None:
    conn.execute(
        """INSERT INTO quota_types (quota_id, ticket_type_id, event_id)
           SELECT %s, t, %s FROM unnest(%s::bigint[]) AS t ON CONFLICT DO NOTHING""",
        (quota_id, event_id, sorted(set(type_ids))),
    )


def leave(conn: Connection, quota_id: int, type_ids: Iterable[int]) -> None:
    conn.execute(
        "DELETE FROM quota_types WHERE quota_id = %s AND ticket_type_id = ANY(%s)", (quota_id, sorted(set(type_ids)))
    )


def read_quotas(conn: Connection, event_id: int, quota_id: int | None = None) -> list[dict[str, Any]]:
    """The event's quotas with their counts (the event quota first), or just ``quota_id``."""
    return conn.execute(
        f"""{COUNTS_CTE} SELECT * FROM quota_counts
             WHERE %(quota_id)s::bigint IS NULL OR id = %(quota_id)s {_QUOTA_ORDER}""",
        {"event_id": event_id, "now": clock.now(), "quota_id": quota_id},
    ).fetchall()


def _read_quota(conn: Connection, event_id: int, quota_id: int) -> dict[str, Any]:
    rows = read_quotas(conn, event_id, quota_id)
    if not rows:
        raise NotFound("quota_not_found", f"Quota {quota_id} is not a quota of event {event_id}", quota_id=quota_id)
    return rows[0]


def list_quotas(*, event_id: int, organizer_id: int) -> list[dict[str, Any]]:
    with connection() as conn:
        own_event(conn, event_id, organizer_id, reading=True)
        return read_quotas(conn, event_id)


def create_quota(
    *, event_id: int, organizer_id: int, name: str, size: int, ticket_type_ids: list[int]
) -> dict[str, Any]:
    """A new quota over types without sales yet (their taken units were never counted in it)."""
    now = clock.now()
    with connection() as conn:
        with conn.transaction():
            locked_for_change(conn, event_id, organizer_id)
            types = check_types(conn, event_id, ticket_type_ids)
            refuse_membership_change(conn, event_id, types, now)
            row = conn.execute(
                "INSERT INTO quotas (event_id, name, size, shards) VALUES (%s, %s, %s, %s) RETURNING id",
                (event_id, name, size, shards_for(size)),
            ).fetchone()
            assert row is not None
            stock_quota(conn, row["id"])
            join(conn, event_id, row["id"], types)
        return _read_quota(conn, event_id, row["id"])


def lock_event_quota(conn: Connection, event_id: int) -> dict[str, Any]:
    """The event quota's row, locked (its size is total_tickets: :func:`resize` it)."""
    return _lock_quota(conn, event_id, event_quota_id(conn, event_id))


def _lock_quota(conn: Connection, event_id: int, quota_id: int) -> dict[str, Any]:
    row = conn.execute(
        "SELECT id, name, size, is_event FROM quotas WHERE id = %s AND event_id = %s FOR UPDATE", (quota_id, event_id)
    ).fetchone()
    if row is None:
        raise NotFound("quota_not_found", f"Quota {quota_id} is not a quota of event {event_id}", quota_id=quota_id)
    return row


_EVENT_QUOTA_REFUSALS = {
    "types": "The event quota lists every ticket type of the event: its types cannot change",
    "size": "The event quota's size is the event's total_tickets: change it with PUT /events/{event_id}",
    "delete": "The event quota is the event's capacity: it cannot be deleted",
}


def _event_quota_refusal(change: str) -> Conflict:
    """``change``: what was asked of the event quota (a key of :data:`_EVENT_QUOTA_REFUSALS`)."""
    return Conflict("event_quota", _EVENT_QUOTA_REFUSALS[change])


def update_quota(*, event_id: int, organizer_id: int, quota_id: int, changes: dict[str, Any]) -> dict[str, Any]:
    """Rename, resize (never below sold + held) or change the types of a quota."""
    now = clock.now()
    with connection() as conn:
        with conn.transaction():
            locked_for_change(conn, event_id, organizer_id)
            quota = _lock_quota(conn, event_id, quota_id)
            members = {
                r["ticket_type_id"]
                for r in conn.execute("SELECT ticket_type_id FROM quota_types WHERE quota_id = %s", (quota_id,))
            }
            if "ticket_type_ids" in changes:
                wanted = set(check_types(conn, event_id, changes["ticket_type_ids"]))
                if quota["is_event"] and wanted != members:
                    raise _event_quota_refusal("types")
                refuse_membership_change(conn, event_id, wanted ^ members, now)
                join(conn, event_id, quota_id, wanted - members)
                leave(conn, quota_id, members - wanted)
            if "size" in changes and changes["size"] != quota["size"]:
                if quota["is_event"]:
                    raise _event_quota_refusal("size")
                resize(conn, event_id, quota, changes["size"], now)
            if "name" in changes:
                conn.execute("UPDATE quotas SET name = %s WHERE id = %s", (changes["name"], quota_id))
            conn.execute("UPDATE quotas SET updated_at = now() WHERE id = %s", (quota_id,))
        return _read_quota(conn, event_id, quota_id)


def resize(conn: Connection, event_id: int, quota: dict[str, Any], size: int, now: datetime) -> None:
    """Set ``quota``'s size (a row of :func:`_lock_quota`; the event quota's through
    ``events.update_event``'s total_tickets), never below sold + held (``capacity_below_sold``).

    Under every stock row's lock, after reclaiming expired holds: the rows hold exactly
    size - sold - held, so what is taken is size minus their sum."""
    reclaim_expired_holds(conn, event_id, now)
    row = conn.execute(
        f"""{COUNTS_CTE} SELECT {QUOTA_AVAILABLE_SQL.format(quota="quota_counts")} AS available, held
              FROM quota_counts WHERE id = %(quota_id)s""",
        {"event_id": event_id, "now": now, "quota_id": quota["id"]},
    ).fetchone()
    assert row is not None
    taken = quota["size"] - row["available"]
    if size < taken:
        held = row["held"]
        # The event quota is PUT /events' total_tickets: the seed's refusal, word for word.
        what = "total_tickets" if quota["is_event"] else f"the size of quota {quota['name']!r}"
        named = {} if quota["is_event"] else {"quota_id": quota["id"], "quota": quota["name"]}
        raise Conflict(
            "capacity_below_sold",
            f"Cannot set {what} to {size}: {taken - held} tickets are sold and {held} are held",
            **named,
            sold=taken - held,
            held=held,
            requested=size,
        )
    shift_stock(conn, quota["id"], size - quota["size"])
    conn.execute("UPDATE quotas SET size = %s, updated_at = now() WHERE id = %s", (size, quota["id"]))


def delete_quota(*, event_id: int, organizer_id: int, quota_id: int) -> None:
    """Remove a quota: its types stay in their other quotas (the event quota at least)."""
    with connection() as conn, conn.transaction():
        locked_for_change(conn, event_id, organizer_id)
        if _lock_quota(conn, event_id, quota_id)["is_event"]:
            raise _event_quota_refusal("delete")
        conn.execute("DELETE FROM quota_types WHERE quota_id = %s", (quota_id,))
        conn.execute("DELETE FROM quota_stock WHERE quota_id = %s", (quota_id,))
        conn.execute("DELETE FROM quotas WHERE id = %s", (quota_id,))


def inventory(*, event_id: int, organizer_id: int) -> dict[str, Any]:
    """Sold, held and free per quota and per type, in one statement's snapshot."""
    with connection() as conn:
        own_event(conn, event_id, organizer_id, reading=True)
        row = conn.execute(
            f"""{COUNTS_CTE}
                SELECT (SELECT coalesce(json_agg(json_build_object(
                                'id', id, 'name', name, 'is_event', is_event, 'size', size,
                                'sold', sold, 'held', held, 'free', free) {_QUOTA_ORDER}), '[]')
                          FROM quota_counts) AS quotas,
                       (SELECT coalesce(json_agg(json_build_object(
                                'id', t.id, 'name', t.name, 'active', t.active, 'sold', c.sold, 'held', c.held,
                                'available', {TYPE_AVAILABLE_SQL.format(type="t")}) ORDER BY t.position, t.id), '[]')
                          FROM ticket_types t JOIN type_counts c ON c.id = t.id) AS ticket_types""",
            {"event_id": event_id, "now": clock.now()},
        ).fetchone()
    assert row is not None
    return {"event_id": event_id, "quotas": row["quotas"], "ticket_types": row["ticket_types"]}
