"""Idempotency-Key on booking-creating POSTs: replays, mismatches, races and expiry."""

from __future__ import annotations

from collections import Counter
from typing import Any

from shared.ticketing import idempotency
from tests.support.clients import Client, HttpClient
from tests.support.clock import FakeClock
from tests.support.factories import account, create_event
from tests.support.race import race
from tests.support.tickets import place_hold


def _count(sql: Any, event_id: int) -> int:
    return sql.execute("SELECT count(*) AS n FROM bookings WHERE event_id = %s", (event_id,)).fetchone()["n"]  # type: ignore[no-any-return]


def test_same_key_same_body_replays_the_first_answer(client: Client, sql: Any) -> None:
    customer, cust = account(client, "customer")
    _, org = account(client, "organizer")
    event = create_event(client, org, total_tickets=5)
    headers = {"Idempotency-Key": "order-1"}
    first = client.request(
        "POST",
        f"/book/{customer['id']}",
        json_body={"event_id": event["id"], "quantity": 2},
        token=cust,
        headers=headers,
    )
    again = client.request(
        "POST",
        f"/book/{customer['id']}",
        json_body={"quantity": 2, "event_id": event["id"]},
        token=cust,
        headers=headers,
    )
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers.get("idempotent-replayed") == "true"
    assert "idempotent-replayed" not in first.headers
    assert _count(sql, event["id"]) == 1
    assert client.request("GET", f"/events/{event['id']}").json()["available_tickets"] == 3


def test_same_key_different_body_is_refused(client: Client) -> None:
    _, cust = account(client, "customer")
    _, org = account(client, "organizer")
    event = create_event(client, org, total_tickets=5)
    headers = {"Idempotency-Key": "order-2"}
    assert (
        client.request(
            "POST", "/bookings", json_body={"event_id": event["id"]}, token=cust, headers=headers
        ).status_code
        == 201
    )
    r = client.request(
        "POST", "/bookings", json_body={"event_id": event["id"], "quantity": 2}, token=cust, headers=headers
    )
    assert r.status_code == 422 and r.json()["code"] == "idempotency_key_reused"


def test_a_refusal_is_replayed_too(client: Client) -> None:
    _, cust = account(client, "customer")
    _, org = account(client, "organizer")
    _, other = account(client, "customer")
    event = create_event(client, org, total_tickets=1)
    taken = client.request("POST", "/bookings", json_body={"event_id": event["id"]}, token=other).json()
    headers = {"Idempotency-Key": "order-3"}
    r = client.request("POST", "/bookings", json_body={"event_id": event["id"]}, token=cust, headers=headers)
    assert r.status_code == 400 and r.json()["code"] == "sold_out"
    client.request("POST", f"/bookings/{taken['id']}/cancel", token=other)
    r = client.request("POST", "/bookings", json_body={"event_id": event["id"]}, token=cust, headers=headers)
    assert r.status_code == 400 and r.json()["code"] == "sold_out"
    assert r.headers.get("idempotent-replayed") == "true"
    # A new key is a new request.
    r = client.request(
        "POST", "/bookings", json_body={"event_id": event["id"]}, token=cust, headers={"Idempotency-Key": "order-3b"}
    )
    assert r.status_code == 201


def test_keys_belong_to_one_user_and_expire(client: Client, fake_clock: FakeClock, sql: Any) -> None:
    _, a = account(client, "customer")
    _, b = account(client, "customer")
    _, org = account(client, "organizer")
    event = create_event(client, org, total_tickets=10)
    headers = {"Idempotency-Key": "shared-key"}
    ra = client.request("POST", "/bookings", json_body={"event_id": event["id"]}, token=a, headers=headers)
    rb = client.request("POST", "/bookings", json_body={"event_id": event["id"]}, token=b, headers=headers)
    assert ra.status_code == rb.status_code == 201 and ra.json()["id"] != rb.json()["id"]
    fake_clock.advance(86_400 + 1)
    again = client.request("POST", "/bookings", json_body={"event_id": event["id"]}, token=a, headers=headers)
    assert again.status_code == 201 and again.json()["id"] != ra.json()["id"]
    assert "idempotent-replayed" not in again.headers
    assert _count(sql, event["id"]) == 3


def test_holds_and_confirmations_take_keys(client: Client, sql: Any) -> None:
    _, cust = account(client, "customer")
    _, org = account(client, "organizer")
    event = create_event(client, org, total_tickets=10)
    path = f"/events/{event['id']}/holds"
    h1 = client.request("POST", path, json_body={"quantity": 2}, token=cust, headers={"Idempotency-Key": "h"})
    h2 = client.request("POST", path, json_body={"quantity": 2}, token=cust, headers={"Idempotency-Key": "h"})
    assert h1.status_code == h2.status_code == 201 and h1.json() == h2.json()
    assert client.request("GET", f"/events/{event['id']}").json()["available_tickets"] == 8
    c1 = client.request("POST", f"/holds/{h1.json()['id']}/confirm", token=cust, headers={"Idempotency-Key": "c"})
    c2 = client.request("POST", f"/holds/{h1.json()['id']}/confirm", token=cust, headers={"Idempotency-Key": "c"})
    assert c1.status_code == c2.status_code == 201 and c1.json() == c2.json()
    assert c2.headers.get("idempotent-replayed") == "true"
    assert _count(sql, event["id"]) == 1


