"""Access codes: created once in clear, stored as a digest, listed without it, changed safely."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from typing import Any

import psycopg

from shared.ticketing.access_codes import digest, generate
from tests.support.catalog import add_type, ok, refused
from tests.support.clients import LambdaClient
from tests.support.factories import account, create_event


def _codes(event: dict[str, Any], code_id: int | None = None) -> str:
    return f"/events/{event['id']}/access-codes" + (f"/{code_id}" if code_id else "")


def test_digest_ignores_case_and_blanks() -> None:
    assert digest(" fanclub-2030 ") == digest("FANCLUB-2030") == hashlib.sha256(b"FANCLUB-2030").digest()
    code = generate()
    assert len(code) == 16 and code.isalnum() and code == code.upper()
    assert generate() != code


def test_create_returns_the_code_once_and_stores_its_digest(v2: LambdaClient, sql: psycopg.Connection) -> None:
    _, org = account(v2, "organizer")
    event = create_event(v2, org)
    vip = add_type(v2, org, event["id"], name="VIP", hidden=True)
    body = {"label": "Fan club", "ticket_type_ids": [vip["id"]], "max_uses": 5,
            "valid_until": "2999-01-01T00:00:00Z"}
    created = ok(v2.request("POST", _codes(event), json_body=body, token=org), 201)
    assert len(created["code"]) == 16
    assert (created["label"], created["uses"], created["max_uses"], created["active"]) == ("Fan club", 0, 5, True)
    assert created["ticket_type_ids"] == [vip["id"]] and created["valid_until"].startswith("2999-01-01")
    stored = sql.execute("SELECT code_digest FROM access_codes WHERE id = %s", (created["id"],)).fetchone()
    assert bytes(stored["code_digest"]) == digest(created["code"])
    listed = ok(v2.request("GET", _codes(event), token=org))["items"]
    assert [c["id"] for c in listed] == [created["id"]] and "code" not in listed[0]
    assert created["code"] not in str(listed)


def test_a_chosen_code_is_unique_per_event_whatever_its_case(v2: LambdaClient) -> None:
    _, org = account(v2, "organizer")
    event = create_event(v2, org)
    other = create_event(v2, org)
    t = event["ticket_types"][0]["id"]
    body = {"code": "Presale-2030", "ticket_type_ids": [t], "max_uses": 10}
    assert ok(v2.request("POST", _codes(event), json_body=body, token=org), 201)["code"] == "PRESALE-2030"
    refused(v2.request("POST", _codes(event), json_body={**body, "code": "presale-2030"}, token=org),
            409, "access_code_taken")
    body_other = {**body, "ticket_type_ids": [other["ticket_types"][0]["id"]]}
    ok(v2.request("POST", _codes(other), json_body=body_other, token=org), 201)  # another event: fine


def test_create_validation(v2: LambdaClient) -> None:
    _, org = account(v2, "organizer")
    event = create_event(v2, org)
    t = event["ticket_types"][0]["id"]
    for body in ({"code": "short", "ticket_type_ids": [t], "max_uses": 1},
                 {"code": "has space 123", "ticket_type_ids": [t], "max_uses": 1},
                 {"ticket_type_ids": [], "max_uses": 1},
                 {"ticket_type_ids": [t], "max_uses": 0}):
        refused(v2.request("POST", _codes(event), json_body=body, token=org), 422, "validation_error")
    window = {"ticket_type_ids": [t], "max_uses": 1, "valid_from": "2030-01-02T00:00:00Z",
              "valid_until": "2030-01-01T00:00:00Z"}
    refused(v2.request("POST", _codes(event), json_body=window, token=org), 422, "invalid_validity_window")
    other = create_event(v2, org)
    foreign = {"ticket_type_ids": [other["ticket_types"][0]["id"]], "max_uses": 1}
    refused(v2.request("POST", _codes(event), json_body=foreign, token=org), 404, "ticket_type_not_found")


def test_update_active_window_and_max_uses(v2: LambdaClient, sql: psycopg.Connection) -> None:
    _, org = account(v2, "organizer")
    event = create_event(v2, org)
    t = event["ticket_types"][0]["id"]
    code = ok(v2.request("POST", _codes(event), json_body={"ticket_type_ids": [t], "max_uses": 5,
                                                           "valid_from": "2030-01-01T00:00:00Z"}, token=org), 201)
    r = ok(v2.request("PATCH", _codes(event, code["id"]), json_body={"active": False, "label": "off"}, token=org))
    assert (r["active"], r["label"], r["max_uses"]) == (False, "off", 5)
    sql.execute("UPDATE access_codes SET uses = 3 WHERE id = %s", (code["id"],))  # three orders used it
    body = refused(v2.request("PATCH", _codes(event, code["id"]), json_body={"max_uses": 2}, token=org),
                   409, "max_uses_below_uses")
    assert body["details"] == {"uses": 3, "requested": 2}
    assert ok(v2.request("PATCH", _codes(event, code["id"]), json_body={"max_uses": 3}, token=org))["max_uses"] == 3
    refused(v2.request("PATCH", _codes(event, code["id"]), json_body={"valid_until": "2029-01-01T00:00:00Z"},
                       token=org), 422, "invalid_validity_window")
    r = ok(v2.request("PATCH", _codes(event, code["id"]), json_body={"valid_until": None}, token=org))
    assert r["valid_until"] is None
    refused(v2.request("PATCH", _codes(event, 987654321), json_body={"active": True}, token=org),
            404, "access_code_not_found")


def test_fields_a_patch_cannot_change_are_refused(v2: LambdaClient) -> None:
    """A code's types and window start are fixed: sent, they are refused, not silently ignored."""
    _, org = account(v2, "organizer")
    event = create_event(v2, org)
    t = event["ticket_types"][0]["id"]
    code = ok(v2.request("POST", _codes(event), json_body={"ticket_type_ids": [t], "max_uses": 5}, token=org), 201)
    for body in ({"valid_from": "2030-01-01T00:00:00Z"}, {"ticket_type_ids": [t]}, {"code": "NEWCODE123"}):
        r = refused(v2.request("PATCH", _codes(event, code["id"]), json_body=body, token=org), 422, "validation_error")
        assert r["details"]["errors"][0]["type"] == "extra_forbidden", r
    r = refused(v2.request("POST", _codes(event), json_body={"ticket_type_ids": [t], "max_uses": 1, "uses": 0},
                           token=org), 422, "validation_error")
    assert r["details"]["errors"][0]["type"] == "extra_forbidden"
    [stored] = ok(v2.request("GET", _codes(event), token=org))["items"]
    assert stored["valid_from"] is None


