"""Seat holds: tickets set aside for a customer until they confirm, release, or time runs out.

Creating a hold is the same one-statement claim as a booking. Expiry needs no sweeper:
an active hold past ``expires_at`` is counted as free by every reader and reclaimed by
the first claim that needs its tickets; :func:`tidy_expired_holds` only tidies.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from shared import clock
from shared.bookings import BOOKING_COLUMNS, CONFIRMATION_CTE
from shared.claims import CLAIM_CTE, claim, reclaim_expired_holds
from shared.db import Connection, connection
from shared.errors import Conflict, NotFound, unknown_user_is_401
from shared.idempotency import Claim, completion_cte
from shared.outbox import publish_committed

HOLD_COLUMNS = "id, event_id, user_id, quantity, status, expires_at, created_at, closed_at"


def _hold_sql(idempotent: bool) -> str:
    return f"""
WITH {CLAIM_CTE}, hold AS (
    INSERT INTO holds (event_id, user_id, quantity, expires_at)
    SELECT id, %(user_id)s, %(quantity)s, %(expires_at)s FROM claimed
    RETURNING {HOLD_COLUMNS}
){completion_cte("hold") if idempotent else ""}
SELECT * FROM hold
"""


def _confirm_sql(idempotent: bool) -> str:
    # The event is share-locked first (event before hold, like every writer), so a
    # concurrent event cancellation cannot miss the booking this creates.
    return f"""
