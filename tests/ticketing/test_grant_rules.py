"""The rules every ticket-granting path obeys: a per-customer limit per event, ended events.

A customer's booked plus actively held tickets of one event stay within the event's limit
(``MAX_TICKETS_PER_CUSTOMER``, 20, or the event's own), atomically under concurrency, on
the one-statement path, the coalesced batch, holds and hold confirmations alike. An event
whose end (or start, without an end) has passed grants nothing.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import pytest

from shared.platform import clock, metrics
from shared.platform.errors import AppError
from shared.platform.settings import get_settings
from shared.ticketing import bookings
from tests.support.clients import Client, HttpClient
from tests.support.clock import FakeClock
from tests.support.factories import account, create_event
from tests.support.race import race
from tests.support.tickets import customer_counter, customer_taken, place_hold


def _book(client: Client, token: str, event_id: int, quantity: int = 1) -> Any:
    return client.request("POST", "/bookings", json_body={"event_id": event_id, "quantity": quantity}, token=token)


# -- the review's reproduction and the limit's accounting ------------------------------------


def test_ten_long_holds_from_one_account_cannot_take_an_event(client: Client, sql: Any) -> None:
    # GIVEN an event of 100 tickets and one account asking for ten 10-ticket holds of 24 h
    _, org = account(client, "organizer")
    hoarder, token = account(client, "customer")
    _, other = account(client, "customer")
    event = create_event(client, org, total_tickets=100)
    before = datetime.now().astimezone()

    answers = [place_hold(client, token, event["id"], 10, ttl_seconds=86_400) for _ in range(10)]

    # THEN it gets the default limit (20) and every further hold is refused with the numbers
    assert [a.status_code for a in answers] == [201, 201] + [400] * 8, [a.text for a in answers]
    refusal = answers[2].json()
    assert refusal["code"] == "customer_limit_exceeded"
    assert refusal["details"] == {"limit": 20, "booked": 0, "held": 20, "requested": 10}
    assert _book(client, token, event["id"]).json()["code"] == "customer_limit_exceeded"
    # AND a hold lasts at most HOLD_TTL_MAX_SECONDS (1 h), as its expires_at says
    expires = datetime.fromisoformat(answers[0].json()["expires_at"])
    assert expires <= before + timedelta(seconds=3600 + 60)
    # AND everyone else can still buy
    assert client.request("GET", f"/events/{event['id']}").json()["available_tickets"] == 80
    assert _book(client, other, event["id"], 10).status_code == 201
    assert customer_counter(sql, event["id"], hoarder["id"]) == customer_taken(sql, event["id"], hoarder["id"]) == 20


def test_bookings_and_holds_share_the_limit_and_giving_back_frees_it(http_client: HttpClient, sql: Any) -> None:
    _, org = account(http_client, "organizer")
    user, token = account(http_client, "customer")
    event = create_event(http_client, org, total_tickets=100, max_tickets_per_customer=6)
    assert event["max_tickets_per_customer"] == 6
    booking = _book(http_client, token, event["id"], 4).json()
    hold = place_hold(http_client, token, event["id"], 2).json()

    r = _book(http_client, token, event["id"])
    assert r.status_code == 400 and r.json()["details"] == {"limit": 6, "booked": 4, "held": 2, "requested": 1}
    r = place_hold(http_client, token, event["id"])
    assert r.status_code == 400 and r.json()["code"] == "customer_limit_exceeded"

    # a partial cancellation, a release, a confirmation: the counter follows each
    http_client.request("POST", f"/bookings/{booking['id']}/cancel", json_body={"quantity": 1}, token=token)
    assert _book(http_client, token, event["id"]).status_code == 201
    http_client.request("DELETE", f"/holds/{hold['id']}", token=token)
    hold = place_hold(http_client, token, event["id"], 2).json()
    assert http_client.request("POST", f"/holds/{hold['id']}/confirm", token=token).status_code == 201
    assert customer_counter(sql, event["id"], user["id"]) == customer_taken(sql, event["id"], user["id"]) == 6
    assert _book(http_client, token, event["id"]).status_code == 400
    http_client.request("POST", f"/bookings/{booking['id']}/cancel", token=token)
    assert customer_counter(sql, event["id"], user["id"]) == customer_taken(sql, event["id"], user["id"]) == 3
    assert _book(http_client, token, event["id"], 3).status_code == 201


def test_lowering_the_limit_keeps_what_customers_have_and_refuses_more(http_client: HttpClient, sql: Any) -> None:
    _, org = account(http_client, "organizer")
    user, token = account(http_client, "customer")
    event = create_event(http_client, org, total_tickets=100, max_tickets_per_customer=10)
    booking = _book(http_client, token, event["id"], 6).json()
    hold = place_hold(http_client, token, event["id"], 2).json()

    r = http_client.request("PUT", f"/events/{event['id']}", json_body={"max_tickets_per_customer": 3}, token=org)
    assert r.status_code == 200 and r.json()["max_tickets_per_customer"] == 3

    # what they have stays (the live hold still confirms: its tickets were counted already)...
    assert http_client.request("GET", f"/bookings/{booking['id']}", token=token).json()["quantity"] == 6
    assert http_client.request("POST", f"/holds/{hold['id']}/confirm", token=token).status_code == 201
    # ...and nothing more until they are back under the new limit
    r = _book(http_client, token, event["id"])
    assert r.status_code == 400 and r.json()["details"] == {"limit": 3, "booked": 8, "held": 0, "requested": 1}
    http_client.request("POST", f"/bookings/{booking['id']}/cancel", json_body={"quantity": 6}, token=token)
    assert _book(http_client, token, event["id"]).status_code == 201
    assert _book(http_client, token, event["id"]).status_code == 400
    # null goes back to the server default
    r = http_client.request("PUT", f"/events/{event['id']}", json_body={"max_tickets_per_customer": None}, token=org)
    assert r.status_code == 200 and r.json()["max_tickets_per_customer"] is None
    assert _book(http_client, token, event["id"], 10).status_code == 201
    assert customer_counter(sql, event["id"], user["id"]) == customer_taken(sql, event["id"], user["id"]) == 13


def test_the_default_limit_never_forbids_what_one_booking_may_take(http_client: HttpClient) -> None:
    _, org = account(http_client, "organizer")
    _, token = account(http_client, "customer")
    event = create_event(http_client, org, total_tickets=100, max_tickets_per_booking=30)
    assert _book(http_client, token, event["id"], 30).status_code == 201
    r = _book(http_client, token, event["id"])
    assert r.status_code == 400 and r.json()["details"]["limit"] == 30


def test_the_default_limit_never_forbids_what_the_servers_per_booking_maximum_allows(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deployment that raises MAX_TICKETS_PER_BOOKING above MAX_TICKETS_PER_CUSTOMER."""
    monkeypatch.setenv("MAX_TICKETS_PER_BOOKING", "30")
    monkeypatch.setenv("MAX_TICKETS_PER_CUSTOMER", "20")
    get_settings.cache_clear()
    try:
        _, org = account(client, "organizer")
        _, token = account(client, "customer")
        event = create_event(client, org, total_tickets=100)  # no limits of its own
        assert _book(client, token, event["id"], 25).status_code == 201
        r = _book(client, token, event["id"], 6)
        assert r.status_code == 400 and r.json()["details"]["limit"] == 30, r.text
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


