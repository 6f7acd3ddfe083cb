"""The Idempotency-Key dependency (shared/web/idempotent.py): status, replay header, counters."""

from __future__ import annotations

from shared.platform.metrics import REGISTRY
from tests.support.clients import HttpClient
from tests.support.factories import account, create_event


def _count(name: str) -> float:
    return REGISTRY.get_sample_value(f"ticketing_{name}_total") or 0.0


def test_an_existing_resource_answers_200_and_replays_as_200(http_client: HttpClient) -> None:
    # GIVEN a hold confirmed once
    _, org = account(http_client, "organizer")
    _, cust = account(http_client, "customer")
    event = create_event(http_client, org, total_tickets=5)
    hold = http_client.request("POST", f"/events/{event['id']}/holds", json_body={"quantity": 2}, token=cust).json()
    path = f"/holds/{hold['id']}/confirm"
    bookings, replays = _count("bookings"), _count("idempotent_replays")
    first = http_client.request("POST", path, token=cust, headers={"Idempotency-Key": "confirm-1"})

    # WHEN it is confirmed again under a new key, and that request is retried
    again = http_client.request("POST", path, token=cust, headers={"Idempotency-Key": "confirm-2"})
    retried = http_client.request("POST", path, token=cust, headers={"Idempotency-Key": "confirm-2"})

    # THEN the booking is made (and counted) once; the retry replays the stored 200, marked
    assert (first.status_code, again.status_code, retried.status_code) == (201, 200, 200)
    assert first.json() == again.json() == retried.json()
    assert "idempotent-replayed" not in again.headers
    assert retried.headers["idempotent-replayed"] == "true"
    assert (_count("bookings") - bookings, _count("idempotent_replays") - replays) == (1, 1)


def test_a_replayed_refusal_is_marked_and_counted(http_client: HttpClient) -> None:
    _, org = account(http_client, "organizer")
    _, cust = account(http_client, "customer")
    event = create_event(http_client, org, total_tickets=1)
    replays = _count("idempotent_replays")
    ask = {"event_id": event["id"], "quantity": 2}

    first = http_client.request("POST", "/bookings", json_body=ask, token=cust, headers={"Idempotency-Key": "too-many"})
    again = http_client.request("POST", "/bookings", json_body=ask, token=cust, headers={"Idempotency-Key": "too-many"})

    assert first.status_code == again.status_code == 400
    assert first.json()["code"] == again.json()["code"] == "insufficient_tickets"
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert _count("idempotent_replays") - replays == 1
