"""Regressions found in review: expired-hold confirmations and idempotent answers."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from shared.platform.errors import ServiceUnavailable
from shared.ticketing import holds, idempotency, inventory
from tests.conftest import FakeClock
from tests.support.clients import Client
from tests.support.factories import account, create_event


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


def _token_for(user_id: int, role: str) -> str:
    from shared.accounts.tokens import issue_token

    return issue_token(user_id, role)[0]


def test_a_valid_token_for_a_user_that_is_gone_is_401_everywhere(client: Client) -> None:
    _, org = account(client, "organizer")
    event = create_event(client, org)
    ghost_org, ghost_cust = _token_for(987_654_321, "organizer"), _token_for(987_654_322, "customer")
    for method, path, body, token in [
        ("POST", "/events", {"title": "x", "total_tickets": 1}, ghost_org),
        ("POST", f"/events/{event['id']}/holds", {"quantity": 1}, ghost_cust),
        ("POST", "/bookings", {"event_id": event["id"]}, ghost_cust),
    ]:
        r = client.request(method, path, json_body=body, token=token)
        assert r.status_code == 401 and r.json()["code"] == "unknown_user", (path, r.text)
    assert client.request("GET", f"/events/{event['id']}").json()["available_tickets"] == 50


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


def test_a_hold_needs_no_body(client: Client) -> None:
    _, org = account(client, "organizer")
    _, cust = account(client, "customer")
    event = create_event(client, org)
    r = client.request("POST", f"/events/{event['id']}/holds", token=cust)
    assert r.status_code == 201, r.text
    assert r.json()["quantity"] == 1


def test_a_trailing_slash_is_a_json_404_not_a_redirect(http_client: Any) -> None:
    r = http_client.request("GET", "/events/")
    assert r.status_code == 404 and r.json()["code"] == "not_found"
