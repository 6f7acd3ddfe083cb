"""Migration 0011 on a database that lived through the previous release.

A scratch database is migrated to version 10 and filled through that schema with SQL
(sharded stock, confirmed and partly cancelled bookings, holds in every state, customer
counters, idempotency keys), then migrated to head: every event must become one default
type in one event quota with the same counts, every order and hold one line of that type,
every counter a per-type counter, and a real API process must keep selling on it exactly.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from shared.accounts.tokens import issue_token
from shared.platform import migrate as migrations
from shared.ticketing import idempotency
from tests.support.api_process import api_process
from tests.support.databases import migrate_before, scratch_database

NEW = 11
# (total, shards, stock rows, gate_seq, status): the rows are what the old grants left.
EVENTS = {
    "busy": (100, 4, [20, 21, 25, 15], 7, "active"),  # 81 in stock: 12 sold, 7 held
    "sold_out": (10, 1, [0], 3, "active"),
    "cancelled": (5, 1, [5], 1, "cancelled"),
    "untouched": (40, 2, [20, 20], 0, "active"),
}


def _one(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def _populate(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """The previous release's rows, written as its code wrote them; returns their ids."""
    users = {
        name: _one(conn, "INSERT INTO users (email, password_hash, role) VALUES (%s, 'x', %s) RETURNING id",
                   (f"{name}-{uuid.uuid4().hex[:6]}@test.com", role))
        for name, role in [("org", "organizer"), ("ann", "customer"), ("bob", "customer"), ("cid", "customer")]
    }
    events = {}
    for name, (total, shards, rows, gate_seq, status) in EVENTS.items():
        event_id = _one(
            conn,
            """INSERT INTO events (organizer_id, title, total_tickets, status, shards, gate_seq,
                                   max_tickets_per_customer, created_at)
               VALUES (%s, %s, %s, %s, %s, %s, 8, now() - interval '3 days') RETURNING id""",
            (users["org"], name, total, status, shards, gate_seq),
        )
        for shard, available in enumerate(rows):
            conn.execute(
                "INSERT INTO event_stock (event_id, shard, available_tickets, gate_seq) VALUES (%s, %s, %s, %s)",
                (event_id, shard, available, gate_seq))
        events[name] = event_id

    def booking(event: str, user: str, quantity: int, cancelled: int = 0, hold_id: int | None = None) -> int:
        status = "cancelled" if quantity == 0 else "confirmed"
        return _one(
            conn,
            """INSERT INTO bookings (event_id, user_id, quantity, cancelled_quantity, status, hold_id, cancelled_at)
               VALUES (%s, %s, %s, %s, %s, %s, CASE WHEN %s = 'cancelled' THEN now() END) RETURNING id""",
            (events[event], users[user], quantity, cancelled, status, hold_id, status),
        )

    def hold(event: str, user: str, quantity: int, status: str, expires: str) -> int:
        return _one(
            conn,
            f"""INSERT INTO holds (event_id, user_id, quantity, status, expires_at, closed_at)
                VALUES (%s, %s, %s, %s, now() + interval '{expires}', CASE WHEN %s <> 'active' THEN now() END)
                RETURNING id""",
            (events[event], users[user], quantity, status, status),
        )

    confirmed_hold = hold("busy", "bob", 2, "confirmed", "-1 hour")
    ids = {
        "users": users,
        "events": events,
        "bookings": {
            "ann_busy": booking("busy", "ann", 5),
            "ann_partly": booking("busy", "ann", 2, cancelled=3),
            "bob_whole_cancel": booking("busy", "bob", 0, cancelled=4),
            "bob_from_hold": booking("busy", "bob", 2, hold_id=confirmed_hold),
            "cid_busy": booking("busy", "cid", 3),
            "ann_sold_out": booking("sold_out", "ann", 4),
            "bob_sold_out": booking("sold_out", "bob", 6),
            "cid_cancelled": booking("cancelled", "cid", 0, cancelled=2),
        },
        "holds": {
            "ann_live": hold("busy", "ann", 1, "active", "1 hour"),
            "cid_live": hold("busy", "cid", 3, "active", "1 hour"),
            "bob_expired_unreclaimed": hold("busy", "bob", 3, "active", "-10 minutes"),
            "confirmed": confirmed_hold,
            "released": hold("busy", "ann", 2, "released", "1 hour"),
            "expired": hold("busy", "cid", 4, "expired", "-1 hour"),
        },
    }
    # The counters as the old grants kept them: confirmed bookings + active holds.
    conn.execute(
        """INSERT INTO customer_tickets (event_id, user_id, tickets, limit_at_claim)
           SELECT event_id, user_id, sum(quantity), 8 FROM (
               SELECT event_id, user_id, quantity FROM bookings WHERE status = 'confirmed'
               UNION ALL SELECT event_id, user_id, quantity FROM holds WHERE status = 'active') t
            GROUP BY event_id, user_id"""
    )
    # An answered key (its stored body is the old BookingOut) and one whose lease ran out.
    body = {"event_id": events["busy"], "quantity": 5}
    ids["replay"] = {"key": "before-upgrade", "body": body, "booking_id": ids["bookings"]["ann_busy"]}
    conn.execute(
        """INSERT INTO idempotency_keys (user_id, key, fingerprint, owner, state, response_status, response_body,
                                         locked_until, expires_at)
           VALUES (%s, %s, %s, %s, 'done', 201, %s, now(), now() + interval '1 day'),
                  (%s, 'in-flight', 'f', %s, 'in_progress', NULL, NULL, now() - interval '1 minute',
                   now() + interval '1 day')""",
        (users["ann"], "before-upgrade", idempotency.fingerprint("POST", "/bookings", body), uuid.uuid4(),
         psycopg.types.json.Jsonb({"id": ids["bookings"]["ann_busy"], "event_id": events["busy"],
                                   "user_id": users["ann"], "quantity": 5, "cancelled_quantity": 0,
                                   "status": "confirmed", "hold_id": None, "created_at": "2026-01-01T00:00:00Z"}),
         users["bob"], uuid.uuid4()),
    )
    return ids


