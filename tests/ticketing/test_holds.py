"""Seat holds: confirm, release, and expiry that needs no sweeper (time moved by the test)."""

from __future__ import annotations

from typing import Any

from tests.support.clients import Client
from tests.support.clock import FakeClock
from tests.support.factories import account, create_event
from tests.support.tickets import available_tickets, place_hold, stored_available


def test_hold_then_confirm_makes_one_booking(client: Client, sql: Any) -> None:
    _, org = account(client, "organizer")
    customer, cust = account(client, "customer")
    event = create_event(client, org, total_tickets=5)
    r = place_hold(client, cust, event["id"], 2)
    assert r.status_code == 201, r.text
    hold = r.json()
    assert hold["status"] == "active" and hold["quantity"] == 2
    assert available_tickets(client, event["id"]) == 3

    r = client.request("POST", f"/holds/{hold['id']}/confirm", token=cust)
    assert r.status_code == 201, r.text
    booking = r.json()
    assert booking["hold_id"] == hold["id"] and booking["quantity"] == 2 and booking["user_id"] == customer["id"]
    assert available_tickets(client, event["id"]) == 3
    assert client.request("GET", f"/holds/{hold['id']}", token=cust).json()["status"] == "confirmed"

    again = client.request("POST", f"/holds/{hold['id']}/confirm", token=cust)
    assert again.status_code == 200 and again.json()["id"] == booking["id"]
    assert sql.execute("SELECT count(*) AS n FROM bookings WHERE hold_id = %s", (hold["id"],)).fetchone()["n"] == 1


def test_release_returns_tickets_and_is_harmless_twice(client: Client) -> None:
    _, org = account(client, "organizer")
    _, cust = account(client, "customer")
    event = create_event(client, org, total_tickets=5)
    hold = place_hold(client, cust, event["id"], 3).json()
    for _ in range(2):
        r = client.request("DELETE", f"/holds/{hold['id']}", token=cust)
        assert r.status_code == 200 and r.json()["status"] == "released"
        assert available_tickets(client, event["id"]) == 5
    r = client.request("POST", f"/holds/{hold['id']}/confirm", token=cust)
    assert r.status_code == 409 and r.json()["code"] == "hold_released"


def test_expired_hold_stops_counting_without_any_sweeper(client: Client, fake_clock: FakeClock) -> None:
    # GIVEN a hold on every ticket
    _, org = account(client, "organizer")
    _, holder = account(client, "customer")
    _, other = account(client, "customer")
    event = create_event(client, org, total_tickets=4)
    hold = place_hold(client, holder, event["id"], 4, ttl_seconds=60).json()
    assert available_tickets(client, event["id"]) == 0
    r = client.request("POST", "/bookings", json_body={"event_id": event["id"]}, token=other)
    assert r.status_code == 400 and r.json()["code"] == "sold_out"

    # WHEN its time runs out (and nothing tidies)
    fake_clock.advance(61)

    # THEN availability is exact at once and the tickets can be booked
    assert available_tickets(client, event["id"]) == 4
    assert client.request("GET", f"/holds/{hold['id']}", token=holder).json()["status"] == "expired"
    r = client.request("POST", "/bookings", json_body={"event_id": event["id"], "quantity": 3}, token=other)
    assert r.status_code == 201, r.text
    assert available_tickets(client, event["id"]) == 1

    # AND confirming the expired hold fails clearly, saying what is left
    r = client.request("POST", f"/holds/{hold['id']}/confirm", token=holder)
    assert r.status_code == 409
    assert r.json()["code"] == "hold_expired"
    details = r.json()["details"]
    assert details == {"available": 1, "requested": 4, "quota": "Event capacity",
                       "quota_id": details["quota_id"], "ticket_type_id": details["ticket_type_id"]}
    assert available_tickets(client, event["id"]) == 1


def test_expired_hold_confirms_when_tickets_are_still_free(client: Client, fake_clock: FakeClock) -> None:
    _, org = account(client, "organizer")
    _, cust = account(client, "customer")
    event = create_event(client, org, total_tickets=10)
    hold = place_hold(client, cust, event["id"], 2, ttl_seconds=30).json()
    fake_clock.advance(31)
    r = client.request("POST", f"/holds/{hold['id']}/confirm", token=cust)
    assert r.status_code == 201, r.text
    assert r.json()["quantity"] == 2
    assert available_tickets(client, event["id"]) == 8


def test_capacity_cut_counts_live_holds_but_not_expired_ones(client: Client, fake_clock: FakeClock) -> None:
    _, org = account(client, "organizer")
    _, cust = account(client, "customer")
    event = create_event(client, org, total_tickets=10)
    client.request("POST", "/bookings", json_body={"event_id": event["id"], "quantity": 3}, token=cust)
    place_hold(client, cust, event["id"], 4, ttl_seconds=60)
    r = client.request("PUT", f"/events/{event['id']}", json_body={"total_tickets": 6}, token=org)
    assert r.status_code == 409
    assert r.json()["details"] == {"sold": 3, "held": 4, "requested": 6}
    fake_clock.advance(61)
    r = client.request("PUT", f"/events/{event['id']}", json_body={"total_tickets": 3}, token=org)
    assert r.status_code == 200, r.text
    assert (r.json()["total_tickets"], r.json()["available_tickets"]) == (3, 0)


