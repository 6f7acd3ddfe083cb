"""Quotas' tickets straight from PostgreSQL, and events with several types and quotas made through the API.

Every ticket of a quota is in exactly one place: sold (a line of a confirmed order whose
type the quota lists), held (a line of an active hold, expired or not until reclaimed) or
free (the sum of the quota's ``quota_stock`` rows). :func:`quota_problems` checks that for
every quota, plus the orders' sums and every customer counter and limit, in one snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg

from tests.support.clients import Client

# Orders that hold their tickets (pending_payment too, once payment exists).
_HOLDING = "('confirmed', 'pending_payment')"


def _lines_in(quota: str, alias: str, kind: str, extra: str = "") -> str:
    """Units of ``kind`` ('booking' or 'hold') lines whose type the quota ``quota`` lists."""
    if kind == "booking":
        source = f"booking_lines l JOIN bookings {alias} ON {alias}.id = l.booking_id AND {alias}.status IN {_HOLDING}"
    else:
        source = f"hold_lines l JOIN holds {alias} ON {alias}.id = l.hold_id AND {alias}.status = 'active'"
    return f"""(SELECT coalesce(sum(l.quantity), 0) FROM {source}
                  JOIN quota_types qt ON qt.ticket_type_id = l.ticket_type_id
                 WHERE qt.quota_id = {quota}.id {extra})"""


QUOTA_POOL_SQL = f"""
SELECT q.id, q.event_id, q.name, q.size, q.is_event,
       (SELECT coalesce(sum(s.available_tickets), 0) FROM quota_stock s WHERE s.quota_id = q.id) AS free,
       (SELECT min(s.available_tickets) FROM quota_stock s WHERE s.quota_id = q.id) AS lowest_row,
       {_lines_in("q", "b", "booking")} AS sold,
       {_lines_in("q", "h", "hold")} AS held,
       {_lines_in("q", "h", "hold", "AND h.expires_at <= %(now)s")} AS expired_held
  FROM quotas q WHERE q.event_id = ANY(%(ids)s) ORDER BY q.id
"""

# Orders and holds whose ticket count is not the sum of their lines.
ORDER_SUMS_SQL = """
SELECT 'booking' AS kind, b.id, b.quantity, b.cancelled_quantity,
       sum(l.quantity) AS lines, sum(l.cancelled_quantity) AS cancelled_lines
  FROM bookings b LEFT JOIN booking_lines l ON l.booking_id = b.id
 WHERE b.event_id = ANY(%(ids)s) GROUP BY b.id
HAVING b.quantity IS DISTINCT FROM sum(l.quantity) OR b.cancelled_quantity IS DISTINCT FROM sum(l.cancelled_quantity)
UNION ALL
SELECT 'hold', h.id, h.quantity, 0, sum(l.quantity), 0
  FROM holds h LEFT JOIN hold_lines l ON l.hold_id = h.id
 WHERE h.event_id = ANY(%(ids)s) GROUP BY h.id HAVING h.quantity IS DISTINCT FROM sum(l.quantity)
"""

# What each customer has of each type (confirmed lines + active holds' lines) against their
# per-type counter and the type's limit: rows returned are problems.
TYPE_CUSTOMER_SQL = f"""
WITH taken AS (
    SELECT ticket_type_id, user_id, sum(quantity) AS n FROM (
        SELECT l.ticket_type_id, b.user_id, l.quantity FROM booking_lines l
          JOIN bookings b ON b.id = l.booking_id AND b.status IN {_HOLDING} WHERE b.event_id = ANY(%(ids)s)
        UNION ALL
        SELECT l.ticket_type_id, h.user_id, l.quantity FROM hold_lines l
          JOIN holds h ON h.id = l.hold_id AND h.status = 'active' WHERE h.event_id = ANY(%(ids)s)
    ) t GROUP BY ticket_type_id, user_id
), counters AS (
    SELECT c.* FROM customer_type_tickets c JOIN ticket_types t ON t.id = c.ticket_type_id
     WHERE t.event_id = ANY(%(ids)s)
)
SELECT coalesce(c.ticket_type_id, t.ticket_type_id) AS ticket_type_id, coalesce(c.user_id, t.user_id) AS user_id,
       c.tickets AS counter, coalesce(t.n, 0) AS recomputed, c.limit_at_claim, tt.max_per_customer
  FROM counters c
  FULL JOIN taken t ON t.ticket_type_id = c.ticket_type_id AND t.user_id = c.user_id
  JOIN ticket_types tt ON tt.id = coalesce(c.ticket_type_id, t.ticket_type_id)
 WHERE c.tickets IS DISTINCT FROM coalesce(t.n, 0) OR c.tickets > c.limit_at_claim
    OR coalesce(t.n, 0) > coalesce(tt.max_per_customer, 2147483647)
