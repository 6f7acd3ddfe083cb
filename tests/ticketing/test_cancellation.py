"""Cancelling bookings (all or some tickets) and whole events."""

from __future__ import annotations

from typing import Any

from tests.support.catalog import add_type, assert_counts_add_up, ok, refused
from tests.support.clients import Client, LambdaClient
from tests.support.factories import account, create_event
from tests.support.tickets import available_tickets


def test_partial_then_full_cancellation_returns_tickets(client: Client, sql: Any) -> None:
    _, org = account(client, "organizer")
    _, cust = account(client, "customer")
    event = create_event(client, org, total_tickets=5)
    booking = client.request("POST", "/bookings", json_body={"event_id": event["id"], "quantity": 3}, token=cust).json()

    r = client.request("POST", f"/bookings/{booking['id']}/cancel", json_body={"quantity": 1}, token=cust)
    assert r.status_code == 200, r.text
    assert (r.json()["quantity"], r.json()["cancelled_quantity"], r.json()["status"]) == (2, 1, "confirmed")
    assert available_tickets(client, event["id"]) == 3

    r = client.request("POST", f"/bookings/{booking['id']}/cancel", json_body={"quantity": 5}, token=cust)
    assert r.status_code == 409 and r.json()["code"] == "cancel_exceeds_booking"

    for _ in range(2):  # cancelling the rest twice is harmless
        r = client.request("POST", f"/bookings/{booking['id']}/cancel", token=cust)
        assert r.status_code == 200
        assert (r.json()["quantity"], r.json()["cancelled_quantity"], r.json()["status"]) == (0, 3, "cancelled")
        assert available_tickets(client, event["id"]) == 5
    tasks = sql.execute(
        "SELECT payload FROM outbox WHERE task = 'booking_cancelled' AND (payload->>'booking_id')::bigint = %s "
        "ORDER BY id",
        (booking["id"],),
    ).fetchall()
    assert [t["payload"]["quantity"] for t in tasks] == [1, 2]


def test_only_the_owner_cancels(client: Client) -> None:
    _, org = account(client, "organizer")
    _, cust = account(client, "customer")
    _, other = account(client, "customer")
    event = create_event(client, org, total_tickets=5)
    booking = client.request("POST", "/bookings", json_body={"event_id": event["id"]}, token=cust).json()
    r = client.request("POST", f"/bookings/{booking['id']}/cancel", token=other)
    assert r.status_code == 404 and r.json()["code"] == "booking_not_found"
    r = client.request("POST", f"/bookings/{booking['id']}/cancel", token=org)
    assert r.status_code == 403
    assert available_tickets(client, event["id"]) == 4


def test_cancelled_event_cancels_every_booking_and_refuses_new_ones(client: Client, sql: Any) -> None:
    _, org = account(client, "organizer")
    _, intruder = account(client, "organizer")
    customers = [account(client, "customer") for _ in range(3)]
    event = create_event(client, org, total_tickets=10)
    for _, token in customers:
        client.request("POST", "/bookings", json_body={"event_id": event["id"], "quantity": 2}, token=token)
    hold = client.request(
        "POST", f"/events/{event['id']}/holds", json_body={"quantity": 1}, token=customers[0][1]
    ).json()

    assert client.request("POST", f"/events/{event['id']}/cancel", token=intruder).status_code == 403
    for _ in range(2):  # twice is harmless
        r = client.request("POST", f"/events/{event['id']}/cancel", token=org)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "cancelled"
        assert r.json()["available_tickets"] == 9  # everything back but the live hold

    rows = sql.execute("SELECT status, quantity FROM bookings WHERE event_id = %s", (event["id"],)).fetchall()
    assert rows and all(row == {"status": "cancelled", "quantity": 0} for row in rows)
    r = client.request("POST", "/bookings", json_body={"event_id": event["id"]}, token=customers[1][1])
    assert r.status_code == 409 and r.json()["code"] == "event_cancelled"
    r = client.request("POST", f"/holds/{hold['id']}/confirm", token=customers[0][1])
    assert r.status_code == 409 and r.json()["code"] == "event_cancelled"
    r = client.request("PUT", f"/events/{event['id']}", json_body={"title": "x"}, token=org)
    assert r.status_code == 409 and r.json()["code"] == "event_cancelled"
    task = sql.execute(
        "SELECT payload FROM outbox WHERE task = 'event_cancelled' AND (payload->>'event_id')::bigint = %s",
        (event["id"],),
    ).fetchall()
    assert [t["payload"]["bookings_cancelled"] for t in task] == [3]


def _coded_order(v2: LambdaClient, org: str, event: dict[str, Any], **code: Any) -> dict[str, Any]:
    """An order of 2 tickets of the default type with a fresh code unlocking it (``code``: its fields)."""
    t = event["ticket_types"][0]["id"]
    body = {"ticket_type_ids": [t], "max_uses": 1, **code}
    created = ok(v2.request("POST", f"/events/{event['id']}/access-codes", json_body=body, token=org), 201)
    return {"event_id": event["id"], "lines": [{"ticket_type_id": t, "quantity": 2}], "access_code": created["code"]}