def test_limits_are_validated(http_client: HttpClient) -> None:
    _, org = account(http_client, "organizer")
    for field, value in [("max_tickets_per_customer", 0), ("max_tickets_per_customer", "5"),
                         ("max_hold_seconds", 0), ("max_hold_seconds", 86_401)]:
        r = http_client.request("POST", "/events", json_body={"title": "x", "total_tickets": 5, field: value},
                                token=org)
        assert r.status_code == 422 and r.json()["code"] == "validation_error", (field, value, r.text)


def test_expired_holds_stop_counting_against_the_limit(http_client: HttpClient, sql: Any,
                                                       fake_clock: FakeClock) -> None:
    # GIVEN a customer at the limit through a short hold
    _, org = account(http_client, "organizer")
    user, token = account(http_client, "customer")
    event = create_event(http_client, org, total_tickets=100, max_tickets_per_customer=5)
    hold = place_hold(http_client, token, event["id"], 5, ttl_seconds=60).json()
    assert _book(http_client, token, event["id"]).status_code == 400

    # WHEN the hold runs out (nothing tidies)
    fake_clock.advance(61)

    # THEN its tickets no longer count: the grant that hits the limit reclaims it
    assert _book(http_client, token, event["id"], 4).status_code == 201
    assert customer_counter(sql, event["id"], user["id"]) == 4
    # AND the expired hold cannot come back past the limit, though its tickets are free
    r = http_client.request("POST", f"/holds/{hold['id']}/confirm", token=token)
    assert r.status_code == 400 and r.json()["code"] == "customer_limit_exceeded"
    assert r.json()["details"] == {"limit": 5, "booked": 4, "held": 0, "requested": 5}
    assert customer_counter(sql, event["id"], user["id"]) == customer_taken(sql, event["id"], user["id"]) == 4