"""

# The same per event, against customer_tickets and the event's per-customer limit.
EVENT_CUSTOMER_SQL = f"""
WITH taken AS (
    SELECT event_id, user_id, sum(quantity) AS n FROM (
        SELECT event_id, user_id, quantity FROM bookings WHERE status IN {_HOLDING} AND event_id = ANY(%(ids)s)
        UNION ALL
        SELECT event_id, user_id, quantity FROM holds WHERE status = 'active' AND event_id = ANY(%(ids)s)
    ) t GROUP BY event_id, user_id
)
SELECT coalesce(c.event_id, t.event_id) AS event_id, coalesce(c.user_id, t.user_id) AS user_id,
       c.tickets AS counter, coalesce(t.n, 0) AS recomputed, c.limit_at_claim, e.max_tickets_per_customer
  FROM (SELECT * FROM customer_tickets WHERE event_id = ANY(%(ids)s)) c
  FULL JOIN taken t ON t.event_id = c.event_id AND t.user_id = c.user_id
  JOIN events e ON e.id = coalesce(c.event_id, t.event_id)
 WHERE c.tickets IS DISTINCT FROM coalesce(t.n, 0) OR c.tickets > c.limit_at_claim
    OR coalesce(t.n, 0) > coalesce(e.max_tickets_per_customer, 2147483647)
"""


def quota_pools(conn: Any, event_ids: Sequence[int], now: datetime | None = None) -> list[dict[str, Any]]:
    """Each quota's ``size``, ``free``, ``sold``, ``held`` (and ``expired_held`` at ``now``); one statement."""
    return [dict(row) for row in conn.execute(QUOTA_POOL_SQL, {"ids": list(event_ids), "now": now}).fetchall()]


def quota_adds_up(pool: dict[str, Any]) -> bool:
    """sold + held + free == size."""
    return bool(pool["sold"] + pool["held"] + pool["free"] == pool["size"])


def quota_problems(conn: psycopg.Connection[Any], event_ids: Sequence[int], now: datetime,
                   *, limits: bool = True) -> list[str]:
    """Everything wrong with the events' quotas, orders and customer counters, read in one
    REPEATABLE READ snapshot (``conn``: autocommit, dict rows). ``limits``: also check that
    no customer has more than a limit in force allows (only while no limit is lowered)."""
    ids = {"ids": list(event_ids)}
    problems = []
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        for pool in quota_pools(conn, event_ids, now):
            if not quota_adds_up(pool):
                problems.append(f"quota {pool['id']}: sold + held + free != size: {pool}")
            if pool["free"] < 0 or (pool["lowest_row"] or 0) < 0 or pool["sold"] < 0 or pool["held"] < 0:
                problems.append(f"quota {pool['id']}: negative: {pool}")
            if pool["sold"] + pool["held"] > pool["size"]:
                problems.append(f"quota {pool['id']}: types sold past it: {pool}")
            if pool["free"] + pool["expired_held"] > pool["size"]:
                problems.append(f"quota {pool['id']}: readers would see more than its size: {pool}")
        for row in conn.execute(ORDER_SUMS_SQL, ids).fetchall():
            problems.append(f"order != sum of its lines: {row}")
        for row in conn.execute(TYPE_CUSTOMER_SQL, ids).fetchall():
            if limits or row["counter"] != row["recomputed"]:
                problems.append(f"customer per-type counter or limit: {row}")
        for row in conn.execute(EVENT_CUSTOMER_SQL, ids).fetchall():
            if limits or row["counter"] != row["recomputed"]:
                problems.append(f"customer per-event counter or limit: {row}")
    return problems


def default_type_id(conn: Any, event_id: int) -> int:
    row = conn.execute("SELECT id FROM ticket_types WHERE event_id = %s AND is_default", (event_id,)).fetchone()
    return int(row["id"] if isinstance(row, dict) else row[0])


def event_quota_id(conn: Any, event_id: int) -> int:
    row = conn.execute("SELECT id FROM quotas WHERE event_id = %s AND is_event", (event_id,)).fetchone()
    return int(row["id"] if isinstance(row, dict) else row[0])


def add_type(client: Client, token: str, event_id: int, name: str, **fields: Any) -> dict[str, Any]:
    """``POST /events/{id}/ticket-types``; asserts it was created."""
    r = client.request("POST", f"/events/{event_id}/ticket-types", json_body={"name": name, **fields}, token=token)
    assert r.status_code == 201, r.text
    return r.json()


def add_quota(client: Client, token: str, event_id: int, name: str, size: int, type_ids: list[int]) -> dict[str, Any]:
    """``POST /events/{id}/quotas``; asserts it was created."""
    r = client.request("POST", f"/events/{event_id}/quotas",
                       json_body={"name": name, "size": size, "ticket_type_ids": type_ids}, token=token)
    assert r.status_code == 201, r.text
    return r.json()


def order(client: Client, token: str, event_id: int, lines: dict[int, int], **extra: Any) -> Any:
    """``POST /bookings`` with ``lines`` (type id -> quantity); the answer is the caller's to check."""
    body = {"event_id": event_id, "lines": [{"ticket_type_id": t, "quantity": q} for t, q in lines.items()], **extra}
    return client.request("POST", "/bookings", json_body=body, token=token)


def quick_customers(conn: Any, count: int) -> list[str]:
    """``count`` customers written straight to ``users`` (no password hashing, no HTTP), each
    with an access token: for races whose subject is the orders, not the sign-up."""
    from shared.accounts.tokens import issue_token

    rows = conn.execute(
        """INSERT INTO users (email, password_hash, role)
           SELECT 'quick-' || gen_random_uuid() || '@test.com', 'not-a-hash', 'customer'
             FROM generate_series(1, %s) RETURNING id""",
        (count,),
    ).fetchall()
    return [issue_token(int(row["id"] if isinstance(row, dict) else row[0]), "customer")[0] for row in rows]