def test_labels_are_trimmed_and_never_blank(v2: LambdaClient) -> None:
    _, org = account(v2, "organizer")
    event = create_event(v2, org)
    t = event["ticket_types"][0]["id"]
    refused(v2.request("POST", _codes(event), json_body={"ticket_type_ids": [t], "max_uses": 1, "label": "  "},
                       token=org), 422, "validation_error")
    code = ok(v2.request("POST", _codes(event), json_body={"ticket_type_ids": [t], "max_uses": 1, "label": " Fans "},
                         token=org), 201)
    assert code["label"] == "Fans"
    refused(v2.request("PATCH", _codes(event, code["id"]), json_body={"label": "\t"}, token=org),
            422, "validation_error")
    assert ok(v2.request("PATCH", _codes(event, code["id"]), json_body={"label": None}, token=org))["label"] is None


def test_only_the_organizer(v2: LambdaClient) -> None:
    _, org = account(v2, "organizer")
    _, other = account(v2, "organizer")
    _, cust = account(v2, "customer")
    event = create_event(v2, org)
    t = event["ticket_types"][0]["id"]
    code = ok(v2.request("POST", _codes(event), json_body={"ticket_type_ids": [t], "max_uses": 1}, token=org), 201)
    calls = [("POST", _codes(event), {"ticket_type_ids": [t], "max_uses": 1}), ("GET", _codes(event), None),
             ("PATCH", _codes(event, code["id"]), {"active": False})]
    for method, path, body in calls:
        refused(v2.request(method, path, json_body=body, token=other), 403, "not_event_owner")
        refused(v2.request(method, path, json_body=body, token=cust), 403, "organizer_only")
        missing = path.replace(f"/events/{event['id']}", "/events/987654321")
        refused(v2.request(method, missing, json_body=body, token=org), 404, "event_not_found")


def test_orders_with_a_code_show_in_its_uses(v2: LambdaClient) -> None:
    _, org = account(v2, "organizer")
    _, cust = account(v2, "customer")
    event = create_event(v2, org)
    vip = add_type(v2, org, event["id"], name="VIP", hidden=True)
    code = ok(v2.request("POST", _codes(event), json_body={"ticket_type_ids": [vip["id"]], "max_uses": 3}, token=org),
              201)
    order = {"event_id": event["id"], "lines": [{"ticket_type_id": vip["id"], "quantity": 1}]}
    refused(v2.request("POST", "/bookings", json_body=order, token=cust), 404, "ticket_type_not_found")
    for _ in range(2):
        ok(v2.request("POST", "/bookings", json_body={**order, "access_code": code["code"].lower()}, token=cust), 201)
    [listed] = ok(v2.request("GET", _codes(event), token=org))["items"]
    assert (listed["uses"], listed["max_uses"]) == (2, 3)
    body = refused(v2.request("PATCH", _codes(event, code["id"]), json_body={"max_uses": 1}, token=org),
                   409, "max_uses_below_uses")
    assert body["details"] == {"uses": 2, "requested": 1}
    assert ok(v2.request("PATCH", _codes(event, code["id"]), json_body={"max_uses": 2}, token=org))["max_uses"] == 2
    refused(v2.request("POST", "/bookings", json_body={**order, "access_code": code["code"]}, token=cust),
            409, "access_code_exhausted")


