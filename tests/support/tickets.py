"""An event's tickets, through the public API and straight from PostgreSQL, for tests that count them.

Every ticket of an event is in exactly one place: sold (a confirmed booking), held (an
active hold, expired or not: an expired hold's tickets go back to the counter only when
reclaimed) or available (the sum of its event quota's ``quota_stock`` rows, :data:`AVAILABLE_SQL`).
:func:`pool_adds_up` checks it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from tests.support.clients import Client, Response

# An event's available tickets straight from PostgreSQL: the sum of its stock rows (``e``: events).
AVAILABLE_SQL = """(SELECT coalesce(sum(st.available_tickets), 0)
  FROM quotas q JOIN quota_stock st ON st.quota_id = q.id WHERE q.event_id = e.id AND q.is_event)"""

POOL_SQL = f"""
SELECT e.id, e.total_tickets AS total, {AVAILABLE_SQL} AS available,
       (SELECT coalesce(sum(quantity), 0) FROM bookings b
         WHERE b.event_id = e.id AND b.status = 'confirmed') AS sold,
       (SELECT coalesce(sum(quantity), 0) FROM holds h
         WHERE h.event_id = e.id AND h.status = 'active') AS held,
       (SELECT coalesce(sum(quantity), 0) FROM holds h
         WHERE h.event_id = e.id AND h.status = 'active' AND h.expires_at <= %(now)s) AS expired_held
  FROM events e WHERE e.id = ANY(%(ids)s) ORDER BY e.id
"""


def stored_available(sql: Any, event_id: int) -> int:
    """The event's available tickets as stored (expired holds not reclaimed yet not counted)."""
    row = sql.execute(f"SELECT {AVAILABLE_SQL} AS n FROM events e WHERE e.id = %s", (event_id,)).fetchone()
    return int(row["n"] if isinstance(row, dict) else row[0])


def lock_stock(conn: Any, event_id: int, take: int = 0) -> None:
    """From ``conn``, in its open transaction: write every stock row of every quota of the
    event (so every grant of it waits), taking ``take`` tickets off the first row of its event
    quota that has them."""
    conn.execute(
        """UPDATE quota_stock s SET available_tickets = available_tickets - CASE WHEN (s.quota_id, s.shard) = (
               SELECT st.quota_id, min(st.shard) FROM quotas q JOIN quota_stock st ON st.quota_id = q.id
                WHERE q.event_id = %(id)s AND q.is_event AND st.available_tickets >= %(take)s GROUP BY st.quota_id)
               THEN %(take)s ELSE 0 END
            WHERE s.quota_id IN (SELECT id FROM quotas WHERE event_id = %(id)s)""",
        {"id": event_id, "take": take},
    )


def place_hold(client: Client, token: str, event_id: int, quantity: int = 1, **extra: Any) -> Response:
    """``POST /events/{id}/holds``; the answer is the test's to check."""
    return client.request("POST", f"/events/{event_id}/holds", json_body={"quantity": quantity, **extra}, token=token)


def available_tickets(client: Client, event_id: int) -> int:
    return client.request("GET", f"/events/{event_id}").json()["available_tickets"]


def ticket_pools(sql: Any, event_ids: Sequence[int], now: datetime | None = None) -> list[dict[str, Any]]:
    """Each event's ``total``, ``available``, ``sold`` and ``held`` tickets, by event id.

    ``expired_held``: the held tickets of holds expired at ``now`` (0 without ``now``).
    ``sql`` is a connection with dict rows; one statement, so one snapshot.
    """
    return [dict(row) for row in sql.execute(POOL_SQL, {"ids": list(event_ids), "now": now}).fetchall()]


def ticket_pool(sql: Any, event_id: int) -> dict[str, Any]:
    """:func:`ticket_pools` of one event."""
    (pool,) = ticket_pools(sql, [event_id])
    return pool


def pool_adds_up(pool: dict[str, Any]) -> bool:
    """sold + held + available == total."""
    return bool(pool["sold"] + pool["held"] + pool["available"] == pool["total"])


def customer_counter(sql: Any, event_id: int, user_id: int) -> int | None:
    """The customer's ``customer_tickets`` count for the event, None without a row."""
    row = sql.execute(
        "SELECT tickets FROM customer_tickets WHERE event_id = %s AND user_id = %s", (event_id, user_id)
    ).fetchone()
    return None if row is None else int(row["tickets"])


def customer_taken(sql: Any, event_id: int, user_id: int) -> int:
    """What the counter must say, recomputed: the customer's confirmed bookings and active holds."""
    row = sql.execute(
        """SELECT (SELECT coalesce(sum(quantity), 0) FROM bookings
                    WHERE event_id = %(e)s AND user_id = %(u)s AND status = 'confirmed')
                + (SELECT coalesce(sum(quantity), 0) FROM holds
                    WHERE event_id = %(e)s AND user_id = %(u)s AND status = 'active') AS n""",
        {"e": event_id, "u": user_id},
    ).fetchone()
    return int(row["n"])
