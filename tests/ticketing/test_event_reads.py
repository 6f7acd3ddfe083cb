"""GET /events/{id}: the event's currency and the ticket types on offer; hidden ones with a code."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from tests.support.catalog import add_quota, add_type, ok, refused
from tests.support.clients import Client, LambdaClient
from tests.support.clock import FakeClock
from tests.support.factories import account, create_event
from tests.support.settings_env import restore_env, set_env


def _code(client: Client, token: str, event_id: int, type_ids: list[int], **extra: Any) -> str:
    body = {"ticket_type_ids": type_ids, "max_uses": 10, **extra}
    return ok(client.request("POST", f"/events/{event_id}/access-codes", json_body=body, token=token), 201)["code"]  # type: ignore[no-any-return]


def _names(client: Client, event_id: int, **params: Any) -> list[str]:
    return [t["name"] for t in ok(client.request("GET", f"/events/{event_id}", params=params))["ticket_types"]]


def test_every_transport_shows_types_price_limits_and_availability(client: Client) -> None:
    _, org = account(client, "organizer")
    event = create_event(client, org, total_tickets=50, currency="USD")
    vip = add_type(client, org, event["id"], name="VIP", price_minor=12000, description="Balcony",
                   min_per_order=2, max_per_order=4, max_per_customer=6, sales_end="2999-01-01T00:00:00Z")
    add_quota(client, org, event["id"], 8, [vip["id"]])
    got = ok(client.request("GET", f"/events/{event['id']}"))
    assert got["currency"] == "USD" and got["available_tickets"] == 50
    shown = got["ticket_types"][1]
    assert shown == {
        "id": vip["id"], "name": "VIP", "description": "Balcony", "price_minor": 12000, "currency": "USD",
        "sales_start": None, "sales_end": shown["sales_end"], "min_per_order": 2, "max_per_order": 4,
        "max_per_customer": 6, "available": 8, "on_sale": True,
    }
    assert shown["sales_end"].startswith("2999-01-01")


def test_listings_leave_types_out(v2: LambdaClient) -> None:
    organizer, org = account(v2, "organizer")
    create_event(v2, org)
    page = ok(v2.request("GET", "/events", params={"organizer_id": organizer["id"]}))
    assert page["items"][0]["ticket_types"] is None and page["items"][0]["currency"] == "EUR"


def test_hidden_types_only_with_a_valid_code(v2: LambdaClient, fake_clock: FakeClock) -> None:
    _, org = account(v2, "organizer")
    event = create_event(v2, org)
    vip = add_type(v2, org, event["id"], name="VIP", hidden=True, sales_start="2999-01-01T00:00:00Z")
    add_type(v2, org, event["id"], name="Crew", hidden=True)
    code = _code(v2, org, event["id"], [vip["id"]], valid_until="2100-01-01T00:00:00Z")
    assert _names(v2, event["id"]) == ["General admission"]
    unlocked = ok(v2.request("GET", f"/events/{event['id']}", params={"access_code": code.lower()}))["ticket_types"]
    assert [(t["name"], t["on_sale"]) for t in unlocked] == [("General admission", True), ("VIP", True)]  # presale
    refused(v2.request("GET", f"/events/{event['id']}", params={"access_code": "WRONGCODE1"}), 400,
            "access_code_invalid")
    other = create_event(v2, org)
    refused(v2.request("GET", f"/events/{other['id']}", params={"access_code": code}), 400, "access_code_invalid")
    fake_clock.advance(200 * 365 * 86400)  # past valid_until
    refused(v2.request("GET", f"/events/{event['id']}", params={"access_code": code}), 400, "access_code_invalid")


def test_an_inactive_code_unlocks_nothing(v2: LambdaClient) -> None:
    _, org = account(v2, "organizer")
    event = create_event(v2, org)
    vip = add_type(v2, org, event["id"], name="VIP", hidden=True)
    body = {"ticket_type_ids": [vip["id"]], "max_uses": 1}
    created = ok(v2.request("POST", f"/events/{event['id']}/access-codes", json_body=body, token=org), 201)
    assert _names(v2, event["id"], access_code=created["code"]) == ["General admission", "VIP"]
    ok(v2.request("PATCH", f"/events/{event['id']}/access-codes/{created['id']}", json_body={"active": False},
                  token=org))
    refused(v2.request("GET", f"/events/{event['id']}", params={"access_code": created["code"]}), 400,
            "access_code_invalid")


def test_a_code_not_yet_valid_is_invalid(v2: LambdaClient) -> None:
    _, org = account(v2, "organizer")
    event = create_event(v2, org)
    code = _code(v2, org, event["id"], [event["ticket_types"][0]["id"]], valid_from="2999-01-01T00:00:00Z")
    refused(v2.request("GET", f"/events/{event['id']}", params={"access_code": code}), 400, "access_code_invalid")
    refused(v2.request("GET", f"/events/{event['id']}", params={"access_code": "short"}), 422, "validation_error")


def test_guessing_codes_is_rate_limited_per_address(v2: LambdaClient) -> None:
    _, org = account(v2, "organizer")
    event = create_event(v2, org)
    code = _code(v2, org, event["id"], [event["ticket_types"][0]["id"]])
    saved = set_env({"ACCESS_CODE_ATTEMPTS": "3", "RATE_LIMIT_KEY_PREFIX": f"rl-test-{uuid.uuid4().hex[:8]}"})
    try:
        for _ in range(5):  # valid codes are not guesses
            ok(v2.request("GET", f"/events/{event['id']}", params={"access_code": code}))
        for i in range(3):
            refused(v2.request("GET", f"/events/{event['id']}", params={"access_code": f"GUESS-{i:04d}"}), 400,
                    "access_code_invalid")
        body = refused(v2.request("GET", f"/events/{event['id']}", params={"access_code": "GUESS-9999"}), 429,
                       "rate_limited")
        assert body["details"]["limit"] == "access_code_per_ip"
        ok(v2.request("GET", f"/events/{event['id']}"))  # reading without a code is never limited
    finally:
        restore_env(saved)


def test_on_sale_is_what_a_booking_would_be_told(v2: LambdaClient, fake_clock: FakeClock) -> None:
    """A type's sales_end later than the event's sales close: after that close the type is
    not on sale (a booking says event_ended), whatever its own window says."""
    _, org = account(v2, "organizer")
    _, cust = account(v2, "customer")
    now = fake_clock.now()
    event = create_event(v2, org, start_time=(now + timedelta(days=1)).isoformat())
    late = add_type(v2, org, event["id"], name="Late", sales_end=(now + timedelta(days=2)).isoformat())

    def on_sale() -> dict[str, bool]:
        return {t["name"]: t["on_sale"] for t in ok(v2.request("GET", f"/events/{event['id']}"))["ticket_types"]}

    assert on_sale() == {"General admission": True, "Late": True}
    fake_clock.advance(36 * 3600)  # the event started: its sales closed, the type's window is still open
    assert on_sale() == {"General admission": False, "Late": False}
    order = {"event_id": event["id"], "lines": [{"ticket_type_id": late["id"], "quantity": 1}]}
    refused(v2.request("POST", "/bookings", json_body=order, token=cust), 409, "event_ended")