def test_a_cancelled_events_codes_are_frozen(v2: LambdaClient) -> None:
    _, org = account(v2, "organizer")
    event = create_event(v2, org)
    t = event["ticket_types"][0]["id"]
    code = ok(v2.request("POST", _codes(event), json_body={"ticket_type_ids": [t], "max_uses": 5}, token=org), 201)
    ok(v2.request("POST", f"/events/{event['id']}/cancel", token=org))
    refused(v2.request("POST", _codes(event), json_body={"ticket_type_ids": [t], "max_uses": 5}, token=org),
            409, "event_cancelled")
    refused(v2.request("PATCH", _codes(event, code["id"]), json_body={"active": False}, token=org),
            409, "event_cancelled")
    assert ok(v2.request("GET", _codes(event), token=org))["items"][0]["active"] is True


def _gate_seq(sql: psycopg.Connection, event_id: int) -> int:
    return int(sql.execute("SELECT gate_seq FROM events WHERE id = %s", (event_id,)).fetchone()["gate_seq"])


def _waiting_on_locks(sql: psycopg.Connection) -> int:
    return int(sql.execute(
        """SELECT count(*) AS n FROM pg_stat_activity
            WHERE datname = current_database() AND state = 'active' AND wait_event_type = 'Lock'"""
    ).fetchone()["n"])


def _until(condition: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_code_change_waits_for_grants_in_progress(v2: LambdaClient, sql: psycopg.Connection, database: str) -> None:
    """A grant that read the code active and waits for a stock row is never overtaken by its
    deactivation: the change takes every stock row first (and bumps the gate), as any
    catalog change does, so the grant either counts the use before it or re-reads the code."""
    _, org = account(v2, "organizer")
    _, cust = account(v2, "customer")
    event = create_event(v2, org, total_tickets=10)
    t = event["ticket_types"][0]["id"]
    code = ok(v2.request("POST", _codes(event), json_body={"ticket_type_ids": [t], "max_uses": 5}, token=org), 201)
    before = _gate_seq(sql, event["id"])
    ok(v2.request("PATCH", _codes(event, code["id"]), json_body={"label": "fans"}, token=org))
    assert _gate_seq(sql, event["id"]) > before  # grants holding the old catalog re-read it

    order = {"event_id": event["id"], "lines": [{"ticket_type_id": t, "quantity": 1}], "access_code": code["code"]}
    done: list[tuple[str, Any]] = []

    def book() -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())  # the Lambda adapter runs the app on this thread's loop
        done.append(("book", v2.request("POST", "/bookings", json_body=order, token=cust)))

    def deactivate() -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())
        done.append(("deactivate", v2.request("PATCH", _codes(event, code["id"]), json_body={"active": False},
                                              token=org)))

    with psycopg.connect(database) as blocker:
        blocker.execute(  # a grant in progress elsewhere: every stock row of the event
            "SELECT 1 FROM quota_stock WHERE quota_id IN (SELECT id FROM quotas WHERE event_id = %s) FOR UPDATE",
            (event["id"],))
        waiting = _waiting_on_locks(sql)
        booker = threading.Thread(target=book)
        booker.start()
        _until(lambda: _waiting_on_locks(sql) > waiting)  # its snapshot saw the code active
        changer = threading.Thread(target=deactivate)
        changer.start()
        time.sleep(0.5)
        assert not done, "the code changed while a grant that read it was waiting"
        blocker.rollback()
    booker.join()
    changer.join()
    answers = dict(done)
    assert answers["deactivate"].status_code == 200, answers["deactivate"].text
    booked = answers["book"]
    if booked.status_code == 201:  # counted before the change: the change came after it
        assert [name for name, _ in done] == ["book", "deactivate"]
    else:
        assert booked.json()["code"] == "access_code_invalid", booked.text
    assert ok(v2.request("GET", _codes(event), token=org))["items"][0]["active"] is False