def test_holds_respect_the_per_event_maximum(client: Client) -> None:
    _, org = account(client, "organizer")
    _, cust = account(client, "customer")
    event = create_event(client, org, total_tickets=100, max_tickets_per_booking=2)
    r = place_hold(client, cust, event["id"], 3)
    assert r.status_code == 400 and r.json()["code"] == "quantity_too_large"
    assert r.json()["details"] == {"max_quantity": 2}
    big = create_event(client, org, total_tickets=100, max_tickets_per_booking=20)
    r = client.request("POST", "/bookings", json_body={"event_id": big["id"], "quantity": 15}, token=cust)
    assert r.status_code == 201, r.text


def test_tidy_marks_expired_holds_and_keeps_counts(client: Client, fake_clock: FakeClock, sql: Any) -> None:
    from shared.ticketing.holds import tidy_expired_holds

    _, org = account(client, "organizer")
    _, cust = account(client, "customer")
    event = create_event(client, org, total_tickets=5)
    hold = place_hold(client, cust, event["id"], 5, ttl_seconds=10).json()
    fake_clock.advance(11)
    assert available_tickets(client, event["id"]) == 5
    assert tidy_expired_holds() >= 5
    row = sql.execute("SELECT status FROM holds WHERE id = %s", (hold["id"],)).fetchone()
    assert row["status"] == "expired"
    assert stored_available(sql, event["id"]) == 5
    assert available_tickets(client, event["id"]) == 5


def test_other_customers_cannot_see_or_touch_a_hold(client: Client) -> None:
    _, org = account(client, "organizer")
    _, cust = account(client, "customer")
    _, other = account(client, "customer")
    event = create_event(client, org, total_tickets=5)
    hold = place_hold(client, cust, event["id"], 1).json()
    for method, path in [
        ("GET", f"/holds/{hold['id']}"),
        ("POST", f"/holds/{hold['id']}/confirm"),
        ("DELETE", f"/holds/{hold['id']}"),
    ]:
        r = client.request(method, path, token=other)
        assert r.status_code == 404 and r.json()["code"] == "hold_not_found"
    assert available_tickets(client, event["id"]) == 4


def test_maintenance_tidy_purges_expired_keys_and_holds(client: Client, fake_clock: FakeClock, sql: Any) -> None:
    from shared.jobs.tidy import tidy

    _, org = account(client, "organizer")
    customer, cust = account(client, "customer")
    event = create_event(client, org, total_tickets=5)
    client.request(
        "POST", "/bookings", json_body={"event_id": event["id"]}, token=cust, headers={"Idempotency-Key": "t"}
    )
    place_hold(client, cust, event["id"], 2, ttl_seconds=5)
    fake_clock.advance(86_401)
    result = tidy()
    assert result["hold_tickets_freed"] >= 2 and result["idempotency_keys_purged"] >= 1
    left = sql.execute("SELECT count(*) AS n FROM idempotency_keys WHERE user_id = %s", (customer["id"],)).fetchone()
    assert left["n"] == 0


def test_confirming_an_expired_hold_twice_makes_one_booking(client: Client, fake_clock: FakeClock, sql: Any) -> None:
    # GIVEN a hold that expired while its tickets stayed free
    _, org = account(client, "organizer")
    _, cust = account(client, "customer")
    event = create_event(client, org, total_tickets=10)
    hold = client.request(
        "POST", f"/events/{event['id']}/holds", json_body={"quantity": 3, "ttl_seconds": 60}, token=cust
    ).json()
    fake_clock.advance(120)
    # WHEN it is confirmed twice
    first = client.request("POST", f"/holds/{hold['id']}/confirm", token=cust)
    second = client.request("POST", f"/holds/{hold['id']}/confirm", token=cust)
    # THEN one booking, linked to the hold, is returned both times
    assert first.status_code == 201 and second.status_code == 200
    assert first.json()["id"] == second.json()["id"] and first.json()["hold_id"] == hold["id"]
    assert sql.execute("SELECT count(*) AS n FROM bookings WHERE event_id = %s", (event["id"],)).fetchone()["n"] == 1
    assert client.request("GET", f"/holds/{hold['id']}", token=cust).json()["status"] == "confirmed"
    assert client.request("GET", f"/events/{event['id']}").json()["available_tickets"] == 7


def test_a_hold_needs_no_body(client: Client) -> None:
    _, org = account(client, "organizer")
    _, cust = account(client, "customer")
    event = create_event(client, org)
    r = client.request("POST", f"/events/{event['id']}/holds", token=cust)
    assert r.status_code == 201, r.text
    assert r.json()["quantity"] == 1
