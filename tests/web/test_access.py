"""Who may do what, and what a bad token gets."""

from __future__ import annotations

import time

import jwt
import pytest

from shared.platform.settings import get_settings
from tests.support.clients import Client
from tests.support.factories import account, create_event


def test_customer_cannot_create_or_update_events(client: Client) -> None:
    customer, cust = account(client, "customer")
    _, org = account(client, "organizer")
    event = create_event(client, org)
    r = client.request("POST", "/events", json_body={"title": "X", "total_tickets": 1}, token=cust)
    assert r.status_code == 403 and r.json()["code"] == "organizer_only"
    r = client.request("POST", f"/events/{customer['id']}", json_body={"title": "X", "total_tickets": 1}, token=cust)
    assert r.status_code == 403
    r = client.request("PUT", f"/events/{event['id']}", json_body={"title": "X"}, token=cust)
    assert r.status_code == 403 and r.json()["code"] == "organizer_only"


def test_organizer_cannot_update_another_organizers_event(client: Client) -> None:
    _, owner = account(client, "organizer")
    _, intruder = account(client, "organizer")
    event = create_event(client, owner)
    r = client.request("PUT", f"/events/{event['id']}", json_body={"title": "Mine now"}, token=intruder)
    assert r.status_code == 403 and r.json()["code"] == "not_event_owner"
    assert client.request("GET", f"/events/{event['id']}").json()["title"] == "Music Concert"


def test_organizer_cannot_create_events_as_someone_else(client: Client) -> None:
    other, _ = account(client, "organizer")
    _, org = account(client, "organizer")
    r = client.request("POST", f"/events/{other['id']}", json_body={"title": "X", "total_tickets": 1}, token=org)
    assert r.status_code == 403 and r.json()["code"] == "not_your_account"


def test_nobody_books_as_someone_else_and_organizers_do_not_book(client: Client) -> None:
    _, org = account(client, "organizer")
    victim, _ = account(client, "customer")
    _, cust = account(client, "customer")
    event = create_event(client, org)
    r = client.request("POST", f"/book/{victim['id']}", json_body={"event_id": event["id"]}, token=cust)
    assert r.status_code == 403 and r.json()["code"] == "not_your_account"
    r = client.request("POST", "/bookings", json_body={"event_id": event["id"]}, token=org)
    assert r.status_code == 403 and r.json()["code"] == "customer_only"
    assert client.request("GET", f"/events/{event['id']}").json()["available_tickets"] == 50


def _token(**overrides: object) -> str:
    s = get_settings()
    now = int(time.time())
    claims = {"sub": "1", "role": "customer", "iat": now, "exp": now + 60, "iss": s.jwt_issuer,
              "jti": "j", "sid": "s", **overrides}
    return jwt.encode(claims, s.signing_secret(), algorithm=s.jwt_algorithm)


@pytest.mark.parametrize(
    ("token", "code"),
    [
        (None, "not_authenticated"),
        ("not-a-jwt", "invalid_token"),
        ("expired", "token_expired"),
        ("tampered", "invalid_token"),
        ("wrong-key", "invalid_token"),
    ],
)
def test_missing_expired_or_tampered_token_is_401(client: Client, token: str | None, code: str) -> None:
    if token == "expired":
        token = _token(iat=int(time.time()) - 700, exp=int(time.time()) - 100)
    elif token == "tampered":
        head, _, sig = _token().split(".")
        forged = jwt.utils.base64url_encode(
            b'{"sub":"1","role":"organizer","iat":1,"exp":9999999999,"iss":"ticketing-backend"}'
        ).decode()
        token = f"{head}.{forged}.{sig}"
    elif token == "wrong-key":
        token = jwt.encode(
            {"sub": "1", "role": "organizer", "iat": 1, "exp": 9999999999, "iss": "ticketing-backend"},
            "other-secret-of-32-bytes-length!!",
            algorithm="HS256",
        )
    r = client.request("GET", "/users/me", token=token)
    assert r.status_code == 401
    assert r.json()["code"] == code
    assert r.headers.get("www-authenticate") == "Bearer"


def test_a_token_verified_earlier_still_expires(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    import shared.accounts.tokens

    _, token = account(client, "customer")
    assert client.request("GET", "/users/me", token=token).status_code == 200  # verified and remembered
    later = time.time() + get_settings().jwt_ttl_seconds + 1
    monkeypatch.setattr(shared.accounts.tokens.time, "time", lambda: later)
    r = client.request("GET", "/users/me", token=token)
    assert r.status_code == 401 and r.json()["code"] == "token_expired"


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
