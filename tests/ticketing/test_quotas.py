"""Quotas: capacities shared by ticket types, their counts, and changes never below sold + held."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from tests.support.catalog import add_quota, add_type, assert_counts_add_up, inventory, ok, quotas_of, refused, types_of
from tests.support.clients import Client, HttpClient, LambdaClient
from tests.support.clock import FakeClock
from tests.support.factories import account, create_event
from tests.support.race import race
from tests.support.settings_env import restore_env, set_env


def _quota(event: dict[str, Any], quota_id: int | None = None) -> str:
    return f"/events/{event['id']}/quotas" + (f"/{quota_id}" if quota_id else "")


def _book(client: Client, token: str, event_id: int, quantity: int) -> Any:
    """An order of the default type (the seed's body), which the tests put in their quotas."""
    return client.request("POST", "/bookings", json_body={"event_id": event_id, "quantity": quantity}, token=token)


def _hold(client: LambdaClient, token: str, event_id: int, quantity: int, **extra: Any) -> Any:
    body = {"quantity": quantity, **extra}
    return client.request("POST", f"/events/{event_id}/holds", json_body=body, token=token)


def _stock(sql: psycopg.Connection, quota_id: int) -> int:
    row = sql.execute("SELECT sum(available_tickets)::int AS n FROM quota_stock WHERE quota_id = %s", (quota_id,))
    return int(row.fetchone()["n"])  # type: ignore[index]


def test_create_list_and_counts(v2: LambdaClient, sql: psycopg.Connection) -> None:
    _, org = account(v2, "organizer")
    event = create_event(v2, org, total_tickets=100)
    vip = add_type(v2, org, event["id"], name="VIP")
    box = add_type(v2, org, event["id"], name="Box")
    area = add_quota(v2, org, event["id"], 30, [vip["id"], box["id"], vip["id"]])
    assert (area["name"], area["size"], area["is_event"]) == ("VIP area", 30, False)
    assert area["ticket_type_ids"] == sorted([vip["id"], box["id"]])
    assert (area["sold"], area["held"], area["free"]) == (0, 0, 30)
    assert _stock(sql, area["id"]) == 30
    listed = quotas_of(v2, org, event["id"])
    assert [q["is_event"] for q in listed] == [True, False]  # the event quota first
    assert listed[0]["size"] == 100 and len(listed[0]["ticket_type_ids"]) == 3  # every type
    assert {t["id"]: t["available"] for t in types_of(v2, org, event["id"])}[vip["id"]] == 30
    assert_counts_add_up(v2, org, event["id"])


def test_update_name_size_and_types(v2: LambdaClient, sql: psycopg.Connection) -> None:
    _, org = account(v2, "organizer")
    event = create_event(v2, org, total_tickets=100)
    vip = add_type(v2, org, event["id"], name="VIP")
    box = add_type(v2, org, event["id"], name="Box")
    area = add_quota(v2, org, event["id"], 30, [vip["id"]])
    r = ok(v2.request("PATCH", _quota(event, area["id"]), json_body={"size": 12, "ticket_type_ids": [box["id"]]},
                      token=org))
    assert (r["name"], r["size"], r["free"], r["ticket_type_ids"]) == ("VIP area", 12, 12, [box["id"]])
    assert _stock(sql, area["id"]) == 12
    r = ok(v2.request("PATCH", _quota(event, area["id"]), json_body={"name": "Boxes", "size": 40}, token=org))
    assert (r["name"], r["size"], r["free"]) == ("Boxes", 40, 40) and _stock(sql, area["id"]) == 40
    available = {t["id"]: t["available"] for t in types_of(v2, org, event["id"])}
    assert (available[vip["id"]], available[box["id"]]) == (100, 40)
    refused(v2.request("PATCH", _quota(event, area["id"]), json_body={"size": -1}, token=org), 422,
            "validation_error")
    refused(v2.request("PATCH", _quota(event, area["id"]), json_body={"ticket_type_ids": [987654321]}, token=org),
            404, "ticket_type_not_found")


def test_the_event_quota_follows_the_event(v2: LambdaClient) -> None:
    _, org = account(v2, "organizer")
    event = create_event(v2, org, total_tickets=100)
    add_type(v2, org, event["id"], name="VIP")
    event_quota = quotas_of(v2, org, event["id"])[0]
    path = _quota(event, event_quota["id"])
    size = refused(v2.request("PATCH", path, json_body={"size": 50}, token=org), 409, "event_quota")
    assert "total_tickets" in size["message"]
    types = refused(v2.request("PATCH", path, json_body={"ticket_type_ids": event_quota["ticket_type_ids"][:1]},
                               token=org), 409, "event_quota")
    assert "every ticket type" in types["message"] and "total_tickets" not in types["message"]
    deleted = refused(v2.request("DELETE", path, token=org), 409, "event_quota")
    assert "cannot be deleted" in deleted["message"] and "total_tickets" not in deleted["message"]
    renamed = ok(v2.request("PATCH", path, json_body={"name": "Hall", "size": 100}, token=org))
    assert (renamed["name"], renamed["size"]) == ("Hall", 100)
    ok(v2.request("PUT", f"/events/{event['id']}", json_body={"total_tickets": 80}, token=org))
    assert quotas_of(v2, org, event["id"])[0]["size"] == 80  # PUT /events moves it
    assert_counts_add_up(v2, org, event["id"])


def test_delete_and_not_found(v2: LambdaClient) -> None:
    _, org = account(v2, "organizer")
    event = create_event(v2, org, total_tickets=100)
    vip = add_type(v2, org, event["id"], name="VIP")
    area = add_quota(v2, org, event["id"], 10, [vip["id"]])
    assert v2.request("DELETE", _quota(event, area["id"]), token=org).status_code == 204
    refused(v2.request("DELETE", _quota(event, area["id"]), token=org), 404, "quota_not_found")
    refused(v2.request("PATCH", _quota(event, area["id"]), json_body={"name": "x"}, token=org), 404, "quota_not_found")
    assert {t["id"]: t["available"] for t in types_of(v2, org, event["id"])}[vip["id"]] == 100
    refused(v2.request("POST", _quota(event), json_body={"name": "x", "size": 1, "ticket_type_ids": [987654321]},
                       token=org), 404, "ticket_type_not_found")


def test_names_are_trimmed_and_bodies_strict(v2: LambdaClient) -> None:
    _, org = account(v2, "organizer")
    event = create_event(v2, org)
    refused(v2.request("POST", _quota(event), json_body={"name": "  ", "size": 1, "ticket_type_ids": []}, token=org),
            422, "validation_error")
    area = add_quota(v2, org, event["id"], 5, [], name=" Balcony  ")
    assert area["name"] == "Balcony"
    refused(v2.request("PATCH", _quota(event, area["id"]), json_body={"name": " "}, token=org), 422, "validation_error")
    for body in ({"name": "x", "size": 1, "ticket_type_ids": [], "shards": 4}, {"is_event": True}):
        path = _quota(event) if "size" in body else _quota(event, area["id"])
        method = "POST" if "size" in body else "PATCH"
        r = refused(v2.request(method, path, json_body=body, token=org), 422, "validation_error")
        assert r["details"]["errors"][0]["type"] == "extra_forbidden"
    assert [q["is_event"] for q in quotas_of(v2, org, event["id"])] == [True, False]


def test_only_the_organizer(v2: LambdaClient) -> None:
    _, org = account(v2, "organizer")
    _, other = account(v2, "organizer")
    _, cust = account(v2, "customer")
    event = create_event(v2, org)
    q = quotas_of(v2, org, event["id"])[0]["id"]
    calls = [("POST", _quota(event), {"name": "x", "size": 1, "ticket_type_ids": []}), ("GET", _quota(event), None),
             ("PATCH", _quota(event, q), {"name": "y"}), ("DELETE", _quota(event, q), None),
             ("GET", f"/events/{event['id']}/inventory", None)]
    for method, path, body in calls:
        refused(v2.request(method, path, json_body=body, token=other), 403, "not_event_owner")
        refused(v2.request(method, path, json_body=body, token=cust), 403, "organizer_only")
        missing = path.replace(f"/events/{event['id']}", "/events/987654321")
        refused(v2.request(method, missing, json_body=body, token=org), 404, "event_not_found")


# -- with sales: orders and holds of the default type, put in a quota of its own ------------------


def _sold_event(client: Client, org: str, total: int, vip_size: int) -> tuple[dict[str, Any], int, dict[str, Any]]:
    """An event whose default type is also in a 'VIP area' quota: (event, default type id, quota)."""
    event = create_event(client, org, total_tickets=total)
    default = event["ticket_types"][0]["id"]
    return event, default, add_quota(client, org, event["id"], vip_size, [default])


def test_capacity_below_sold_plus_held_is_refused_with_the_numbers(v2: LambdaClient, sql: psycopg.Connection) -> None:
    _, org = account(v2, "organizer")
    _, cust = account(v2, "customer")
    event, default, area = _sold_event(v2, org, 100, 10)
    ok(_book(v2, cust, event["id"], 3), 201)
    ok(_hold(v2, cust, event["id"], 2), 201)
    body = refused(v2.request("PATCH", _quota(event, area["id"]), json_body={"size": 4}, token=org),
                   409, "capacity_below_sold")
    assert body["details"] == {"quota_id": area["id"], "quota": "VIP area", "sold": 3, "held": 2, "requested": 4}
    r = ok(v2.request("PATCH", _quota(event, area["id"]), json_body={"size": 5}, token=org))
    assert (r["size"], r["sold"], r["held"], r["free"]) == (5, 3, 2, 0)
    assert _stock(sql, area["id"]) == 0
    inv = assert_counts_add_up(v2, org, event["id"])
    assert {t["id"]: t["available"] for t in inv["ticket_types"]}[default] == 0
    assert ok(v2.request("GET", f"/events/{event['id']}"))["ticket_types"][0]["available"] == 0
    r = ok(v2.request("PATCH", _quota(event, area["id"]), json_body={"size": 7}, token=org))
    assert (r["free"], _stock(sql, area["id"])) == (2, 2)
    ok(_book(v2, cust, event["id"], 2), 201)
    assert_counts_add_up(v2, org, event["id"])


def test_a_quota_cut_to_what_is_taken_refuses_more_naming_it(v2: LambdaClient) -> None:
    _, org = account(v2, "organizer")
    _, cust = account(v2, "customer")
    event, _, area = _sold_event(v2, org, 100, 10)
    ok(_book(v2, cust, event["id"], 3), 201)
    ok(v2.request("PATCH", _quota(event, area["id"]), json_body={"size": 3}, token=org))
    body = refused(_book(v2, cust, event["id"], 1), 400, "sold_out")
    assert body["details"]["quota_id"] == area["id"]


def test_expired_holds_count_as_free_and_are_reclaimed_by_a_cut(v2: LambdaClient, fake_clock: FakeClock) -> None:
    _, org = account(v2, "organizer")
    _, cust = account(v2, "customer")
    event, _, area = _sold_event(v2, org, 100, 10)
    ok(_book(v2, cust, event["id"], 2), 201)
    ok(_hold(v2, cust, event["id"], 3, ttl_seconds=60), 201)
    fake_clock.advance(120)
    counted = next(q for q in quotas_of(v2, org, event["id"]) if q["id"] == area["id"])
    assert (counted["sold"], counted["held"], counted["free"]) == (2, 0, 8)
    assert_counts_add_up(v2, org, event["id"])
    r = ok(v2.request("PATCH", _quota(event, area["id"]), json_body={"size": 2}, token=org))
    assert (r["size"], r["sold"], r["held"], r["free"]) == (2, 2, 0, 0)
    assert_counts_add_up(v2, org, event["id"])
    assert quotas_of(v2, org, event["id"])[0]["free"] == 98  # the event quota got the hold's units back


def test_membership_of_a_type_with_sales_is_locked(v2: LambdaClient) -> None:
    _, org = account(v2, "organizer")
    _, cust = account(v2, "customer")
    event, default, area = _sold_event(v2, org, 100, 10)
    fresh = add_type(v2, org, event["id"], name="Fresh")
    ok(_book(v2, cust, event["id"], 1), 201)
    body = refused(v2.request("PATCH", _quota(event, area["id"]), json_body={"ticket_type_ids": []}, token=org),
                   409, "quota_membership_locked")
    assert body["details"] == {"ticket_type_ids": [default]}
    refused(v2.request("POST", _quota(event), json_body={"name": "x", "size": 5, "ticket_type_ids": [default]},
                       token=org), 409, "quota_membership_locked")
    refused(v2.request("PATCH", f"/events/{event['id']}/ticket-types/{default}", json_body={"quota_ids": []},
                       token=org), 409, "quota_membership_locked")
    both = ok(v2.request("PATCH", _quota(event, area["id"]),
                         json_body={"ticket_type_ids": [default, fresh["id"]]}, token=org))
    assert both["ticket_type_ids"] == sorted([default, fresh["id"]])  # a type without sales may join
    assert_counts_add_up(v2, org, event["id"])


def test_held_only_locks_membership_too(v2: LambdaClient) -> None:
    _, org = account(v2, "organizer")
    _, cust = account(v2, "customer")
    event, _, area = _sold_event(v2, org, 100, 10)
    ok(_hold(v2, cust, event["id"], 1), 201)
    refused(v2.request("PATCH", _quota(event, area["id"]), json_body={"ticket_type_ids": []}, token=org),
            409, "quota_membership_locked")


def test_inventory_per_quota_and_per_type(v2: LambdaClient) -> None:
    _, org = account(v2, "organizer")
    _, cust = account(v2, "customer")
    event, default, area = _sold_event(v2, org, 20, 5)
    other = add_type(v2, org, event["id"], name="Other")
    ok(_book(v2, cust, event["id"], 2), 201)
    ok(_hold(v2, cust, event["id"], 1), 201)
    inv = assert_counts_add_up(v2, org, event["id"])
    quotas = {q["id"]: (q["size"], q["sold"], q["held"], q["free"]) for q in inv["quotas"]}
    assert quotas == {inv["quotas"][0]["id"]: (20, 2, 1, 17), area["id"]: (5, 2, 1, 2)}
    types = {t["id"]: (t["sold"], t["held"], t["available"]) for t in inv["ticket_types"]}
    assert types == {default: (2, 1, 2), other["id"]: (0, 0, 17)}
    assert inventory(v2, org, event["id"]) == inv


@pytest.mark.parametrize("coalesce", [True, False], ids=["batched", "one-by-one"])
def test_a_quota_cut_racing_orders_never_goes_below_sold_plus_held(http_client: HttpClient, coalesce: bool) -> None:
    """Customers order while the organizer cuts the quota step by step: every cut either passes
    with sold + held within the new size or is refused with numbers that say so; at the end
    sold + held + free == size for every quota and nothing is sold past it."""
    client = http_client  # real HTTP: requests from many threads at once
    saved = set_env({"BOOKING_COALESCE": str(coalesce).lower()})
    try:
        _race_a_cut(client)
    finally:
        restore_env(saved)


def _race_a_cut(client: HttpClient) -> None:
    _, org = account(client, "organizer")
    customers = [account(client, "customer")[1] for _ in range(24)]
    event, _, area = _sold_event(client, org, 200, 40)
    cuts: list[tuple[int, Any]] = []
    done = threading.Event()

    def organizer() -> None:
        size = 40
        while not done.is_set() and size > 10:  # leave room: some orders must pass
            size -= 2
            r = client.request("PATCH", _quota(event, area["id"]), json_body={"size": size}, token=org)
            cuts.append((size, r))
            if r.status_code == 409:
                size += 2  # the next try cuts from the same size

    cutter = threading.Thread(target=organizer)
    cutter.start()
    try:
        answers = race(len(customers), lambda i: [_book(client, customers[i], event["id"], 1) for _ in range(2)])
    finally:
        done.set()
        cutter.join()
    booked = sum(1 for rs in answers for r in rs if r.status_code == 201)
    for r in (r for rs in answers for r in rs if r.status_code != 201):
        assert r.json()["code"] in ("sold_out", "insufficient_tickets", "contention"), r.text
    assert cuts, "the organizer never ran"
    for size, r in cuts:
        if r.status_code == 409:
            body = r.json()
            assert body["code"] == "capacity_below_sold" and body["details"]["requested"] == size, body
            assert body["details"]["sold"] + body["details"]["held"] > size, body
        else:
            assert r.status_code == 200, r.text
            assert r.json()["sold"] + r.json()["held"] <= size
    inv = assert_counts_add_up(client, org, event["id"])
    final = next(q for q in inv["quotas"] if q["id"] == area["id"])
    assert final["sold"] == booked <= final["size"]
    assert booked > 0


def test_every_change_bumps_the_gate_on_every_stock_row(v2: LambdaClient, sql: psycopg.Connection) -> None:
    """Grants compare their stock row's gate_seq with the event's: each catalog change bumps
    both, on every row of every quota of the event (inventory.touch_gate)."""
    _, org = account(v2, "organizer")
    event = create_event(v2, org, total_tickets=1000)
    vip = add_type(v2, org, event["id"], name="VIP")
    area = add_quota(v2, org, event["id"], 300, [vip["id"]])

    def gates() -> tuple[int, set[int]]:
        seq = sql.execute("SELECT gate_seq FROM events WHERE id = %s", (event["id"],)).fetchone()["gate_seq"]
        rows = sql.execute(
            "SELECT DISTINCT s.gate_seq FROM quota_stock s JOIN quotas q ON q.id = s.quota_id WHERE q.event_id = %s",
            (event["id"],)).fetchall()
        return seq, {r["gate_seq"] for r in rows}

    before, rows = gates()
    assert rows == {before}
    changes = [("PATCH", _quota(event, area["id"]), {"size": 200}),
               ("PATCH", f"/events/{event['id']}/ticket-types/{vip['id']}", {"active": False}),
               ("POST", f"/events/{event['id']}/ticket-types", {"name": "Late"})]
    for method, path, body in changes:
        ok(v2.request(method, path, json_body=body, token=org), 201 if method == "POST" else 200)
        after, rows = gates()
        assert after > before and rows == {after}, (method, path)
        before = after


def _lines(client: Client, token: str, event_id: int, lines: dict[int, int], path: str = "/bookings") -> Any:
    body: dict[str, Any] = {"lines": [{"ticket_type_id": t, "quantity": n} for t, n in lines.items()]}
    if path == "/bookings":
        body["event_id"] = event_id
    return client.request("POST", path, json_body=body, token=token)


def test_orders_of_several_types_count_in_every_quota_of_each(v2: LambdaClient) -> None:
    """Two types share a VIP quota inside the event quota; a third is only in the event quota."""
    _, org = account(v2, "organizer")
    _, cust = account(v2, "customer")
    event = create_event(v2, org, total_tickets=30)
    general = event["ticket_types"][0]["id"]
    vip = add_type(v2, org, event["id"], name="VIP", price_minor=5000)["id"]
    box = add_type(v2, org, event["id"], name="Box", price_minor=9000)["id"]
    area = add_quota(v2, org, event["id"], 6, [vip, box])
    order = ok(_lines(v2, cust, event["id"], {vip: 2, box: 1, general: 4}), 201)
    assert order["total_minor"] == 2 * 5000 + 9000
    ok(_lines(v2, cust, event["id"], {box: 2}, path=f"/events/{event['id']}/holds"), 201)
    inv = assert_counts_add_up(v2, org, event["id"])
    quotas = {q["id"]: (q["size"], q["sold"], q["held"], q["free"]) for q in inv["quotas"]}
    assert quotas == {inv["quotas"][0]["id"]: (30, 7, 2, 21), area["id"]: (6, 3, 2, 1)}
    types = {t["id"]: (t["sold"], t["held"], t["available"]) for t in inv["ticket_types"]}
    assert types == {general: (4, 0, 21), vip: (2, 0, 1), box: (1, 2, 1)}
    shown = {t["id"]: t["available"] for t in ok(v2.request("GET", f"/events/{event['id']}"))["ticket_types"]}
    assert shown == {general: 21, vip: 1, box: 1}
    body = refused(v2.request("PATCH", _quota(event, area["id"]), json_body={"size": 4}, token=org),
                   409, "capacity_below_sold")
    assert body["details"] == {"quota_id": area["id"], "quota": "VIP area", "sold": 3, "held": 2, "requested": 4}
    refused(_lines(v2, cust, event["id"], {vip: 2}), 400, "insufficient_tickets")
    ok(v2.request("PATCH", _quota(event, area["id"]), json_body={"size": 5}, token=org))
    refused(_lines(v2, cust, event["id"], {vip: 1}), 400, "sold_out")
    ok(_lines(v2, cust, event["id"], {general: 1}), 201)  # the event quota still has room
    assert_counts_add_up(v2, org, event["id"])