def test_a_booking_cancelled_in_full_gives_its_code_use_back(v2: LambdaClient, sql: Any) -> None:
    _, org = account(v2, "organizer")
    _, cust = account(v2, "customer")
    event = create_event(v2, org, total_tickets=10)
    order = _coded_order(v2, org, event)
    booking = ok(v2.request("POST", "/bookings", json_body=order, token=cust), 201)
    ok(v2.request("POST", f"/bookings/{booking['id']}/cancel", json_body={"quantity": 1}, token=cust))
    # a partial cancel keeps the use: the booking still holds tickets bought with the code
    assert ok(v2.request("GET", f"/events/{event['id']}/access-codes", token=org))["items"][0]["uses"] == 1
    refused(v2.request("POST", "/bookings", json_body=order, token=cust), 409, "access_code_exhausted")
    ok(v2.request("POST", f"/bookings/{booking['id']}/cancel", token=cust))  # nothing left: the use comes back
    ok(v2.request("POST", f"/bookings/{booking['id']}/cancel", token=cust))  # twice gives nothing more
    assert ok(v2.request("GET", f"/events/{event['id']}/access-codes", token=org))["items"][0]["uses"] == 0
    ok(v2.request("POST", "/bookings", json_body=order, token=cust), 201)  # max_uses 1: usable again


def test_a_cancelled_event_gives_its_bookings_code_uses_back(v2: LambdaClient, sql: Any) -> None:
    _, org = account(v2, "organizer")
    event = create_event(v2, org, total_tickets=10)
    order = _coded_order(v2, org, event, max_uses=2)
    for _ in range(2):
        _, cust = account(v2, "customer")
        ok(v2.request("POST", "/bookings", json_body=order, token=cust), 201)
    ok(v2.request("POST", f"/events/{event['id']}/cancel", token=org))
    assert ok(v2.request("GET", f"/events/{event['id']}/access-codes", token=org))["items"][0]["uses"] == 0
    rows = sql.execute("SELECT total_minor FROM bookings WHERE event_id = %s", (event["id"],)).fetchall()
    assert [r["total_minor"] for r in rows] == [0, 0]


def test_total_is_what_the_booking_holds_now(v2: LambdaClient, sql: Any) -> None:
    _, org = account(v2, "organizer")
    _, cust = account(v2, "customer")
    event = create_event(v2, org, total_tickets=20)
    vip = add_type(v2, org, event["id"], name="VIP", price_minor=2500)
    std = add_type(v2, org, event["id"], name="Standard", price_minor=1000)
    order = {"event_id": event["id"], "lines": [{"ticket_type_id": vip["id"], "quantity": 2},
                                                {"ticket_type_id": std["id"], "quantity": 3}]}
    booking = ok(v2.request("POST", "/bookings", json_body=order, token=cust), 201)
    assert booking["total_minor"] == 2 * 2500 + 3 * 1000
    vip_line = next(line for line in booking["lines"] if line["ticket_type_id"] == vip["id"])
    r = ok(v2.request("POST", f"/bookings/{booking['id']}/cancel", json_body={"quantity": 1, "line_id": vip_line["id"]},
                      token=cust))
    assert r["total_minor"] == 2500 + 3 * 1000
    assert ok(v2.request("GET", f"/bookings/{booking['id']}", token=cust))["total_minor"] == 2500 + 3 * 1000
    assert ok(v2.request("POST", f"/bookings/{booking['id']}/cancel", token=cust))["total_minor"] == 0
    kept = ok(v2.request("POST", "/bookings", json_body=order, token=cust), 201)
    ok(v2.request("POST", f"/events/{event['id']}/cancel", token=org))
    stored = sql.execute("SELECT total_minor FROM bookings WHERE id = %s", (kept["id"],)).fetchone()
    assert stored["total_minor"] == 0


def test_a_cancelled_event_cancels_orders_awaiting_payment_too(v2: LambdaClient, sql: Any) -> None:
    """An order pending payment holds its tickets (quotas count it as sold): the event's
    cancellation ends it like a confirmed one, and every quota's counts still add up."""
    _, org = account(v2, "organizer")
    _, cust = account(v2, "customer")
    event = create_event(v2, org, total_tickets=10)
    pending = ok(v2.request("POST", "/bookings", json_body={"event_id": event["id"], "quantity": 2}, token=cust), 201)
    sql.execute("UPDATE bookings SET status = 'pending_payment' WHERE id = %s", (pending["id"],))  # no payment step yet
    assert assert_counts_add_up(v2, org, event["id"])["quotas"][0]["sold"] == 2
    ok(v2.request("POST", f"/events/{event['id']}/cancel", token=org))
    row = sql.execute("SELECT status, quantity, total_minor FROM bookings WHERE id = %s", (pending["id"],)).fetchone()
    assert row == {"status": "cancelled", "quantity": 0, "total_minor": 0}
    [quota] = assert_counts_add_up(v2, org, event["id"])["quotas"]
    assert (quota["sold"], quota["free"]) == (0, 10)
