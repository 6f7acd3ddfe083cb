"""An event's tickets spread over stock rows: exact sell-outs, no oversell, no deadlock, no stale gate.

Every test here runs against the real PostgreSQL with several stock rows per event (the
settings INVENTORY_SHARDS / INVENTORY_SHARD_MIN_TICKETS, set per test), through the same
service calls the routes make, with no coalescing: each thread borrows its own connection.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from shared.platform import migrate as migrations
from shared.platform.errors import AppError
from shared.ticketing import bookings, events, holds
from shared.ticketing.inventory import REFUSAL_CODES, shards_for
from tests.support import databases
from tests.support.factories import account
from tests.support.race import race
from tests.support.settings_env import restore_env, set_env
from tests.support.tickets import lock_stock, pool_adds_up, ticket_pool

SHORTAGE = {"sold_out", "insufficient_tickets"}


@pytest.fixture
def one_ticket_rows() -> Iterator[None]:
    """Events get up to 16 rows, a row may hold a single ticket."""
    saved = set_env({"INVENTORY_SHARDS": "16", "INVENTORY_SHARD_MIN_TICKETS": "1"})
    yield
    restore_env(saved)


def _event(organizer_id: int, total: int, **fields: Any) -> int:
    values = {"title": "Stock", "venue": None, "start_time": None, "end_time": None, "total_tickets": total}
    return int(events.create_event(organizer_id=organizer_id, fields={**values, **fields})["id"])


def _rows(sql: Any, event_id: int) -> list[int]:
    return [r["available_tickets"] for r in sql.execute(
        """SELECT s.available_tickets FROM quotas q JOIN quota_stock s ON s.quota_id = q.id
            WHERE q.event_id = %s AND q.is_event ORDER BY s.shard""", (event_id,)).fetchall()]


def test_small_events_get_fewer_rows_and_one_row_below_the_minimum() -> None:
    # default settings: 16 rows at most, none under 20 tickets
    assert [shards_for(n) for n in (0, 10, 39, 40, 150, 320, 5000)] == [1, 1, 1, 2, 7, 16, 16]


def test_sold_out_is_exact_across_rows(http_client: Any, sql: Any, one_ticket_rows: None) -> None:
    # GIVEN 16 tickets in 16 rows of one ticket each
    organizer, _ = account(http_client, "organizer")
    user, _ = account(http_client, "customer")
    event_id = _event(organizer["id"], 16, max_tickets_per_customer=100)
    assert _rows(sql, event_id) == [1] * 16

    def book(quantity: int) -> dict[str, Any]:
        return bookings.book(user_id=user["id"], event_id=event_id, quantity=quantity, default_max=10)

    # WHEN one ticket goes, then requests for two (no single row has two: each spans rows)
    book(1)
    for _ in range(7):
        assert book(2)["quantity"] == 2
    # THEN with one ticket left, two are refused with the exact number left
    assert sum(_rows(sql, event_id)) == 1
    with pytest.raises(AppError) as short:
        book(2)
    assert (short.value.code, short.value.details["available"]) == ("insufficient_tickets", 1)
    book(1)
    with pytest.raises(AppError) as gone:
        book(1)
    assert (gone.value.code, gone.value.details["available"]) == ("sold_out", 0)
    assert _rows(sql, event_id) == [0] * 16
    assert ticket_pool(sql, event_id)["sold"] == 16


def test_a_rush_without_coalescing_never_oversells_a_sharded_event(http_client: Any, sql: Any) -> None:
    # GIVEN 400 tickets in 16 rows and 16 customers, each thread on its own connection
    organizer, _ = account(http_client, "organizer")
    customers = [account(http_client, "customer")[0]["id"] for _ in range(16)]
    event_id = _event(organizer["id"], 400, max_tickets_per_customer=100)
    assert len(_rows(sql, event_id)) == 16
    made: list[int] = []
    codes: Counter[str] = Counter()
    lock = threading.Lock()

    def attempt(i: int) -> None:
        rng = random.Random(i)
        while True:
            try:
                b = bookings.book(user_id=customers[i], event_id=event_id, quantity=rng.randint(1, 3), default_max=10)
            except AppError as err:
                with lock:
                    codes[err.code] += 1
                if err.code == "sold_out":
                    return
                continue
            with lock:
                made.append(b["quantity"])

    # WHEN they all book until the event is sold out
    race(16, attempt)

    # THEN every ticket is sold exactly once, and only shortages were refused
    assert set(codes) <= SHORTAGE, codes
    pool = ticket_pool(sql, event_id)
    assert sum(made) == pool["sold"] == 400 and pool["available"] == 0
    rows = sql.execute("SELECT count(*) AS n FROM bookings WHERE event_id = %s", (event_id,)).fetchone()
    assert rows["n"] == len(made)
    assert _rows(sql, event_id) == [0] * 16


def test_a_grant_waiting_on_a_row_sees_the_event_cancelled_under_it(
    http_client: Any, sql: Any, database: str
) -> None:
    # GIVEN a grant waiting on the stock rows of an event a writer is changing
    organizer, _ = account(http_client, "organizer")
    user, _ = account(http_client, "customer")
    event_id = _event(organizer["id"], 400)
    writer = psycopg.connect(database)
    lock_stock(writer, event_id)
    outcome: list[Any] = []

    def book() -> None:
        try:
            outcome.append(bookings.book(user_id=user["id"], event_id=event_id, quantity=1, default_max=10))
        except AppError as err:
            outcome.append(err.code)

    grant = threading.Thread(target=book)
    grant.start()
    time.sleep(0.3)  # its statement has read the event as active and now waits for a row
    assert not outcome
    # WHEN the writer cancels the event as cancel_event does (gate sequence bumped on every row)
    writer.execute("UPDATE events SET status = 'cancelled', gate_seq = gate_seq + 1 WHERE id = %s", (event_id,))
    writer.execute(
        """UPDATE quota_stock SET gate_seq = (SELECT gate_seq FROM events WHERE id = %(id)s)
            WHERE quota_id IN (SELECT id FROM quotas WHERE event_id = %(id)s)""",
        {"id": event_id},
    )
    writer.commit()
    writer.close()
    grant.join(10)

    # THEN the grant, re-checked against the new row but the old event, takes nothing
    assert outcome == ["event_cancelled"]
    assert ticket_pool(sql, event_id)["sold"] == 0


def test_cancelling_an_event_during_a_rush_leaves_no_booking_behind(http_client: Any, sql: Any) -> None:
    # GIVEN 16 customers booking a 16-row event in a loop
    organizer, _ = account(http_client, "organizer")
    customers = [account(http_client, "customer")[0]["id"] for _ in range(16)]
    event_id = _event(organizer["id"], 2000, max_tickets_per_customer=1000)
    codes: Counter[str] = Counter()
    lock = threading.Lock()

    def attempt(i: int) -> None:
        if i == 16:  # WHEN the organizer cancels it mid-rush
            time.sleep(0.3)
            events.cancel_event(event_id=event_id, organizer_id=organizer["id"])
            return
        while True:
            try:
                bookings.book(user_id=customers[i], event_id=event_id, quantity=1, default_max=10)
            except AppError as err:
                with lock:
                    codes[err.code] += 1
                if err.code == "event_cancelled":
                    return

    race(17, attempt)

    # THEN every booking was cancelled with it (none slipped in on a stale read) and all
    # tickets are back
    assert set(codes) == {"event_cancelled"}, codes
    pool = ticket_pool(sql, event_id)
    assert (pool["sold"], pool["available"]) == (0, 2000)
    assert sql.execute(
        "SELECT count(*) AS n FROM bookings WHERE event_id = %s AND status = 'confirmed'", (event_id,)
    ).fetchone()["n"] == 0


def test_every_writer_at_once_on_one_sharded_event_deadlocks_never_and_adds_up(
    http_client: Any, sql: Any, database: str
) -> None:
    # GIVEN one 16-row event and customers booking, holding, confirming, releasing and
    # cancelling, while the organizer changes its capacity and limits
    organizer, _ = account(http_client, "organizer")
    customers = [account(http_client, "customer")[0]["id"] for _ in range(12)]
    event_id = _event(organizer["id"], 400, max_tickets_per_customer=40)
    expected = {*REFUSAL_CODES, "capacity_below_sold", "hold_expired", "hold_released", "cancel_exceeds_booking"}
    failures: list[str] = []
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    done = threading.Event()

    def worker(i: int) -> None:
        rng = random.Random(i)
        user = customers[i]
        mine: list[int] = []
        held: list[int] = []
        for _ in range(60):
            op = rng.choices(["book", "hold", "confirm", "release", "cancel", "resize", "limit"],
                             weights=[40, 20, 10, 5, 10, 10, 5])[0]
            try:
                if op == "book":
                    mine.append(bookings.book(user_id=user, event_id=event_id, quantity=rng.randint(1, 4),
                                              default_max=10)["id"])
                elif op == "hold":
                    held.append(holds.create_hold(user_id=user, event_id=event_id, quantity=rng.randint(1, 4),
                                                  ttl_seconds=600, default_max=10)["id"])
                elif op == "confirm" and held:
                    mine.append(holds.confirm_hold(hold_id=held.pop(), user_id=user)[0]["id"])
                elif op == "release" and held:
                    holds.release_hold(hold_id=held.pop(), user_id=user)
                elif op == "cancel" and mine:
                    bookings.cancel_booking(booking_id=rng.choice(mine), user_id=user, quantity=rng.choice([None, 1]))
                elif op == "resize":
                    events.update_event(event_id=event_id, organizer_id=organizer["id"],
                                        changes={"total_tickets": rng.randint(300, 500)})
                elif op == "limit":
                    events.update_event(event_id=event_id, organizer_id=organizer["id"],
                                        changes={"max_tickets_per_customer": rng.randint(20, 40)})
                else:
                    op = "noop"
                with lock:
                    outcomes[op] += 1
            except AppError as err:
                with lock:
                    outcomes[err.code] += 1
                    if err.code not in expected:
                        failures.append(f"{op}: {err.code}: {err.message}")
            except Exception as exc:  # a deadlock would surface here or as database_unavailable
                with lock:
                    failures.append(f"{op}: {type(exc).__name__}: {exc}")

    def checker() -> None:
        with psycopg.connect(database, autocommit=True, row_factory=dict_row) as conn:
            while not done.is_set():
                pool = ticket_pool(conn, event_id)
                if not pool_adds_up(pool) or min(_rows(conn, event_id)) < 0:
                    failures.append(f"pool does not add up: {pool}")
                time.sleep(0.01)

    watch = threading.Thread(target=checker)
    watch.start()
    try:
        race(len(customers), worker)
    finally:
        done.set()
        watch.join()

    # THEN nothing failed but refusals, and the books balance
    assert not failures, failures[:5]
    assert outcomes["book"] > 50 and outcomes["resize"] > 5, outcomes
    pool = ticket_pool(sql, event_id)
    assert pool_adds_up(pool), pool
    events.cancel_event(event_id=event_id, organizer_id=organizer["id"])  # last: a cancellation after it all
    pool = ticket_pool(sql, event_id)
    assert pool_adds_up(pool) and pool["sold"] == 0, pool


def test_the_migration_moves_each_events_tickets_into_one_row(tmp_path: Path, database: str) -> None:
    # GIVEN a database on the schema before 0010, with events booked through it
    with databases.scratch_database(database, "stock") as url:
        databases.migrate_before(url, 10, tmp_path / "before-0010")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO users (email, password_hash, role) VALUES ('o@test.com', 'x', 'organizer')")
            for total, available in [(50, 50), (10, 3), (500, 0)]:
                conn.execute(
                    "INSERT INTO events (organizer_id, title, total_tickets, available_tickets)"
                    " SELECT id, 'T', %s, %s FROM users", (total, available))
        # WHEN the migration runs
        assert migrations.migrate(url) == [m.version for m in migrations.discover() if m.version >= 10]
        # THEN each event has one row holding what it had, and no other count is left
        with psycopg.connect(url, row_factory=dict_row) as conn:
            rows = conn.execute(
                """SELECT q.shards, e.gate_seq, s.shard, s.available_tickets, s.gate_seq AS row_seq
                     FROM events e JOIN quotas q ON q.event_id = e.id AND q.is_event
                     JOIN quota_stock s ON s.quota_id = q.id ORDER BY e.id""").fetchall()
            assert rows == [{"shards": 1, "gate_seq": 0, "shard": 0, "available_tickets": n, "row_seq": 0}
                            for n in (50, 3, 0)]
            column = conn.execute(
                """SELECT 1 FROM information_schema.columns
                    WHERE table_name = 'events' AND column_name = 'available_tickets'"""
            ).fetchone()
            assert column is None
            # ...and the booking statement grants from that row, then refuses at zero
            user = conn.execute(
                "INSERT INTO users (email, password_hash, role) VALUES ('c@test.com', 'x', 'customer') RETURNING id"
            ).fetchone()
            conn.commit()
            event = conn.execute("SELECT id FROM events ORDER BY id OFFSET 1 LIMIT 1").fetchone()
            params = {"event_id": event["id"], "user_id": user["id"], "quantity": 3, "default_max": 10,
                      "customer_max": 20, "now": datetime(2030, 1, 1, tzinfo=UTC)}
            assert conn.execute(bookings.BOOK_SQL, params).fetchone()["quantity"] == 3
            assert conn.execute(bookings.BOOK_SQL, {**params, "quantity": 1}).fetchone() is None
            conn.rollback()