# -- concurrency: one customer racing itself never passes the limit ------------------------


def _one_customer_races_itself(client: HttpClient, sql: Any) -> dict[str, Any]:
    """60 bookings and holds of one ticket from one customer, 30 bookings from others, at once."""
    limit = 7
    _, org = account(client, "organizer")
    hoarder, token = account(client, "customer")
    others = [account(client, "customer") for _ in range(30)]
    event = create_event(client, org, total_tickets=500, max_tickets_per_customer=limit)

    def attempt(i: int) -> tuple[str, int, dict[str, Any]]:
        if i < 60:
            r = place_hold(client, token, event["id"]) if i % 2 else _book(client, token, event["id"])
            return "hoarder", r.status_code, r.json()
        r = _book(client, others[i - 60][1], event["id"])
        return "other", r.status_code, r.json()

    results = race(90, attempt)

    mine = Counter(status for who, status, _ in results if who == "hoarder")
    refusals = {body["code"] for who, status, body in results if who == "hoarder" and status != 201}
    assert mine == Counter({201: limit, 400: 60 - limit}), (mine, refusals)
    assert refusals == {"customer_limit_exceeded"}
    assert all(status == 201 for who, status, _ in results if who == "other")
    assert customer_counter(sql, event["id"], hoarder["id"]) == customer_taken(sql, event["id"], hoarder["id"]) == limit
    return event


def test_one_customer_racing_through_the_coalesced_server_never_passes_the_limit(
    http_client: HttpClient, sql: Any
) -> None:
    before = metrics.REGISTRY.get_sample_value("ticketing_booking_batch_size_count") or 0.0
    _one_customer_races_itself(http_client, sql)
    assert (metrics.REGISTRY.get_sample_value("ticketing_booking_batch_size_count") or 0.0) > before


def test_one_customer_racing_through_lambda_never_passes_the_limit(
    emulated_client: HttpClient, sql: Any
) -> None:
    _one_customer_races_itself(emulated_client, sql)  # every request a Lambda event: one statement each


def test_a_batch_grants_one_customer_only_up_to_the_limit(http_client: HttpClient, sql: Any) -> None:
    # GIVEN one batch where one customer asks for 3 + 3 + 3 against a limit of 7
    _, org = account(http_client, "organizer")
    hoarder, _ = account(http_client, "customer")
    other, _ = account(http_client, "customer")
    event = create_event(http_client, org, total_tickets=100, max_tickets_per_customer=7)
    items = [bookings.BatchItem(user_id=u["id"], quantity=3) for u in (hoarder, hoarder, other, hoarder, other)]

    rows = bookings.book_batch(event_id=event["id"], items=items, default_max=10)

    # THEN the third of the hoarder's is left to the one-request path; the others are booked
    assert [row["user_id"] if row else None for row in rows] == [hoarder["id"], hoarder["id"], other["id"], None,
                                                                 other["id"]]
    assert customer_counter(sql, event["id"], hoarder["id"]) == 6
    assert customer_counter(sql, event["id"], other["id"]) == 6
    try:
        bookings.book(user_id=hoarder["id"], event_id=event["id"], quantity=3, default_max=10)
        raise AssertionError("booked past the limit")
    except AppError as err:
        assert err.code == "customer_limit_exceeded" and err.details["booked"] == 6


# -- ended events ------------------------------------------------------------------------------


