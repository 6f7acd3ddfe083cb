"""Ticket types: create, change (PATCH), reorder, deactivate, delete, and who may."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from tests.support.catalog import add_quota, add_type, ok, refused, types_of
from tests.support.clients import LambdaClient
from tests.support.factories import account, create_event


def _path(event: dict[str, Any], type_id: int | None = None) -> str:
    return f"/events/{event['id']}/ticket-types" + (f"/{type_id}" if type_id else "")


def _order(event: dict[str, Any]) -> str:
    return f"/events/{event['id']}/ticket-type-order"


def test_create_joins_the_event_quota_and_the_given_quotas(v2: LambdaClient) -> None:
    _, org = account(v2, "organizer")
    event = create_event(v2, org, total_tickets=100, currency="SEK")
    assert event["currency"] == "SEK"
    [default] = event["ticket_types"]
    assert (default["name"], default["price_minor"], default["available"], default["on_sale"]) == (
        "General admission", 0, 100, True)
    vip_area = add_quota(v2, org, event["id"], 10, [])
    vip = add_type(v2, org, event["id"], name="VIP", price_minor=9900, max_per_order=4, description="Front rows",
                   quota_ids=[vip_area["id"]])
    assert vip["currency"] == "SEK" and vip["price_minor"] == 9900 and vip["max_per_order"] == 4
    assert vip["position"] == 1 and vip["active"] and not vip["hidden"] and not vip["is_default"]
    event_quota = next(q for q in ok(v2.request("GET", f"/events/{event['id']}/quotas", token=org))["items"]
                       if q["is_event"])
    assert vip["quota_ids"] == [event_quota["id"], vip_area["id"]]
    assert (vip["sold"], vip["held"], vip["available"]) == (0, 0, 10)  # the least room over its quotas
    shown = ok(v2.request("GET", f"/events/{event['id']}"))["ticket_types"]
    assert [(t["name"], t["available"]) for t in shown] == [("General admission", 100), ("VIP", 10)]


def test_currency_must_be_three_capital_letters(v2: LambdaClient) -> None:
    _, org = account(v2, "organizer")
    r = v2.request("POST", "/events", json_body={"title": "x", "total_tickets": 1, "currency": "eur"}, token=org)
    refused(r, 422, "validation_error")
    assert create_event(v2, org)["currency"] == "EUR"


def test_validation_answers_4xx_codes(v2: LambdaClient) -> None:
    _, org = account(v2, "organizer")
    event = create_event(v2, org)
    for body in ({"name": ""}, {"name": "x" * 201}, {"name": "a", "price_minor": -1},
                 {"name": "a", "price_minor": 1.5}, {"name": "a", "min_per_order": 0}, {"name": "a", "quota_ids": [0]}):
        refused(v2.request("POST", _path(event), json_body=body, token=org), 422, "validation_error")
    window = {"name": "a", "sales_start": "2030-01-02T00:00:00Z", "sales_end": "2030-01-01T00:00:00Z"}
    refused(v2.request("POST", _path(event), json_body=window, token=org), 422, "invalid_sales_window")
    bounds = {"name": "a", "min_per_order": 5, "max_per_order": 2}
    body = refused(v2.request("POST", _path(event), json_body=bounds, token=org), 422, "invalid_order_bounds")
    assert body["details"] == {"min_per_order": 5, "max_per_order": 2}
    refused(v2.request("POST", _path(event), json_body={"name": "a", "quota_ids": [987654321]}, token=org),
            404, "quota_not_found")


def test_patch_changes_only_sent_fields_and_checks_the_merged_values(v2: LambdaClient, sql: psycopg.Connection) -> None:
    _, org = account(v2, "organizer")
    event = create_event(v2, org)
    t = add_type(v2, org, event["id"], name="Early", price_minor=1000, sales_start="2030-01-01T00:00:00Z",
                 min_per_order=2)
    gate = sql.execute("SELECT gate_seq FROM events WHERE id = %s", (event["id"],)).fetchone()
    r = ok(v2.request("PATCH", _path(event, t["id"]), json_body={"price_minor": 1500, "max_per_customer": 6},
                      token=org))
    assert (r["name"], r["price_minor"], r["max_per_customer"], r["min_per_order"]) == ("Early", 1500, 6, 2)
    assert r["sales_start"].startswith("2030-01-01")
    after = sql.execute("SELECT gate_seq FROM events WHERE id = %s", (event["id"],)).fetchone()
    assert after["gate_seq"] > gate["gate_seq"]  # concurrent grants re-read the type
    refused(v2.request("PATCH", _path(event, t["id"]), json_body={"sales_end": "2029-12-31T00:00:00Z"}, token=org),
            422, "invalid_sales_window")
    refused(v2.request("PATCH", _path(event, t["id"]), json_body={"max_per_order": 1}, token=org),
            422, "invalid_order_bounds")
    refused(v2.request("PATCH", _path(event, t["id"]), json_body={"name": None}, token=org), 422, "validation_error")
    cleared = ok(v2.request("PATCH", _path(event, t["id"]), json_body={"sales_start": None}, token=org))
    assert cleared["sales_start"] is None and cleared["price_minor"] == 1500


def test_deactivated_and_hidden_types_leave_the_public_read(v2: LambdaClient) -> None:
    _, org = account(v2, "organizer")
    event = create_event(v2, org)
    a = add_type(v2, org, event["id"], name="A")
    b = add_type(v2, org, event["id"], name="B", hidden=True)
    ok(v2.request("PATCH", _path(event, a["id"]), json_body={"active": False}, token=org))
    shown = [t["name"] for t in ok(v2.request("GET", f"/events/{event['id']}"))["ticket_types"]]
    assert shown == ["General admission"]
    listed = {t["id"]: t for t in types_of(v2, org, event["id"])}  # the organizer sees all
    assert not listed[a["id"]]["active"] and listed[b["id"]]["hidden"]


def test_sales_window_shows_as_on_sale(v2: LambdaClient) -> None:
    _, org = account(v2, "organizer")
    event = create_event(v2, org)
    add_type(v2, org, event["id"], name="Later", sales_start="2999-01-01T00:00:00Z")
    add_type(v2, org, event["id"], name="Over", sales_start="2000-01-01T00:00:00Z", sales_end="2001-01-01T00:00:00Z")
    shown = {t["name"]: t["on_sale"] for t in ok(v2.request("GET", f"/events/{event['id']}"))["ticket_types"]}
    assert shown == {"General admission": True, "Later": False, "Over": False}


def test_reorder_puts_the_listed_first(v2: LambdaClient) -> None:
    _, org = account(v2, "organizer")
    event = create_event(v2, org)
    default = event["ticket_types"][0]["id"]
    a = add_type(v2, org, event["id"], name="A")["id"]
    b = add_type(v2, org, event["id"], name="B")["id"]
    items = ok(v2.request("PUT", _order(event), json_body={"ticket_type_ids": [b, a]}, token=org))["items"]
    assert [t["id"] for t in items] == [b, a, default]
    assert [t["position"] for t in items] == [0, 1, 2]
    assert [t["id"] for t in ok(v2.request("GET", f"/events/{event['id']}"))["ticket_types"]] == [b, a, default]
    refused(v2.request("PUT", _order(event), json_body={"ticket_type_ids": [a, a]}, token=org),
            400, "duplicate_ticket_type")
    refused(v2.request("PUT", _order(event), json_body={"ticket_type_ids": [987654321]}, token=org),
            404, "ticket_type_not_found")


def test_delete_only_without_sales_and_never_the_default(v2: LambdaClient) -> None:
    _, org = account(v2, "organizer")
    _, cust = account(v2, "customer")
    event = create_event(v2, org)
    spare = add_type(v2, org, event["id"], name="Spare")
    assert v2.request("DELETE", _path(event, spare["id"]), token=org).status_code == 204
    refused(v2.request("DELETE", _path(event, spare["id"]), token=org), 404, "ticket_type_not_found")
    refused(v2.request("PATCH", _path(event, spare["id"]), json_body={"active": False}, token=org),
            404, "ticket_type_not_found")
    refused(v2.request("DELETE", _path(event, event["ticket_types"][0]["id"]), token=org), 409, "default_ticket_type")
    sold = add_type(v2, org, event["id"], name="Sold")
    held = add_type(v2, org, event["id"], name="Held")
    lines = [{"ticket_type_id": sold["id"], "quantity": 1}]
    order = ok(v2.request("POST", "/bookings", json_body={"event_id": event["id"], "lines": lines}, token=cust), 201)
    ok(v2.request("POST", f"/bookings/{order['id']}/cancel", json_body={}, token=cust))  # all given back: still ordered
    hold = ok(v2.request("POST", f"/events/{event['id']}/holds",
                         json_body={"lines": [{"ticket_type_id": held["id"], "quantity": 1}]}, token=cust), 201)
    ok(v2.request("DELETE", f"/holds/{hold['id']}", token=cust))  # released: still held once
    refused(v2.request("DELETE", _path(event, held["id"]), token=org), 409, "ticket_type_has_sales")
    refused(v2.request("DELETE", _path(event, sold["id"]), token=org), 409, "ticket_type_has_sales")
    assert ok(v2.request("PATCH", _path(event, sold["id"]), json_body={"active": False}, token=org))["active"] is False


def test_only_the_organizer_of_an_existing_event(v2: LambdaClient) -> None:
    _, org = account(v2, "organizer")
    _, other = account(v2, "organizer")
    _, cust = account(v2, "customer")
    event = create_event(v2, org)
    t = event["ticket_types"][0]["id"]
    calls = [("POST", _path(event), {"name": "x"}), ("GET", _path(event), None),
             ("PATCH", _path(event, t), {"name": "y"}), ("DELETE", _path(event, t), None),
             ("PUT", _order(event), {"ticket_type_ids": [t]})]
    for method, path, body in calls:
        refused(v2.request(method, path, json_body=body, token=other), 403, "not_event_owner")
        refused(v2.request(method, path, json_body=body, token=cust), 403, "organizer_only")
        missing = path.replace(f"/events/{event['id']}", "/events/987654321")
        refused(v2.request(method, missing, json_body=body, token=org), 404, "event_not_found")
    refused(v2.request("PATCH", _path(event, 987654321), json_body={"name": "y"}, token=org), 404,
            "ticket_type_not_found")


def test_a_cancelled_events_catalog_is_frozen(v2: LambdaClient) -> None:
    _, org = account(v2, "organizer")
    event = create_event(v2, org)
    ok(v2.request("POST", f"/events/{event['id']}/cancel", token=org))
    refused(v2.request("POST", _path(event), json_body={"name": "x"}, token=org), 409, "event_cancelled")
    assert ok(v2.request("GET", f"/events/{event['id']}"))["ticket_types"][0]["on_sale"] is False


def test_names_are_trimmed_and_never_blank(v2: LambdaClient) -> None:
    _, org = account(v2, "organizer")
    event = create_event(v2, org)
    for name in ("   ", "\t\n", "\u3000"):
        refused(v2.request("POST", _path(event), json_body={"name": name}, token=org), 422, "validation_error")
    t = add_type(v2, org, event["id"], name="  Early bird ")
    assert t["name"] == "Early bird"
    refused(v2.request("PATCH", _path(event, t["id"]), json_body={"name": " "}, token=org), 422, "validation_error")
    assert ok(v2.request("PATCH", _path(event, t["id"]), json_body={"name": " Late "}, token=org))["name"] == "Late"


def test_unknown_fields_are_refused_not_ignored(v2: LambdaClient) -> None:
    _, org = account(v2, "organizer")
    event = create_event(v2, org)
    t = event["ticket_types"][0]
    for method, path, body in (
        ("POST", _path(event), {"name": "x", "price": 5}),
        ("PATCH", _path(event, t["id"]), {"currency": "SEK"}),
        ("PUT", _order(event), {"ticket_type_ids": [t["id"]], "reverse": True}),
    ):
        body_ = refused(v2.request(method, path, json_body=body, token=org), 422, "validation_error")
        assert body_["details"]["errors"][0]["type"] == "extra_forbidden", body_
    assert types_of(v2, org, event["id"])[0]["name"] == t["name"]


def test_a_type_no_order_could_buy_is_refused(v2: LambdaClient) -> None:
    """min_per_order above any maximum that applies to one order: on create and on PATCH."""
    _, org = account(v2, "organizer")
    event = create_event(v2, org, max_tickets_per_booking=6, max_tickets_per_customer=8)
    for fields, details in (
        ({"min_per_order": 7}, {"min_per_order": 7, "max_tickets_per_booking": 6}),
        ({"min_per_order": 3, "max_per_customer": 2}, {"min_per_order": 3, "max_per_customer": 2}),
    ):
        body = refused(v2.request("POST", _path(event), json_body={"name": "x2", **fields}, token=org),
                       422, "invalid_order_bounds")
        assert body["details"] == details
    t = add_type(v2, org, event["id"], name="Table", min_per_order=6)
    body = refused(v2.request("PATCH", _path(event, t["id"]), json_body={"min_per_order": 7}, token=org),
                   422, "invalid_order_bounds")
    assert body["details"] == {"min_per_order": 7, "max_tickets_per_booking": 6}
    seated = create_event(v2, org, max_tickets_per_booking=10, max_tickets_per_customer=4)
    body = refused(v2.request("POST", _path(seated), json_body={"name": "x", "min_per_order": 5}, token=org),
                   422, "invalid_order_bounds")
    assert body["details"] == {"min_per_order": 5, "max_tickets_per_customer": 4}
    assert [x["name"] for x in types_of(v2, org, event["id"])] == ["General admission", "Table"]


def test_the_event_cannot_lower_a_maximum_below_an_active_types_minimum(v2: LambdaClient) -> None:
    """PUT /events keeps the rule a type's own fields obey: some order can buy every active type."""
    _, org = account(v2, "organizer")
    event = create_event(v2, org, max_tickets_per_booking=8, max_tickets_per_customer=10)
    t = add_type(v2, org, event["id"], name="Table", min_per_order=6)
    path = f"/events/{event['id']}"
    for limits, details in (
        ({"max_tickets_per_booking": 5}, {"min_per_order": 6, "max_tickets_per_booking": 5}),
        ({"max_tickets_per_customer": 4}, {"min_per_order": 6, "max_tickets_per_customer": 4}),
    ):
        body = refused(v2.request("PUT", path, json_body={**limits, "title": "renamed"}, token=org),
                       422, "invalid_order_bounds")
        assert body["details"] == {**details, "ticket_type_id": t["id"]} and "'Table'" in body["message"], body
    stored = ok(v2.request("GET", path))
    assert (stored["title"], stored["max_tickets_per_booking"], stored["max_tickets_per_customer"]) == (
        event["title"], 8, 10)
    at_min = ok(v2.request("PUT", path, json_body={"max_tickets_per_booking": 6}, token=org))
    assert at_min["max_tickets_per_booking"] == 6
    ok(v2.request("PATCH", _path(event, t["id"]), json_body={"active": False}, token=org))
    ok(v2.request("PUT", path, json_body={"max_tickets_per_booking": 2}, token=org))  # only active types count