WITH event AS (
    SELECT e.id FROM events e
     WHERE e.id = %(event_id)s AND e.status = 'active'
       FOR SHARE
), held AS (
    UPDATE holds h SET status = 'confirmed', closed_at = %(now)s
     WHERE h.id = %(hold_id)s AND h.user_id = %(user_id)s AND h.status = 'active'
       AND h.expires_at > %(now)s AND h.event_id IN (SELECT id FROM event)
    RETURNING id, event_id, user_id, quantity
), booking AS (
    INSERT INTO bookings (event_id, user_id, quantity, hold_id)
    SELECT event_id, user_id, quantity, id FROM held
    RETURNING {BOOKING_COLUMNS}
), {CONFIRMATION_CTE}{completion_cte("booking") if idempotent else ""}
SELECT booking.*, notification.id AS outbox_id FROM booking, notification
"""


def create_hold(
    *,
    user_id: int,
    event_id: int,
    quantity: int,
    ttl_seconds: int,
    default_max: int,
    idempotency: Claim | None = None,
) -> dict[str, Any]:
    now = clock.now()
    params: dict[str, Any] = {
        "user_id": user_id,
        "event_id": event_id,
        "quantity": quantity,
        "default_max": default_max,
        "expires_at": now + timedelta(seconds=ttl_seconds),
    }
    if idempotency is not None:
        params.update(idempotency.params())
    sql = _hold_sql(idempotency is not None)
    with connection() as conn, unknown_user_is_401():
        row = claim(
            conn,
            lambda: conn.execute(sql, params).fetchone(),
            event_id=event_id,
            quantity=quantity,
            default_max=default_max,
            now=now,
        )
    if idempotency is not None:
        idempotency.completed = True  # by the completion CTE, in the same statement
    return row


def get_hold(*, hold_id: int, user_id: int) -> dict[str, Any]:
    with connection() as conn:
        row = conn.execute(
            f"SELECT {HOLD_COLUMNS} FROM holds WHERE id = %s AND user_id = %s", (hold_id, user_id)
        ).fetchone()
    if row is None:
        raise NotFound("hold_not_found", f"Hold {hold_id} does not exist")
    return _effective(row)


def _effective(row: dict[str, Any]) -> dict[str, Any]:
    """An active hold past its expiry is expired, whether or not it was tidied yet."""
    if row["status"] == "active" and row["expires_at"] <= clock.now():
        return {**row, "status": "expired"}
    return row


def confirm_hold(
    *, hold_id: int, user_id: int, idempotency: Claim | None = None
) -> tuple[dict[str, Any], bool]:
    """Turn a hold into a booking; returns (booking, created).

    Confirming twice returns the same booking. A hold that expired is confirmed only if
    its tickets can still be had; otherwise ``hold_expired`` says how many are left.
    """
    hold = get_hold(hold_id=hold_id, user_id=user_id)
    now = clock.now()
    params: dict[str, Any] = {"hold_id": hold_id, "user_id": user_id, "event_id": hold["event_id"], "now": now}
    if idempotency is not None:
        params.update(idempotency.params())
    with connection() as conn:
        row = conn.execute(_confirm_sql(idempotency is not None), params).fetchone()
        if row is None:
            row = _confirm_expired(conn, hold, now, idempotency)
            if row is None:  # confirmed before: the same booking again
                existing = conn.execute(
                    f"SELECT {BOOKING_COLUMNS} FROM bookings WHERE hold_id = %s", (hold_id,)
                ).fetchone()
                assert existing is not None
                return existing, False
        elif idempotency is not None:
            idempotency.completed = True
        publish_committed(conn, [row["outbox_id"]])
    return row, True


def _confirm_expired(
    conn: Connection, hold: dict[str, Any], now: datetime, idempotency: Claim | None
) -> dict[str, Any] | None:
    """The slow path of a confirmation: the hold is not active any more (or never was).

    One transaction, event row locked first like every writer: a hold that expired gets
    its tickets back and, if as many are free, is booked again *as this hold* (the
    booking carries ``hold_id``, the hold becomes ``confirmed``), so a second confirm
    finds it confirmed. Returns None when the hold was already confirmed.
    """
    hold_id, event_id, quantity = hold["id"], hold["event_id"], hold["quantity"]
    with conn.transaction():
        event = conn.execute(
            "SELECT status FROM events WHERE id = %s FOR UPDATE", (event_id,)
        ).fetchone()
        current = conn.execute(
            f"SELECT {HOLD_COLUMNS} FROM holds WHERE id = %s FOR UPDATE", (hold_id,)
        ).fetchone()
        assert event is not None and current is not None
        if current["status"] == "confirmed":
            return None
        if current["status"] == "released":
            raise Conflict("hold_released", f"Hold {hold_id} was released")
        if event["status"] != "active":
            raise Conflict("event_cancelled", f"Event {event_id} is cancelled")
        still_held = current["status"] == "active" and current["expires_at"] > now
        if not still_held:
            reclaim_expired_holds(conn, event_id, now)  # this hold's tickets back in the pool
            available = conn.execute(
                "SELECT available_tickets FROM events WHERE id = %s", (event_id,)
            ).fetchone()
            assert available is not None
            if available["available_tickets"] < quantity:
                raise Conflict(
                    "hold_expired",
                    f"Hold {hold_id} expired and its tickets are no longer available",
                    available=available["available_tickets"],
                    requested=quantity,
                )
            conn.execute(
                "UPDATE events SET available_tickets = available_tickets - %s WHERE id = %s",
                (quantity, event_id),
            )
        conn.execute(
            "UPDATE holds SET status = 'confirmed', closed_at = %s WHERE id = %s", (now, hold_id)
        )
        row = conn.execute(
            f"""WITH booking AS (
                    INSERT INTO bookings (event_id, user_id, quantity, hold_id)
                    VALUES (%(event_id)s, %(user_id)s, %(quantity)s, %(hold_id)s)
                    RETURNING {BOOKING_COLUMNS}
                ), {CONFIRMATION_CTE}{completion_cte("booking") if idempotency else ""}
                SELECT booking.*, notification.id AS outbox_id FROM booking, notification""",
            {
                "event_id": event_id,
                "user_id": current["user_id"],
                "quantity": quantity,
                "hold_id": hold_id,
                **(idempotency.params() if idempotency else {}),
            },
        ).fetchone()
    assert row is not None
    if idempotency is not None:
        idempotency.completed = True
    return row


def release_hold(*, hold_id: int, user_id: int) -> dict[str, Any]:
    """Give a hold's tickets back now; releasing twice (or after expiry) is harmless."""
    hold = get_hold(hold_id=hold_id, user_id=user_id)
    with connection() as conn, conn.transaction():
        conn.execute("SELECT 1 FROM events WHERE id = %s FOR NO KEY UPDATE", (hold["event_id"],))
        row = conn.execute(
            f"""UPDATE holds SET status = 'released', closed_at = %s
                 WHERE id = %s AND status = 'active' RETURNING {HOLD_COLUMNS}""",
            (clock.now(), hold_id),
        ).fetchone()
        if row is None:
            current = conn.execute(f"SELECT {HOLD_COLUMNS} FROM holds WHERE id = %s", (hold_id,)).fetchone()
            assert current is not None
            return current
        conn.execute(
            "UPDATE events SET available_tickets = available_tickets + %s WHERE id = %s",
            (row["quantity"], row["event_id"]),
        )
    return row


def list_holds(*, user_id: int, limit: int, offset: int) -> list[dict[str, Any]]:
    with connection() as conn:
        rows = conn.execute(
            f"SELECT {HOLD_COLUMNS} FROM holds WHERE user_id = %s ORDER BY id DESC LIMIT %s OFFSET %s",
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
            "SELECT DISTINCT event_id FROM holds WHERE status = 'active' AND expires_at <= %s LIMIT %s",
            (now, batch_events),
        ).fetchall()
        for event in events:
            freed += reclaim_expired_holds(conn, event["event_id"], now)
    return freed