def test_an_ended_event_grants_nothing(client: Client, fake_clock: FakeClock) -> None:
    # GIVEN an event that starts in an hour and ends in two, and a hold made before
    _, org = account(client, "organizer")
    _, token = account(client, "customer")
    start = clock.now() + timedelta(hours=1)
    event = create_event(client, org, total_tickets=10, start_time=start.isoformat(),
                         end_time=(start + timedelta(hours=1)).isoformat())
    hold = place_hold(client, token, event["id"], 2, ttl_seconds=3600).json()
    assert _book(client, token, event["id"]).status_code == 201
    fake_clock.advance(90 * 60)
    assert _book(client, token, event["id"]).status_code == 201  # started, not ended: late arrivals buy

    # WHEN its end passes
    fake_clock.advance(31 * 60)

    # THEN bookings, holds and confirmations are refused, saying so
    for r in (_book(client, token, event["id"]), place_hold(client, token, event["id"]),
              client.request("POST", f"/holds/{hold['id']}/confirm", token=token)):
        assert r.status_code == 409 and r.json()["code"] == "event_ended", r.text
        ended_at = r.json()["details"]["ended_at"]
        assert ended_at.endswith("Z") and datetime.fromisoformat(ended_at) == start + timedelta(hours=1)


def test_an_event_without_an_end_ends_at_its_start_and_holds_never_outlive_it(
    http_client: HttpClient, fake_clock: FakeClock
) -> None:
    _, org = account(http_client, "organizer")
    _, token = account(http_client, "customer")
    start = (clock.now() + timedelta(minutes=5)).replace(microsecond=0)
    event = create_event(http_client, org, total_tickets=10, start_time=start.isoformat())
    hold = place_hold(http_client, token, event["id"]).json()  # default lifetime 10 min
    assert datetime.fromisoformat(hold["expires_at"]) == start
    fake_clock.advance(5 * 60 + 1)
    r = _book(http_client, token, event["id"])
    assert r.status_code == 409 and r.json()["code"] == "event_ended"


def test_an_ended_event_leaves_a_batch_to_the_one_request_path(http_client: HttpClient,
                                                               fake_clock: FakeClock) -> None:
    _, org = account(http_client, "organizer")
    user, _ = account(http_client, "customer")
    start = clock.now() + timedelta(minutes=1)
    event = create_event(http_client, org, total_tickets=10, start_time=start.isoformat())
    fake_clock.advance(61)
    items = [bookings.BatchItem(user_id=user["id"], quantity=1) for _ in range(3)]
    assert bookings.book_batch(event_id=event["id"], items=items, default_max=10) == [None] * 3


def test_an_events_hold_lifetime_is_capped_and_shown(http_client: HttpClient) -> None:
    _, org = account(http_client, "organizer")
    _, token = account(http_client, "customer")
    event = create_event(http_client, org, total_tickets=10, max_hold_seconds=120)
    assert event["max_hold_seconds"] == 120
    before = clock.now()
    for body in ({"ttl_seconds": 3600}, {}):
        hold = place_hold(http_client, token, event["id"], **body).json()
        lifetime = datetime.fromisoformat(hold["expires_at"]) - before
        assert timedelta(seconds=119) <= lifetime <= timedelta(seconds=125), hold
    short = place_hold(http_client, token, event["id"], ttl_seconds=30).json()
    assert datetime.fromisoformat(short["expires_at"]) - before <= timedelta(seconds=35)


def test_moving_an_events_end_earlier_ends_its_live_holds_then(http_client: HttpClient, sql: Any) -> None:
    _, org = account(http_client, "organizer")
    _, token = account(http_client, "customer")
    start = (clock.now() + timedelta(hours=2)).replace(microsecond=0)
    event = create_event(http_client, org, total_tickets=10, start_time=start.isoformat())
    hold = place_hold(http_client, token, event["id"], ttl_seconds=3600).json()
    sooner = (clock.now() + timedelta(minutes=10)).replace(microsecond=0)
    r = http_client.request("PUT", f"/events/{event['id']}", json_body={"start_time": sooner.isoformat()}, token=org)
    assert r.status_code == 200, r.text
    moved = http_client.request("GET", f"/holds/{hold['id']}", token=token).json()
    assert datetime.fromisoformat(moved["expires_at"]) == sooner
