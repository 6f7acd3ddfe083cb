"""The randomized invariant test over overlapping quotas, multi-line orders and holds.

Two events, each selling three types through three overlapping quotas: the event quota
(every type), a VIP quota over two of them and a one-type quota. Eight workers order
mixes, hold, confirm, release, cancel single lines, let holds expire (the test clock) and
resize quotas, all through the HTTP API, while a checker reads PostgreSQL in one REPEATABLE
READ snapshot after another: for every quota sold + actively held + free == size, nothing
negative, no type sold past any of its quotas, every order the sum of its lines, and no
customer past a per-type or per-event limit (the limits stay fixed, so "never" is strict).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tests.support.clients import HttpClient
from tests.support.clock import FakeClock
from tests.support.factories import account, create_event
from tests.support.quota_pool import (
    add_quota,
    add_type,
    default_type_id,
    event_quota_id,
    order,
    quota_pools,
    quota_problems,
)

WORKERS = 8
OPS_PER_WORKER = 250
SECONDS = 25  # a slow machine stops here instead of running long
EVENT_LIMIT = 6
# name -> (max_per_customer, max_per_order); the default type has no limits of its own.
TYPES = {"Premium": (3, None), "Backstage": (2, 2)}
# What an operation may be refused with in this workload; anything else is a failure.
EXPECTED_REFUSALS = {
    "sold_out", "insufficient_tickets", "customer_limit_exceeded", "type_limit_exceeded",
    "quantity_too_large", "capacity_below_sold", "hold_expired", "hold_released",
}
ROOM_CODES = {"sold_out", "insufficient_tickets"}


def _event(client: HttpClient, org: str, sql: Any, n: int) -> dict[str, Any]:
    """An event of 40 tickets: GA + Premium + Backstage; VIP (15) over Premium and Backstage,
    Backstage (5) over Backstage alone. Returns ids of its types and quotas."""
    event = create_event(client, org, title=f"Quota rush {n}", total_tickets=40,
                         max_tickets_per_customer=EVENT_LIMIT, max_tickets_per_booking=10)
    ga = default_type_id(sql, event["id"])
    premium = add_type(client, org, event["id"], "Premium", price_minor=5000,
                       max_per_customer=TYPES["Premium"][0])["id"]
    backstage = add_type(client, org, event["id"], "Backstage", price_minor=9000,
                         max_per_customer=TYPES["Backstage"][0], max_per_order=TYPES["Backstage"][1])["id"]
    vip = add_quota(client, org, event["id"], "VIP area", 15, [premium, backstage])["id"]
    back = add_quota(client, org, event["id"], "Backstage passes", 5, [backstage])["id"]
    whole = event_quota_id(sql, event["id"])
    return {
        "id": event["id"],
        "types": [ga, premium, backstage],
        "event_quota": whole,
        "quotas": {whole: (25, 50), vip: (8, 20), back: (2, 8)},  # quota -> the sizes it is resized to
    }


def test_overlapping_quotas_keep_every_invariant_under_a_random_workload(
    http_client: HttpClient, sql: Any, database: str, fake_clock: FakeClock
) -> None:
    # GIVEN two events of overlapping quotas and sixteen customers
    _, org = account(http_client, "organizer")
    events = [_event(http_client, org, sql, n) for n in range(2)]
    ids = [e["id"] for e in events]
    customers = [account(http_client, "customer")[1] for _ in range(WORKERS * 2)]
    lock = threading.Lock()
    ledger: dict[int, dict[int, int]] = {}  # booking -> line -> units it holds, as workers were told
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    done = threading.Event()

    def refused(op: str, event: dict[str, Any], asked: dict[int, int], body: dict[str, Any]) -> None:
        code, details = body.get("code", ""), body.get("details") or {}
        with lock:
            outcomes[code] += 1
        if code not in EXPECTED_REFUSALS:
            failures.append(f"{op}: unexpected {code}: {body}")
        elif code in ROOM_CODES and (details.get("quota_id") not in event["quotas"]
                                     or details.get("ticket_type_id") not in asked):
            failures.append(f"{op}: {code} does not name a quota of the order's types: {body}")
        elif code == "type_limit_exceeded" and details.get("ticket_type_id") not in asked:
            failures.append(f"{op}: {code} names a type the order does not have: {body}")

    def remember(booking: dict[str, Any]) -> None:
        with lock:
            ledger[booking["id"]] = {line["id"]: line["quantity"] for line in booking["lines"]}

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        tokens = customers[seed * 2: seed * 2 + 2]
        mine: list[tuple[str, int]] = []  # (token, booking id)
        my_holds: list[tuple[str, int, dict[str, Any], dict[int, int]]] = []  # token, id, event, its lines
        stop = time.monotonic() + SECONDS
        for _ in range(OPS_PER_WORKER):
            if time.monotonic() > stop:
                break
            token, event = rng.choice(tokens), rng.choice(events)
            op = rng.choices(["order", "seed", "hold", "confirm", "release", "cancel", "resize", "expire"],
                             weights=[30, 6, 20, 14, 5, 14, 7, 6])[0]
            asked = {t: rng.choice([1, 1, 2, 2, 3]) for t in rng.sample(event["types"], rng.randint(1, 3))}
            try:
                if op == "order":
                    r = order(http_client, token, event["id"], asked)
                elif op == "seed":  # the seed API: the default type only
                    asked = {event["types"][0]: rng.randint(1, 3)}
                    r = http_client.request("POST", "/bookings", token=token,
                                            json_body={"event_id": event["id"], "quantity": asked[event["types"][0]]})
                elif op == "hold":
                    lines = [{"ticket_type_id": t, "quantity": q} for t, q in asked.items()]
                    r = http_client.request("POST", f"/events/{event['id']}/holds", token=token,
                                            json_body={"lines": lines, "ttl_seconds": rng.randint(1, 20)})
                    if r.status_code == 201:
                        my_holds.append((token, r.json()["id"], event, asked))
                elif op == "confirm" and my_holds:
                    # An expired hold is granted again under every rule: the limits may refuse it.
                    token, hold_id, event, asked = rng.choice(my_holds)
                    r = http_client.request("POST", f"/holds/{hold_id}/confirm", token=token)
                    if r.status_code == 201:
                        mine.append((token, r.json()["id"]))
                elif op == "release" and my_holds:
                    token, hold_id, event, asked = rng.choice(my_holds)
                    r = http_client.request("DELETE", f"/holds/{hold_id}", token=token)
                elif op == "cancel" and mine:
                    token, booking_id = rng.choice(mine)
                    with lock:
                        open_lines = [(line, n) for line, n in ledger[booking_id].items() if n > 0]
                    if not open_lines:
                        continue
                    line, n = rng.choice(open_lines)
                    body: dict[str, Any] = rng.choice([{"line_id": line, "quantity": rng.randint(1, n)},
                                                       {"line_id": line}, {}])
                    r = http_client.request("POST", f"/bookings/{booking_id}/cancel", json_body=body, token=token)
                elif op == "resize":
                    quota, (low, high) = rng.choice(list(event["quotas"].items()))
                    size = rng.randint(low, high)
                    if quota == event["event_quota"]:  # its size is the event's total_tickets
                        r = http_client.request("PUT", f"/events/{event['id']}", token=org,
                                                json_body={"total_tickets": size})
                    else:
                        r = http_client.request("PATCH", f"/events/{event['id']}/quotas/{quota}", token=org,
                                                json_body={"size": size})
                elif op == "expire":
                    fake_clock.advance(rng.uniform(1, 8))
                    with lock:
                        outcomes[op] += 1
                    continue
                else:
                    continue
                if r.status_code >= 400:
                    refused(op, event, asked, r.json())
                    continue
                if op in ("order", "seed") or (op == "confirm" and r.status_code == 201):
                    if op == "order" and sorted(line["ticket_type_id"] for line in r.json()["lines"]) != sorted(asked):
                        failures.append(f"order lines differ from what was asked: {asked} -> {r.json()}")
                    remember(r.json())
                    if op != "confirm":
                        mine.append((token, r.json()["id"]))
                elif op == "cancel":
                    remember(r.json())
                with lock:
                    outcomes[op] += 1
            except Exception as exc:  # any crash fails the invariant test
                with lock:
                    failures.append(f"{op}: {type(exc).__name__}: {exc}")

    def checker() -> None:
        with psycopg.connect(database, autocommit=True, row_factory=dict_row) as conn:
            while not done.is_set():
                failures.extend(quota_problems(conn, ids, fake_clock.now()))
                with lock:
                    outcomes["snapshots"] += 1
                time.sleep(0.005)

    # WHEN they all work at once, with time moving forward under them
    watch = threading.Thread(target=checker)
    watch.start()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(WORKERS)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        done.set()
        watch.join()

    # THEN nothing crashed, every invariant held in every snapshot, and every line is accounted for
    assert not failures, failures[:10]
    assert (
        outcomes["order"] > 40 and outcomes["confirm"] > 20 and outcomes["cancel"] > 20
        and outcomes["sold_out"] + outcomes["insufficient_tickets"] > 0
        and outcomes["type_limit_exceeded"] + outcomes["customer_limit_exceeded"] > 0
        and outcomes["snapshots"] > 20
    ), outcomes
    assert quota_problems(sql, ids, fake_clock.now()) == []
    stored: dict[int, dict[int, int]] = {}
    for row in sql.execute(
        """SELECT l.booking_id, l.id, l.quantity FROM booking_lines l JOIN bookings b ON b.id = l.booking_id
            WHERE b.event_id = ANY(%s)""", (ids,)
    ).fetchall():
        stored.setdefault(row["booking_id"], {})[row["id"]] = row["quantity"]
    assert stored == ledger

    # ...and readers see each quota's exact room, expired holds counted as free
    for event in events:
        page = http_client.request("GET", f"/events/{event['id']}").json()
        pools = {p["id"]: p for p in quota_pools(sql, [event["id"]], fake_clock.now())}
        room = {q: p["free"] + p["expired_held"] for q, p in pools.items()}
        assert page["available_tickets"] == room[event_quota_id(sql, event["id"])]
        listed = {t["id"]: t["available"] for t in page["ticket_types"]}
        members = sql.execute("SELECT quota_id, ticket_type_id FROM quota_types WHERE event_id = %s",
                              (event["id"],)).fetchall()
        assert listed == {
            t: min(room[m["quota_id"]] for m in members if m["ticket_type_id"] == t) for t in event["types"]
        }
