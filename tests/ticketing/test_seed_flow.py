"""The seed README's example flow, with the token step added, through every transport."""

from __future__ import annotations

from shared.notifications.contracts import BookingConfirmation, EventUpdate
from tests.support.clients import Client
from tests.support.factories import login, unique_email


def test_seed_example_flow(client: Client, sql) -> None:  # type: ignore[no-untyped-def]
    # GIVEN an organizer and a customer created with the seed's bodies
    org_email, cust_email = unique_email("organizer"), unique_email("customer")
    r = client.request("POST", "/users", json_body={"email": org_email, "password": "123", "role": "organizer"})
    assert r.status_code == 201, r.text
    organizer = r.json()
    assert "password" not in organizer and "password_hash" not in organizer
    r = client.request("POST", "/users", json_body={"email": cust_email, "password": "123", "role": "customer"})
    assert r.status_code == 201
    customer = r.json()
    org_token, cust_token = login(client, org_email, "123"), login(client, cust_email, "123")

    # WHEN the organizer creates an event on the seed's route
    r = client.request(
        "POST", f"/events/{organizer['id']}", json_body={"title": "Music Concert", "total_tickets": 50}, token=org_token
    )
    assert r.status_code == 201, r.text
    event = r.json()
    assert event["title"] == "Music Concert"
    assert event["total_tickets"] == event["available_tickets"] == 50
    assert event["organizer_id"] == organizer["id"]

    # AND the customer books on the seed's route
    r = client.request("POST", f"/book/{customer['id']}", json_body={"event_id": event["id"]}, token=cust_token)
    assert r.status_code == 201, r.text
    booking = r.json()
    assert booking["event_id"] == event["id"] and booking["user_id"] == customer["id"]
    assert booking["quantity"] == 1 and booking["status"] == "confirmed"
    assert r.headers["content-type"].startswith("application/json")

    # AND the organizer updates the event
    r = client.request("PUT", f"/events/{event['id']}", json_body={"title": "Music Concert (moved)"}, token=org_token)
    assert r.status_code == 200, r.text
    assert r.json()["title"] == "Music Concert (moved)"

    # THEN availability is exact and both notifications are recorded in the outbox
    r = client.request("GET", f"/events/{event['id']}")
    assert r.json()["available_tickets"] == 49
    tasks = sql.execute(
        "SELECT task, payload FROM outbox WHERE (payload->>'event_id')::bigint = %s ORDER BY id",
        (event["id"],),
    ).fetchall()
    assert [t["task"] for t in tasks] == [BookingConfirmation.published_as, EventUpdate.published_as]
    assert tasks[0]["payload"]["booking_id"] == booking["id"]
    assert tasks[1]["payload"]["changes"]["title"]["new"] == "Music Concert (moved)"
