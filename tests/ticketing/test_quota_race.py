"""300 customers at once, ordering random mixes against quotas that run out at different times.

Event "rush" sells four types through four quotas (the event's, VIP over two types, a
one-type Backstage quota inside VIP, a one-type Student quota): far more is asked than
exists, so each runs out in its turn. Every customer also orders, one order after the
other, on event "limits", which has room for everyone and per-type, per-order and
per-customer limits: there each answer is known in advance from the customer's own orders.
A third of the customers hold, then confirm, instead of ordering.

Afterwards every quota holds exactly what the granted orders took, none is past its size,
each ends full or with less room than any order refused in its name asked of it, and every
refusal names what refused it: the quota (``quota_id``) or the limit with its numbers.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.support.clients import HttpClient
from tests.support.factories import account, create_event
from tests.support.quota_pool import (
    add_quota,
    add_type,
    default_type_id,
    event_quota_id,
    order,
    quick_customers,
    quota_adds_up,
    quota_pools,
    quota_problems,
)
from tests.support.race import race
from tests.support.settings_env import restore_env, set_env

CUSTOMERS = 300
SEED = 14
ROOM_CODES = {"sold_out", "insufficient_tickets"}


def hold(client: HttpClient, token: str, event_id: int, lines: dict[int, int]) -> Any:
    body = {"lines": [{"ticket_type_id": t, "quantity": q} for t, q in lines.items()]}
    return client.request("POST", f"/events/{event_id}/holds", json_body=body, token=token)

# Event "limits": per order at most 5 in all, per customer at most 6.
BOOKING_MAX, CUSTOMER_MAX = 5, 6


def _rush_event(client: HttpClient, org: str, sql: Any) -> dict[str, Any]:
    event = create_event(client, org, title="Quota race", total_tickets=150, max_tickets_per_booking=10)
    eid = event["id"]
    ga = default_type_id(sql, eid)
    premium = add_type(client, org, eid, "Premium", price_minor=5000)["id"]
    backstage = add_type(client, org, eid, "Backstage", price_minor=9000)["id"]
    student = add_type(client, org, eid, "Student", price_minor=1500)["id"]
    quotas = {
        event_quota_id(sql, eid): [ga, premium, backstage, student],
        add_quota(client, org, eid, "VIP area", 40, [premium, backstage])["id"]: [premium, backstage],
        add_quota(client, org, eid, "Backstage passes", 10, [backstage])["id"]: [backstage],
        add_quota(client, org, eid, "Student allocation", 25, [student])["id"]: [student],
    }
    return {"id": eid, "types": [ga, premium, backstage, student], "quotas": quotas}


def _limits_event(client: HttpClient, org: str, sql: Any) -> dict[str, Any]:
    event = create_event(client, org, title="Quota limits", total_tickets=CUSTOMERS * CUSTOMER_MAX,
                         max_tickets_per_booking=BOOKING_MAX, max_tickets_per_customer=CUSTOMER_MAX)
    eid = event["id"]
    ga = default_type_id(sql, eid)
    pair = add_type(client, org, eid, "Pair", max_per_customer=2)["id"]
    family = add_type(client, org, eid, "Family", min_per_order=2, max_per_order=3, max_per_customer=4)["id"]
    # type id -> (min_per_order, max_per_order, max_per_customer)
    rules = {ga: (1, None, None), pair: (1, None, 2), family: (2, 3, 4)}
    return {"id": eid, "types": [ga, pair, family], "rules": rules}


def _expected(limits: dict[str, Any], lines: dict[int, int], has: Counter[int]) -> tuple[str, list[dict[str, Any]]]:
    """What event "limits" must answer to ``lines`` from a customer who has ``has`` (per type):
    "" for a grant, else the refusal's code (the first failing rule, in DESIGN14's order) and
    the details it may carry (any one of them when several lines break the same rule)."""
    rules = limits["rules"]
    total = sum(lines.values())
    too_large = [{"max_quantity": BOOKING_MAX}] if total > BOOKING_MAX else []
    too_large += [{"ticket_type_id": t, "max_quantity": rules[t][1]}
                  for t, q in lines.items() if rules[t][1] is not None and q > rules[t][1]]
    if too_large:
        return "quantity_too_large", too_large
    too_small = [{"ticket_type_id": t, "min_quantity": rules[t][0]} for t, q in lines.items() if q < rules[t][0]]
    if too_small:
        return "quantity_below_minimum", too_small
    if sum(has.values()) + total > CUSTOMER_MAX:
        return "customer_limit_exceeded", [{"limit": CUSTOMER_MAX, "requested": total}]
    over = [{"ticket_type_id": t, "limit": rules[t][2], "has": has[t], "requested": q}
            for t, q in lines.items() if rules[t][2] is not None and has[t] + q > rules[t][2]]
    if over:
        return "type_limit_exceeded", over
    return "", []


@pytest.mark.parametrize("coalesce", [True, False], ids=["batched", "one-statement"])
def test_300_customers_take_every_quota_exactly(http_client: HttpClient, sql: Any, coalesce: bool) -> None:
    saved = set_env({"BOOKING_COALESCE": str(coalesce).lower()})
    try:
        _race(http_client, sql)
    finally:
        restore_env(saved)


def _race(http_client: HttpClient, sql: Any) -> None:
    # GIVEN two events and 300 customers with their orders drawn in advance
    _, org = account(http_client, "organizer")
    rush, limits = _rush_event(http_client, org, sql), _limits_event(http_client, org, sql)
    tokens = quick_customers(sql, CUSTOMERS)
    rng = random.Random(SEED)

    def mix(types: list[int], most: int) -> dict[int, int]:
        return {t: rng.randint(1, most) for t in rng.sample(types, rng.randint(1, min(3, len(types))))}

    plans = [(mix(rush["types"], 3), [mix(limits["types"], 4) for _ in range(rng.randint(1, 3))])
             for _ in range(CUSTOMERS)]

    def customer(i: int) -> list[tuple[int, dict[int, int], int, dict[str, Any]]]:
        """(event, lines, status, body) of each order, the rush's first."""
        rush_lines, limit_orders = plans[i]
        answers = []
        for event_id, lines in [(rush["id"], rush_lines)] + [(limits["id"], lines) for lines in limit_orders]:
            if i % 3 == 0:  # a third hold first, then confirm: the grant is the hold's
                r = hold(http_client, tokens[i], event_id, lines)
                if r.status_code == 201:
                    r = http_client.request("POST", f"/holds/{r.json()['id']}/confirm", token=tokens[i])
            else:
                r = order(http_client, tokens[i], event_id, lines)
            answers.append((event_id, lines, r.status_code, r.json()))
        return answers

    # WHEN they all order at the same instant
    results = race(CUSTOMERS, customer)

    # THEN no answer is an error of ours
    statuses = Counter(status for answers in results for _, _, status, _ in answers)
    assert not any(status >= 500 for status in statuses), statuses
    assert set(statuses) <= {201, 400}, statuses

    # ...the rush: each quota holds exactly what the granted orders took, within its size
    granted = [(lines, body) for answers in results for e, lines, status, body in answers
               if e == rush["id"] and status == 201]
    refused = [(lines, body) for answers in results for e, lines, status, body in answers
               if e == rush["id"] and status != 201]
    for lines, body in granted:
        assert {line["ticket_type_id"]: line["quantity"] for line in body["lines"]} == lines, body
    pools = {p["id"]: p for p in quota_pools(sql, [rush["id"]])}

    def asked_of(quota: int, lines: dict[int, int]) -> int:
        return sum(q for t, q in lines.items() if t in rush["quotas"][quota])

    for quota, pool in pools.items():
        assert pool["held"] == 0 and quota_adds_up(pool), pool
        assert pool["sold"] == sum(asked_of(quota, lines) for lines, _ in granted), pool
    # ...every refusal names a quota of one of its types, and that quota has no room for it, even now
    codes = Counter(body["code"] for _, body in refused)
    assert set(codes) <= ROOM_CODES, codes
    named: Counter[int] = Counter()
    for lines, body in refused:
        details = body["details"]
        quota = details["quota_id"]
        assert quota in rush["quotas"] and details["ticket_type_id"] in lines, body
        assert details["ticket_type_id"] in rush["quotas"][quota], body
        assert details["quota"], body  # its name, for people
        # sold_out says available 0 (DESIGN14 also promises requested; core leaves it out there)
        assert details["available"] < details.get("requested", 1), body
        assert (details["available"] == 0) == (body["code"] == "sold_out"), body
        assert pools[quota]["free"] < asked_of(quota, lines), (body, pools[quota])
        named[quota] += 1
    # ...and they ran out at different times: more than one quota refused someone
    assert len(named) >= 2, named

    # ...the limits event: every answer is the one its customer's own orders called for
    for answers in results:
        has: Counter[int] = Counter()
        for event_id, lines, status, body in answers:
            if event_id != limits["id"]:
                continue
            code, allowed = _expected(limits, lines, has)
            if not code:
                assert status == 201, (lines, dict(has), body)
                has.update(lines)
            else:
                assert (status, body["code"]) == (400, code), (lines, dict(has), body)
                assert any(body["details"].items() >= d.items() for d in allowed), (lines, dict(has), body)
    limit_codes = Counter(body["code"] for answers in results for e, _, status, body in answers
                          if e == limits["id"] and status != 201)
    assert {"customer_limit_exceeded", "type_limit_exceeded", "quantity_too_large",
            "quantity_below_minimum"} <= set(limit_codes), limit_codes
    assert quota_problems(sql, [rush["id"], limits["id"]], datetime.now(UTC)) == []