def test_a_type_left_unbuyable_by_the_event_can_still_be_renamed_and_deactivated(
    v2: LambdaClient, sql: psycopg.Connection
) -> None:
    _, org = account(v2, "organizer")
    event = create_event(v2, org, max_tickets_per_booking=6)
    t = add_type(v2, org, event["id"], name="Table", min_per_order=6)
    # PUT /events refuses it; a lower server default (the event's NULL maximum) leaves it so
    sql.execute("UPDATE events SET max_tickets_per_booking = 4 WHERE id = %s", (event["id"],))
    r = ok(v2.request("PATCH", _path(event, t["id"]), json_body={"name": "Old table", "active": False}, token=org))
    assert (r["name"], r["active"]) == ("Old table", False)
    refused(v2.request("PATCH", _path(event, t["id"]), json_body={"max_per_order": 5}, token=org),
            422, "invalid_order_bounds")


def test_reads_refuse_another_organizer_with_see(v2: LambdaClient) -> None:
    _, org = account(v2, "organizer")
    _, other = account(v2, "organizer")
    event = create_event(v2, org)
    for path in (_path(event), f"/events/{event['id']}/quotas", f"/events/{event['id']}/inventory",
                 f"/events/{event['id']}/access-codes"):
        body = refused(v2.request("GET", path, token=other), 403, "not_event_owner")
        assert body["message"] == "Only the event's organizer can see it", path
    body = refused(v2.request("POST", _path(event), json_body={"name": "x"}, token=other), 403, "not_event_owner")
    assert body["message"] == "Only the event's organizer can change it"


