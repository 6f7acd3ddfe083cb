"""Booking tickets and reading bookings back."""

from __future__ import annotations

from tests.support.clients import Client
from tests.support.factories import account, create_event


def test_book_decrements_and_records(client: Client, sql) -> None:  # type: ignore[no-untyped-def]
    _, org = account(client, "organizer")
    customer, cust = account(client, "customer")
    event = create_event(client, org, total_tickets=5)
    r = client.request("POST", "/bookings", json_body={"event_id": event["id"], "quantity": 2}, token=cust)
    assert r.status_code == 201
    booking = r.json()
    assert booking["quantity"] == 2 and booking["user_id"] == customer["id"]
    assert client.request("GET", f"/events/{event['id']}").json()["available_tickets"] == 3
    row = sql.execute(
        "SELECT event_id, user_id, quantity, status FROM bookings WHERE id = %s", (booking["id"],)
    ).fetchone()
    assert row == {"event_id": event["id"], "user_id": customer["id"], "quantity": 2, "status": "confirmed"}


def test_sold_out_is_400_with_code(client: Client) -> None:
    _, org = account(client, "organizer")
    _, cust = account(client, "customer")
    event = create_event(client, org, total_tickets=1)
    assert client.request("POST", "/bookings", json_body={"event_id": event["id"]}, token=cust).status_code == 201
    r = client.request("POST", "/bookings", json_body={"event_id": event["id"]}, token=cust)
    assert r.status_code == 400
    assert r.json()["code"] == "sold_out"


def test_not_enough_left_says_how_many_remain(client: Client) -> None:
    _, org = account(client, "organizer")
    _, cust = account(client, "customer")
    event = create_event(client, org, total_tickets=3)
    r = client.request("POST", "/bookings", json_body={"event_id": event["id"], "quantity": 5}, token=cust)
    assert r.status_code == 400
    assert r.json()["code"] == "insufficient_tickets"
    assert r.json()["details"]["available"] == 3
    assert client.request("GET", f"/events/{event['id']}").json()["available_tickets"] == 3


def test_quantity_above_the_per_booking_maximum_is_refused(client: Client) -> None:
    _, org = account(client, "organizer")
    _, cust = account(client, "customer")
    event = create_event(client, org, total_tickets=100)
    r = client.request("POST", "/bookings", json_body={"event_id": event["id"], "quantity": 11}, token=cust)
    assert r.status_code == 400
    assert r.json()["code"] == "quantity_too_large"


def test_unknown_event_is_404(client: Client) -> None:
    _, cust = account(client, "customer")
    r = client.request("POST", "/bookings", json_body={"event_id": 99999999}, token=cust)
    assert r.status_code == 404
    assert r.json()["code"] == "event_not_found"


def test_my_bookings_and_one_booking(client: Client) -> None:
    _, org = account(client, "organizer")
    _, cust = account(client, "customer")
    _, other = account(client, "customer")
    event = create_event(client, org)
    made = [
        client.request("POST", "/bookings", json_body={"event_id": event["id"]}, token=cust).json() for _ in range(3)
    ]
    page = client.request("GET", "/bookings", token=cust, params={"limit": 2}).json()
    assert [b["id"] for b in page["items"]] == [made[2]["id"], made[1]["id"]]
    assert page["next_offset"] == 2
    assert client.request("GET", f"/bookings/{made[0]['id']}", token=cust).json() == made[0]
    # The event's organizer may look; another customer may not even learn it exists.
    assert client.request("GET", f"/bookings/{made[0]['id']}", token=org).status_code == 200
    r = client.request("GET", f"/bookings/{made[0]['id']}", token=other)
    assert r.status_code == 404 and r.json()["code"] == "booking_not_found"
    assert client.request("GET", "/bookings", token=other).json()["items"] == []


def test_an_organizer_lists_the_bookings_of_their_event(client: Client) -> None:
    _, org = account(client, "organizer")
    _, other_org = account(client, "organizer")
    _, cust = account(client, "customer")
    event = create_event(client, org)
    made = [
        client.request("POST", "/bookings", json_body={"event_id": event["id"]}, token=cust).json() for _ in range(3)
    ]
    page = client.request("GET", f"/events/{event['id']}/bookings", token=org, params={"limit": 2}).json()
    assert [b["id"] for b in page["items"]] == [made[2]["id"], made[1]["id"]] and page["next_offset"] == 2
    r = client.request("GET", f"/events/{event['id']}/bookings", token=other_org)
    assert r.status_code == 403 and r.json()["code"] == "not_event_owner"
    r = client.request("GET", f"/events/{event['id']}/bookings", token=cust)
    assert r.status_code == 403 and r.json()["code"] == "organizer_only"
    r = client.request("GET", "/events/99999999/bookings", token=org)
    assert r.status_code == 404 and r.json()["code"] == "event_not_found"