def test_confirming_an_expired_hold_takes_a_key(client: Client, fake_clock: FakeClock, sql: Any) -> None:
    # GIVEN a hold that expired while its tickets stayed free (the slow confirmation path)
    _, cust = account(client, "customer")
    event = create_event(client, account(client, "organizer")[1], total_tickets=10)
    hold = place_hold(client, cust, event["id"], 2, ttl_seconds=60).json()
    fake_clock.advance(61)
    # WHEN it is confirmed twice with one key
    path, headers = f"/holds/{hold['id']}/confirm", {"Idempotency-Key": "late"}
    first = client.request("POST", path, token=cust, headers=headers)
    second = client.request("POST", path, token=cust, headers=headers)
    # THEN the second replays the first's booking, made once
    assert first.status_code == second.status_code == 201, first.text
    assert first.json() == second.json() and first.json()["hold_id"] == hold["id"]
    assert second.headers.get("idempotent-replayed") == "true"
    assert _count(sql, event["id"]) == 1


def test_malformed_key_is_refused(client: Client) -> None:
    _, cust = account(client, "customer")
    r = client.request(
        "POST", "/bookings", json_body={"event_id": 1}, token=cust, headers={"Idempotency-Key": "k" * 300}
    )
    assert r.status_code == 422 and r.json()["code"] == "validation_error"


def test_fifty_simultaneous_requests_with_one_key_make_one_booking(http_client: HttpClient, sql: Any) -> None:
    # GIVEN one customer and one key
    customer, cust = account(http_client, "customer")
    _, org = account(http_client, "organizer")
    event = create_event(http_client, org, total_tickets=100)

    def attempt(_: int) -> tuple[int, str, int | None]:
        r = http_client.request(
            "POST",
            f"/book/{customer['id']}",
            json_body={"event_id": event["id"]},
            token=cust,
            headers={"Idempotency-Key": "rush-key"},
        )
        body = r.json()
        return r.status_code, body.get("code", ""), body.get("id")

    # WHEN 50 copies race
    results = race(50, attempt)

    # THEN one booking exists; everyone else got it replayed or was told it is in progress
    assert _count(sql, event["id"]) == 1
    statuses = Counter(s for s, _, _ in results)
    assert set(statuses) <= {201, 409}, statuses
    assert {c for s, c, _ in results if s == 409} <= {"request_in_progress"}
    assert len({i for s, _, i in results if s == 201}) == 1


def test_a_key_used_on_an_already_confirmed_hold_replays(client: Client) -> None:
    _, org = account(client, "organizer")
    _, cust = account(client, "customer")
    event = create_event(client, org, total_tickets=10)
    hold = client.request("POST", f"/events/{event['id']}/holds", json_body={"quantity": 1}, token=cust).json()
    booking = client.request("POST", f"/holds/{hold['id']}/confirm", token=cust).json()
    headers = {"Idempotency-Key": "confirm-again"}
    first = client.request("POST", f"/holds/{hold['id']}/confirm", token=cust, headers=headers)
    again = client.request("POST", f"/holds/{hold['id']}/confirm", token=cust, headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.json()["id"] == again.json()["id"] == booking["id"]
    assert again.headers.get("idempotent-replayed") == "true"


def test_a_completed_key_is_never_freed(sql: Any, client: Client) -> None:
    user, _ = account(client, "customer")
    lease = idempotency._acquire(user["id"], "k-done", "fp")
    assert isinstance(lease, idempotency.KeyLease)
    idempotency._finish(lease, 201, {"id": 1})
    idempotency._finish(lease, None, None)  # a late failure must not reopen it
    row = sql.execute(
        "SELECT state FROM idempotency_keys WHERE user_id = %s AND key = 'k-done'", (user["id"],)
    ).fetchone()
    assert row is not None and row["state"] == "done"


def test_a_malformed_key_is_refused_only_after_the_caller_passed(client: Client) -> None:
    """The caller's refusals (401, 403) come before a malformed key's 422, which lists the body's errors too."""
    _, cust = account(client, "customer")
    _, org = account(client, "organizer")
    bad_key = {"Idempotency-Key": "k" * 300}
    for path in ("/bookings", "/book/1"):
        anonymous = client.request("POST", path, json_body={"event_id": 1}, headers=bad_key)
        assert (anonymous.status_code, anonymous.json()["code"]) == (401, "not_authenticated")
        organizer = client.request("POST", path, json_body={"event_id": 1}, token=org, headers=bad_key)
        assert (organizer.status_code, organizer.json()["code"]) == (403, "customer_only")
    both = client.request("POST", "/bookings", json_body={"event_id": "x"}, token=cust, headers=bad_key)
    assert (both.status_code, both.json()["code"]) == (422, "validation_error")
    assert "Idempotency-Key" in both.text and "event_id" in both.text, both.text