@pytest.fixture
def upgraded(database: str, tmp_path: Path) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(url, ids, what the old schema said) of a database filled at version 10, then migrated to head."""
    with scratch_database(database, "migration_0011") as url:
        migrate_before(url, NEW, tmp_path / "before-0011")
        with psycopg.connect(url, autocommit=True) as conn:
            assert _one(conn, "SELECT max(version) FROM schema_migrations") == NEW - 1
            with conn.transaction():
                ids = _populate(conn)
            before = {
                "stock": conn.execute(
                    "SELECT event_id, shard, available_tickets, gate_seq FROM event_stock ORDER BY 1, 2").fetchall(),
                "events": conn.execute("SELECT id, total_tickets, shards FROM events ORDER BY id").fetchall(),
                "bookings": conn.execute(
                    "SELECT id, event_id, quantity, cancelled_quantity FROM bookings ORDER BY id").fetchall(),
                "holds": conn.execute("SELECT id, event_id, quantity FROM holds ORDER BY id").fetchall(),
                "counters": conn.execute(
                    "SELECT event_id, user_id, tickets FROM customer_tickets ORDER BY 1, 2").fetchall(),
                "keys": conn.execute("SELECT * FROM idempotency_keys ORDER BY user_id, key").fetchall(),
            }
        assert migrations.migrate(url) == [m.version for m in migrations.discover() if m.version >= NEW]
        yield url, ids, before


def test_each_event_becomes_one_default_type_in_one_event_quota_with_the_same_counts(
    upgraded: tuple[str, dict[str, Any], dict[str, Any]],
) -> None:
    url, ids, before = upgraded
    with psycopg.connect(url, autocommit=True) as conn:
        # One default type per event, free, open, active, visible: the old event's only ticket.
        types = conn.execute(
            """SELECT event_id, id, name, price_minor, is_default, active, hidden, sales_start, sales_end,
                      min_per_order, max_per_order, max_per_customer
                 FROM ticket_types ORDER BY event_id""").fetchall()
        assert [t[0] for t in types] == [e[0] for e in before["events"]]
        assert {t[2:] for t in types} == {("General admission", 0, True, True, False, None, None, 1, None, None)}
        default = {t[0]: t[1] for t in types}
        # One event quota each, as big as the event, with its shard count, listing that type only.
        quotas = conn.execute(
            """SELECT q.event_id, q.id, q.size, q.shards, q.is_event, array_agg(qt.ticket_type_id)
                 FROM quotas q JOIN quota_types qt ON qt.quota_id = q.id
                GROUP BY q.id ORDER BY q.event_id""").fetchall()
        assert [(q[0], q[2], q[3], q[4], q[5]) for q in quotas] == [
            (e, total, shards, True, [default[e]]) for e, total, shards in before["events"]]
        quota_of = {q[0]: q[1] for q in quotas}
        # The same stock rows, shard by shard, with their gate copies.
        stock = conn.execute("SELECT quota_id, shard, available_tickets, gate_seq FROM quota_stock ORDER BY 1, 2")
        assert stock.fetchall() == [(quota_of[e], s, n, g) for e, s, n, g in before["stock"]]
        # Every booking one line of the default type with its counts; every hold likewise.
        lines = conn.execute(
            """SELECT b.id, b.event_id, l.ticket_type_id, l.quantity, l.cancelled_quantity, l.unit_price_minor,
                      b.total_minor, b.currency
                 FROM bookings b JOIN booking_lines l ON l.booking_id = b.id ORDER BY b.id""").fetchall()
        assert lines == [(b, e, default[e], q, c, 0, 0, "EUR") for b, e, q, c in before["bookings"]]
        hold_lines = conn.execute(
            """SELECT h.id, h.event_id, l.ticket_type_id, l.quantity
                 FROM holds h JOIN hold_lines l ON l.hold_id = h.id ORDER BY h.id""").fetchall()
        assert hold_lines == [(h, e, default[e], q) for h, e, q in before["holds"]]
        # Per-type counters equal the per-event ones, with no limit of their own.
        counters = conn.execute(
            """SELECT t.event_id, c.user_id, c.tickets, c.limit_at_claim
                 FROM customer_type_tickets c JOIN ticket_types t ON t.id = c.ticket_type_id ORDER BY 1, 2""")
        assert counters.fetchall() == [(e, u, n, 2147483647) for e, u, n in before["counters"]]
        # The old counts are gone (one place for each number), idempotency keys untouched.
        assert _one(conn, "SELECT to_regclass('event_stock') IS NULL")
        assert _one(conn, """SELECT count(*) FROM information_schema.columns
                              WHERE table_name = 'events' AND column_name = 'shards'""") == 0
        assert conn.execute("SELECT * FROM idempotency_keys ORDER BY user_id, key").fetchall() == before["keys"]
        # The pool adds up per quota: what is sold + held + in stock is the quota's size.
        busy = ids["events"]["busy"]
        assert _one(conn, "SELECT sum(available_tickets) FROM quota_stock WHERE quota_id = %s", (quota_of[busy],)) == 81
        assert _one(conn, """SELECT sum(l.quantity) FROM booking_lines l JOIN bookings b ON b.id = l.booking_id
                              WHERE b.status = 'confirmed' AND b.event_id = %s""", (busy,)) == 12
        assert _one(conn, """SELECT sum(l.quantity) FROM hold_lines l JOIN holds h ON h.id = l.hold_id
                              WHERE h.status = 'active' AND h.event_id = %s""", (busy,)) == 7


class _Api:
    """A real API process on the upgraded database; callers act as the old rows' users."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30)

    def call(self, method: str, path: str, user: int | None = None, role: str = "customer",
             headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
        hdrs = dict(headers or {})
        if user is not None:
            hdrs["authorization"] = f"Bearer {issue_token(user, role)[0]}"
        return self.http.request(method, path, json=body or None, headers=hdrs)

    def available(self, event_id: int) -> int:
        r = self.call("GET", f"/events/{event_id}")
        assert r.status_code == 200, r.text
        return int(r.json()["available_tickets"])


@pytest.fixture
def api(upgraded: tuple[str, dict[str, Any], dict[str, Any]], server_urls: dict[str, str]) -> Iterator[_Api]:
    url, _, _ = upgraded
    with api_process({**os.environ, "DATABASE_URL": url}) as proc:
        client = _Api(proc.base_url)
        yield client
        client.http.close()


def test_the_upgraded_database_keeps_selling_exactly(
    upgraded: tuple[str, dict[str, Any], dict[str, Any]], api: _Api
) -> None:
    url, ids, _ = upgraded
    users, events, booked, held = ids["users"], ids["events"], ids["bookings"], ids["holds"]
    busy = events["busy"]
    with psycopg.connect(url, autocommit=True) as conn:
        default = _one(conn, "SELECT id FROM ticket_types WHERE event_id = %s AND is_default", (busy,))
        quota = _one(conn, "SELECT id FROM quotas WHERE event_id = %s AND is_event", (busy,))
        sold_out_quota = _one(conn, "SELECT id FROM quotas WHERE event_id = %s AND is_event", (events["sold_out"],))

    # Readers: 81 in stock + 3 of the hold that expired but was never reclaimed.
    assert api.available(busy) == 84
    assert api.available(events["sold_out"]) == 0
    event = api.call("GET", f"/events/{busy}").json()
    assert event["currency"] == "EUR"
    assert [(t["id"], t["name"], t["price_minor"], t["available"]) for t in event["ticket_types"]] == [
        (default, "General admission", 0, 84)]
    inventory = api.call("GET", f"/events/{busy}/inventory", users["org"], "organizer")
    assert inventory.status_code == 200, inventory.text
    assert [(q["id"], q["size"], q["sold"], q["held"], q["free"]) for q in inventory.json()["quotas"]] == [
        (quota, 100, 12, 4, 84)]

    # The seed API books the default type; the answer has its line.
    new = api.call("POST", "/bookings", users["cid"], event_id=busy, quantity=2)
    assert new.status_code == 201, new.text
    assert [(line["ticket_type_id"], line["quantity"]) for line in new.json()["lines"]] == [(default, 2)]
    assert api.available(busy) == 82
    # ...and so do lines naming it.
    by_line = api.call("POST", "/bookings", users["bob"], event_id=busy,
                       lines=[{"ticket_type_id": default, "quantity": 1}])
    assert by_line.status_code == 201, by_line.text
    assert api.available(busy) == 81

    # The migrated counters still limit (8 per customer): cid has 3 booked + 3 held + 2 now.
    over = api.call("POST", "/bookings", users["cid"], event_id=busy, quantity=1)
    assert over.status_code == 400 and over.json()["code"] == "customer_limit_exceeded", over.text

    # An old booking cancels line-wise: units go back to the event quota.
    line_id = api.call("GET", f"/bookings/{booked['ann_busy']}", users["ann"]).json()["lines"][0]["id"]
    part = api.call("POST", f"/bookings/{booked['ann_busy']}/cancel", users["ann"], line_id=line_id, quantity=2)
    assert part.status_code == 200, part.text
    assert (part.json()["quantity"], part.json()["lines"][0]["cancelled_quantity"]) == (3, 2)
    whole = api.call("POST", f"/bookings/{booked['ann_partly']}/cancel", users["ann"], line_id=None)
    assert whole.status_code == 200 and whole.json()["status"] == "cancelled", whole.text
    assert api.available(busy) == 81 + 2 + 2

    # An old live hold confirms into a booking of the default type; another is released.
    confirmed = api.call("POST", f"/holds/{held['cid_live']}/confirm", users["cid"])
    assert confirmed.status_code in (200, 201), confirmed.text
    assert [(line["ticket_type_id"], line["quantity"]) for line in confirmed.json()["lines"]] == [(default, 3)]
    assert api.available(busy) == 85  # a confirmed hold was already off the market
    released = api.call("DELETE", f"/holds/{held['ann_live']}", users["ann"])
    assert released.status_code in (200, 204), released.text
    assert api.available(busy) == 86

    # A sold-out event refuses naming its quota; its customers can still cancel into it.
    refused = api.call("POST", "/bookings", users["cid"], event_id=events["sold_out"], quantity=1)
    assert refused.status_code == 400 and refused.json()["code"] == "sold_out", refused.text
    assert refused.json()["details"]["quota_id"] == sold_out_quota
    back = api.call("POST", f"/bookings/{booked['bob_sold_out']}/cancel", users["bob"], quantity=1)
    assert back.status_code == 200, back.text
    assert api.available(events["sold_out"]) == 1

    # Exact books afterwards: stock + sold + live held == size for every quota, counters match.
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        rows = conn.execute(
            """SELECT q.id, q.size,
                      (SELECT sum(available_tickets) FROM quota_stock s WHERE s.quota_id = q.id) AS stock,
                      (SELECT coalesce(sum(l.quantity), 0) FROM booking_lines l JOIN bookings b ON b.id = l.booking_id
                         JOIN quota_types qt ON qt.ticket_type_id = l.ticket_type_id AND qt.quota_id = q.id
                        WHERE b.status = 'confirmed') AS sold,
                      (SELECT coalesce(sum(l.quantity), 0) FROM hold_lines l JOIN holds h ON h.id = l.hold_id
                         JOIN quota_types qt ON qt.ticket_type_id = l.ticket_type_id AND qt.quota_id = q.id
                        WHERE h.status = 'active') AS held
                 FROM quotas q WHERE q.event_id = ANY(%s)""",
            (list(events.values()),),
        ).fetchall()
        assert all(r["stock"] + r["sold"] + r["held"] == r["size"] for r in rows), rows
        mismatched = conn.execute(
            """SELECT c.user_id, c.event_id, c.tickets, tt.tickets AS type_tickets
                 FROM customer_tickets c JOIN ticket_types t ON t.event_id = c.event_id AND t.is_default
                 LEFT JOIN customer_type_tickets tt ON tt.ticket_type_id = t.id AND tt.user_id = c.user_id
                WHERE tt.tickets IS DISTINCT FROM c.tickets""").fetchall()
        assert mismatched == []


def test_a_key_answered_before_the_upgrade_replays_its_answer(
    upgraded: tuple[str, dict[str, Any], dict[str, Any]], api: _Api
) -> None:
    _, ids, _ = upgraded
    replay = ids["replay"]
    r = api.call("POST", "/bookings", ids["users"]["ann"], headers={"Idempotency-Key": replay["key"]}, **replay["body"])
    assert r.status_code == 201, r.text
    assert r.headers.get(idempotency.REPLAY_HEADER.lower()) == "true"
    assert r.json()["id"] == replay["booking_id"]
    assert api.available(ids["events"]["busy"]) == 84  # nothing granted twice
