"""Creating, changing, reading and listing events."""

from __future__ import annotations

from tests.support.clients import Client
from tests.support.factories import account, create_event


def test_create_with_venue_and_times(client: Client) -> None:
    _, token = account(client, "organizer")
    event = create_event(
        client, token, venue="Arena", start_time="2030-05-01T20:00:00+02:00", end_time="2030-05-01T23:00:00+02:00"
    )
    assert event["venue"] == "Arena"
    assert event["start_time"].startswith("2030-05-01T18:00:00")  # stored and returned in UTC
    assert event["status"] == "active"


def test_update_changes_only_sent_fields(client: Client) -> None:
    _, token = account(client, "organizer")
    event = create_event(client, token, venue="Arena")
    r = client.request("PUT", f"/events/{event['id']}", json_body={"title": "New"}, token=token)
    assert r.status_code == 200
    assert r.json()["title"] == "New" and r.json()["venue"] == "Arena"
    assert r.json()["total_tickets"] == 50


def test_capacity_change_moves_availability_by_the_same_delta(client: Client) -> None:
    _, org = account(client, "organizer")
    _customer, cust = account(client, "customer")
    event = create_event(client, org, total_tickets=10)
    for _ in range(3):
        assert client.request("POST", "/bookings", json_body={"event_id": event["id"]}, token=cust).status_code == 201
    r = client.request("PUT", f"/events/{event['id']}", json_body={"total_tickets": 20}, token=org)
    assert (r.json()["total_tickets"], r.json()["available_tickets"]) == (20, 17)
    r = client.request("PUT", f"/events/{event['id']}", json_body={"total_tickets": 3}, token=org)
    assert (r.json()["total_tickets"], r.json()["available_tickets"]) == (3, 0)


def test_capacity_below_sold_is_refused_with_the_numbers(client: Client) -> None:
    _, org = account(client, "organizer")
    _, cust = account(client, "customer")
    event = create_event(client, org, total_tickets=5)
    client.request("POST", "/bookings", json_body={"event_id": event["id"], "quantity": 3}, token=cust)
    r = client.request("PUT", f"/events/{event['id']}", json_body={"total_tickets": 2}, token=org)
    assert r.status_code == 409
    body = r.json()
    assert body["code"] == "capacity_below_sold"
    assert body["details"] == {"sold": 3, "held": 0, "requested": 2}  # the seed's refusal, unchanged
    assert body["message"] == "Cannot set total_tickets to 2: 3 tickets are sold and 0 are held"
    assert client.request("GET", f"/events/{event['id']}").json()["available_tickets"] == 2


def test_update_rejects_end_before_existing_start(client: Client) -> None:
    _, token = account(client, "organizer")
    event = create_event(client, token, start_time="2030-01-01T10:00:00Z")
    r = client.request("PUT", f"/events/{event['id']}", json_body={"end_time": "2029-01-01T10:00:00Z"}, token=token)
    assert r.status_code == 422
    assert r.json()["code"] == "invalid_time_range"


def test_get_unknown_event_is_404(client: Client) -> None:
    r = client.request("GET", "/events/987654321")
    assert r.status_code == 404
    assert r.json()["code"] == "event_not_found"


def test_list_paginates_newest_first_and_filters_by_organizer(client: Client) -> None:
    organizer, token = account(client, "organizer")
    ids = [create_event(client, token, title=f"E{i}")["id"] for i in range(5)]
    page1 = client.request("GET", "/events", params={"organizer_id": organizer["id"], "limit": 2}).json()
    assert [e["id"] for e in page1["items"]] == ids[::-1][:2]
    assert page1["next_offset"] == 2
    page3 = client.request("GET", "/events", params={"organizer_id": organizer["id"], "limit": 2, "offset": 4}).json()
    assert [e["id"] for e in page3["items"]] == [ids[0]]
    assert page3["next_offset"] is None


def test_list_upcoming_orders_by_start_time_and_skips_past(client: Client) -> None:
    organizer, token = account(client, "organizer")
    late = create_event(client, token, start_time="2031-01-01T00:00:00Z")
    soon = create_event(client, token, start_time="2030-01-01T00:00:00Z")
    create_event(client, token, start_time="2001-01-01T00:00:00Z")
    r = client.request("GET", "/events", params={"organizer_id": organizer["id"], "order": "upcoming"})
    assert [e["id"] for e in r.json()["items"]] == [soon["id"], late["id"]]