def test_live_holds_of_a_type_end_when_its_sales_end_moves_earlier(v2: LambdaClient, sql: psycopg.Connection) -> None:
    """A hold is kept for a sale that can still happen: a type's sales now ending sooner end
    the holds of it then too (as the event's sales close does); others keep their time."""
    _, org = account(v2, "organizer")
    _, cust = account(v2, "customer")
    event = create_event(v2, org, total_tickets=20)
    early = add_type(v2, org, event["id"], name="Early")
    late = add_type(v2, org, event["id"], name="Late")

    def hold(*types: int) -> dict[str, Any]:
        body = {"lines": [{"ticket_type_id": t, "quantity": 1} for t in types], "ttl_seconds": 3600}
        return ok(v2.request("POST", f"/events/{event['id']}/holds", json_body=body, token=cust), 201)  # type: ignore[no-any-return]

    mixed, other = hold(early["id"], late["id"]), hold(late["id"])
    ends = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=5)
    ok(v2.request("PATCH", _path(event, early["id"]), json_body={"sales_end": ends.isoformat()}, token=org))
    expiry = {r["id"]: r["expires_at"] for r in sql.execute(
        "SELECT id, expires_at FROM holds WHERE id = ANY(%s)", ([mixed["id"], other["id"]],)).fetchall()}
    assert expiry[mixed["id"]] == ends
    assert expiry[other["id"]] > ends + timedelta(minutes=50)
    later = ends + timedelta(hours=3)  # a later end gives no time back
    ok(v2.request("PATCH", _path(event, early["id"]), json_body={"sales_end": later.isoformat()}, token=org))
    assert sql.execute("SELECT expires_at FROM holds WHERE id = %s", (mixed["id"],)).fetchone()["expires_at"] == ends
