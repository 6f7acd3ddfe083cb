"""On-sale rushes against the real database: never oversell, never 5xx; a grant that loses every race is a 503."""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter
from typing import Any

import psycopg
import pytest

from shared.platform.errors import ServiceUnavailable
from shared.ticketing import holds, inventory
from tests.support.clients import HttpClient
from tests.support.factories import account, create_event
from tests.support.race import race
from tests.support.tickets import AVAILABLE_SQL

ATTEMPTS = 200
TICKETS = 50


def _assert_exact_sellout(sql: Any, event_id: int, statuses: Counter[int], codes: Counter[str]) -> None:
    assert statuses[201] == TICKETS, (statuses, codes)
    assert statuses[400] == ATTEMPTS - TICKETS, (statuses, codes)
    assert codes == Counter({"sold_out": ATTEMPTS - TICKETS})
    assert not any(s >= 500 for s in statuses)
    row = sql.execute(
        f"SELECT {AVAILABLE_SQL} AS available_tickets, (SELECT count(*) FROM bookings WHERE event_id = e.id) AS booked "
        "FROM events e WHERE id = %s",
        (event_id,),
    ).fetchone()
    assert row == {"available_tickets": 0, "booked": TICKETS}


def test_http_rush_sells_exactly_the_tickets_that_exist(http_client: HttpClient, sql: Any) -> None:
    # GIVEN 50 tickets and 20 customers
    _, org = account(http_client, "organizer")
    customers = [account(http_client, "customer") for _ in range(20)]
    event = create_event(http_client, org, total_tickets=TICKETS)

    def attempt(i: int) -> tuple[int, str]:
        user, token = customers[i % len(customers)]
        path = f"/book/{user['id']}" if i % 2 else "/bookings"
        r = http_client.request("POST", path, json_body={"event_id": event["id"]}, token=token)
        return r.status_code, r.json().get("code", "")

    # WHEN 200 clients try at the same instant
    results = race(ATTEMPTS, attempt)

    # THEN exactly 50 win and everyone else hears sold_out
    statuses = Counter(s for s, _ in results)
    codes = Counter(c for s, c in results if s != 201)
    _assert_exact_sellout(sql, event["id"], statuses, codes)


def _lambda_container(args: tuple[dict[str, str], int, list[tuple[str, int]], int, Any]) -> list[tuple[int, str]]:
    """One simulated Lambda environment: pool of one connection, requests one at a time."""
    env, event_id, customers, count, barrier = args
    os.environ.update(env)
    os.environ["AWS_LAMBDA_FUNCTION_NAME"] = "booking"
    import json

    from local.lambda_events import build_lambda_event, invoke

    body = json.dumps({"event_id": event_id})

    def headers(i: int) -> dict[str, str]:
        return {"authorization": f"Bearer {customers[i % len(customers)][0]}", "content-type": "application/json"}

    invoke("booking", build_lambda_event("GET", "/bookings", headers=headers(0)))  # warm up: cold start
    barrier.wait()
    out = []
    for i in range(count):
        path = f"/book/{customers[i % len(customers)][1]}"
        r = invoke("booking", build_lambda_event("POST", path, headers=headers(i), body=body))
        out.append((r["statusCode"], json.loads(r["body"]).get("code", "")))
    return out


def test_lambda_rush_from_many_environments(http_client: HttpClient, sql: Any) -> None:
    # GIVEN 8 warm Lambda environments, each with its own single connection
    _, org = account(http_client, "organizer")
    event = create_event(http_client, org, total_tickets=TICKETS)
    environments = 8
    ctx = multiprocessing.get_context("spawn")
    manager = ctx.Manager()
    barrier = manager.Barrier(environments)
    env = {k: os.environ[k] for k in ("DATABASE_URL", "JWT_SECRET", "REDIS_URL") if k in os.environ}
    jobs = []
    for _ in range(environments):
        # Two customers per environment, taking turns: even a lucky environment's 25 wins
        # stay within the per-customer limit (20), so only sold_out can refuse.
        customers = [account(http_client, "customer") for _ in range(2)]
        pairs = [(token, user["id"]) for user, token in customers]
        jobs.append((env, event["id"], pairs, ATTEMPTS // environments, barrier))

    # WHEN they all book as fast as they can
    with ctx.Pool(environments) as pool:
        results = [r for chunk in pool.map(_lambda_container, jobs) for r in chunk]
    manager.shutdown()

    # THEN the sale is exact
    statuses = Counter(s for s, _ in results)
    codes = Counter(c for s, c in results if s != 201)
    _assert_exact_sellout(sql, event["id"], statuses, codes)


def test_losing_every_race_is_a_503_not_a_refusal(monkeypatch: pytest.MonkeyPatch, sql: Any) -> None:
    def always_deadlocked() -> None:
        raise psycopg.errors.DeadlockDetected("simulated")

    with pytest.raises(ServiceUnavailable) as caught:
        inventory.grant(
            sql,
            always_deadlocked,  # type: ignore[arg-type]
            params=inventory.rule_params(event_id=1, quantity=1, default_max=10, now=holds.clock.now()),
            user_id=1,
        )
    assert caught.value.code == "contention"
