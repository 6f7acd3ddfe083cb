"""A randomized concurrent workload with the ticket invariant checked throughout and at the end.

For every event, at any instant: sold + actively held + available == total, with
available never negative and never above total. For every customer of every event, at
any instant: their counter == their confirmed bookings' tickets + their active holds'
(expired ones until reclaimed, as for availability). Every booking a worker was told
about exists, and nothing else does.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from typing import Any

import psycopg
from psycopg.rows import dict_row

from shared.platform.errors import AppError
from shared.ticketing import bookings, events, holds
from shared.ticketing.inventory import EVENT_RULES, REFUSAL_CODES
from tests.support.clock import FakeClock
from tests.support.factories import account
from tests.support.tickets import pool_adds_up, ticket_pools

WORKERS = 8
OPS_PER_WORKER = 300
# Every grant refusal but the event's own (the workload's events exist, stay active and
# never end), and the refusals of its other operations.
EXPECTED_REFUSALS = {
    *REFUSAL_CODES,
    "capacity_below_sold",
    "hold_expired",
    "hold_released",
    "cancel_exceeds_booking",
} - {code for rule in EVENT_RULES for code in rule.codes}


# Every (event, customer) that has a counter or any tickets: the counter against the sum.
CUSTOMER_SQL = """
WITH taken AS (
    SELECT event_id, user_id, sum(quantity) AS n FROM (
        SELECT event_id, user_id, quantity FROM bookings WHERE status = 'confirmed' AND event_id = ANY(%(ids)s)
        UNION ALL
        SELECT event_id, user_id, quantity FROM holds WHERE status = 'active' AND event_id = ANY(%(ids)s)
    ) t GROUP BY event_id, user_id
)
SELECT coalesce(c.event_id, t.event_id) AS event_id, coalesce(c.user_id, t.user_id) AS user_id,
       c.tickets AS counter, coalesce(t.n, 0) AS recomputed, c.limit_at_claim
  FROM (SELECT * FROM customer_tickets WHERE event_id = ANY(%(ids)s)) c
  FULL JOIN taken t ON t.event_id = c.event_id AND t.user_id = c.user_id
 WHERE c.tickets IS DISTINCT FROM coalesce(t.n, 0) OR c.tickets > c.limit_at_claim
"""


def _check(conn: psycopg.Connection, ids: list[int], now: Any) -> list[str]:
    problems = []
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        for row in conn.execute(CUSTOMER_SQL, {"ids": ids}).fetchall():
            problems.append(f"customer counter != booked + held: {row}")
        for pool in ticket_pools(conn, ids, now):
            if not pool_adds_up(pool):
                problems.append(f"event {pool['id']}: sold+held+available != total: {pool}")
            # What readers see: expired holds count as available before they are reclaimed.
            available = pool["available"] + pool["expired_held"]
            if not 0 <= available <= pool["total"] or pool["available"] < 0:
                problems.append(f"event {pool['id']}: availability out of range: {pool}")
    return problems


def test_randomized_workload_keeps_the_invariant(http_client: Any, database: str, fake_clock: FakeClock) -> None:
    # GIVEN three events and a crowd of customers
    organizer, _ = account(http_client, "organizer")
    customers = [account(http_client, "customer")[0]["id"] for _ in range(WORKERS * 2)]
    ids = [
        events.create_event(
            organizer_id=organizer["id"],
            fields={
                "title": f"Rush {i}",
                "venue": None,
                "start_time": None,
                "end_time": None,
                "total_tickets": 30,
                "max_tickets_per_customer": 4,  # low, so the limit bites often
            },
        )["id"]
        for i in range(3)
    ]
    lock = threading.Lock()
    ledger: dict[int, int] = {}  # booking id -> tickets it holds now, as workers were told
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    done = threading.Event()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        my_users = customers[seed * 2 : seed * 2 + 2]
        my_bookings: list[tuple[int, int]] = []
        my_holds: list[tuple[int, int]] = []
        for _ in range(OPS_PER_WORKER):
            user = rng.choice(my_users)
            event_id = rng.choice(ids)
            op = rng.choices(
                ["book", "cancel", "hold", "confirm", "release", "resize", "limit", "expire"],
                weights=[30, 12, 22, 14, 6, 8, 4, 8],
            )[0]
            try:
                if op == "book":
                    b = bookings.book(user_id=user, event_id=event_id, quantity=rng.randint(1, 3), default_max=10)
                    my_bookings.append((b["id"], b["user_id"]))
                    with lock:
                        ledger[b["id"]] = b["quantity"]
                elif op == "cancel" and my_bookings:
                    bid, uid = rng.choice(my_bookings)
                    quantity = rng.choice([None, 1])
                    b = bookings.cancel_booking(booking_id=bid, user_id=uid, quantity=quantity)
                    with lock:
                        ledger[bid] = b["quantity"]
                elif op == "hold":
                    h = holds.create_hold(
                        user_id=user,
                        event_id=event_id,
                        quantity=rng.randint(1, 3),
                        ttl_seconds=rng.randint(1, 20),
                        default_max=10,
                    )
                    my_holds.append((h["id"], h["user_id"]))
                elif op == "confirm" and my_holds:
                    hid, uid = rng.choice(my_holds)
                    b, created = holds.confirm_hold(hold_id=hid, user_id=uid)
                    if created:
                        my_bookings.append((b["id"], uid))
                    with lock:
                        ledger[b["id"]] = b["quantity"] if created else ledger.get(b["id"], b["quantity"])
                elif op == "release" and my_holds:
                    hid, uid = rng.choice(my_holds)
                    holds.release_hold(hold_id=hid, user_id=uid)
                elif op == "resize":
                    events.update_event(
                        event_id=event_id, organizer_id=organizer["id"], changes={"total_tickets": rng.randint(20, 45)}
                    )
                elif op == "limit":  # lowered below what some have, raised again
                    events.update_event(
                        event_id=event_id, organizer_id=organizer["id"],
                        changes={"max_tickets_per_customer": rng.randint(2, 6)},
                    )
                elif op == "expire":
                    fake_clock.advance(rng.uniform(1, 8))
                else:
                    op = "noop"
                with lock:
                    outcomes[op] += 1
            except AppError as err:
                with lock:
                    outcomes[err.code] += 1
                    if err.code not in EXPECTED_REFUSALS:
                        failures.append(f"{op}: unexpected {err.code}: {err.message}")
            except Exception as exc:  # any crash fails the invariant test
                with lock:
                    failures.append(f"{op}: {type(exc).__name__}: {exc}")

    def checker() -> None:
        with psycopg.connect(database, autocommit=True, row_factory=dict_row) as conn:
            while not done.is_set():
                failures.extend(_check(conn, ids, fake_clock.now()))
                time.sleep(0.01)

    # WHEN they all work at once, with time moving forward under them
    watch = threading.Thread(target=checker)
    watch.start()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    watch.join()

    # THEN nothing crashed, the invariant always held, and every booking is accounted for
    assert not failures, failures[:10]
    assert (
        outcomes["book"] > 100
        and outcomes["confirm"] > 20
        and outcomes["sold_out"] + outcomes["insufficient_tickets"] > 0
        and outcomes["customer_limit_exceeded"] > 0
    ), outcomes
    with psycopg.connect(database, autocommit=True, row_factory=dict_row) as conn:
        assert _check(conn, ids, fake_clock.now()) == []
        rows = conn.execute("SELECT id, quantity FROM bookings WHERE event_id = ANY(%s)", (ids,)).fetchall()
    assert {r["id"]: r["quantity"] for r in rows} == ledger
