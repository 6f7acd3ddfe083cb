"""Bad input on every endpoint gets a documented 4xx with a code, never a 500."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.support.clients import Client
from tests.support.factories import account, create_event

HUGE = 2**70


@pytest.fixture
def world(client: Client) -> dict[str, Any]:
    organizer, org = account(client, "organizer")
    customer, cust = account(client, "customer")
    event = create_event(client, org)
    return {"org": org, "cust": cust, "organizer": organizer, "customer": customer, "event": event}


def _check(r: Any, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == code
    assert body["message"]


def test_malformed_json(client: Client, world: dict[str, Any]) -> None:
    for path, token in [("/users", None), ("/events", world["org"]), ("/bookings", world["cust"])]:
        r = client.request(
            "POST", path, content=b'{"title": ', headers={"content-type": "application/json"}, token=token
        )
        _check(r, 400, "invalid_json")


def test_json_without_a_content_type_is_read_as_json(client: Client, world: dict[str, Any]) -> None:
    r = client.request("POST", "/bookings", content=f'{{"event_id": {world["event"]["id"]}}}'.encode(),
                       token=world["cust"])
    assert r.status_code == 201, r.text


def test_json_sent_as_a_form_is_refused_with_415(client: Client, world: dict[str, Any]) -> None:
    # What `curl -d '{"event_id": 1}'` sends when -H 'Content-Type: application/json' is forgotten
    body = f'{{"event_id": {world["event"]["id"]}}}'.encode()
    for media_type in ("application/x-www-form-urlencoded", "text/plain"):
        r = client.request("POST", "/bookings", content=body, headers={"content-type": media_type},
                           token=world["cust"])
        _check(r, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"email": "a@test.com", "password": "123"},
        {"email": "not-an-email", "password": "123", "role": "customer"},
        {"email": "a@test.com", "password": "123", "role": "admin"},
        {"email": "a@test.com", "password": "12", "role": "customer"},
        {"email": "a@test.com", "password": 123, "role": "customer"},
        {"email": "x" * 400 + "@test.com", "password": "123", "role": "customer"},
        {"email": "a@test.com", "password": "123", "role": "customer", "name": "n" * 500},
        {"email": "a\u0000b@test.com", "password": "123", "role": "customer"},
    ],
)
def test_register_validation(client: Client, body: dict[str, Any]) -> None:
    _check(client.request("POST", "/users", json_body=body), 422, "validation_error")


def test_register_non_object_body(client: Client) -> None:
    _check(client.request("POST", "/users", json_body=[1, 2]), 422, "validation_error")


def test_login_without_fields(client: Client) -> None:
    _check(client.request("POST", "/auth/token", form={}), 422, "validation_error")
    _check(client.request("POST", "/auth/token", json_body={"username": "a", "password": "b"}), 422, "validation_error")


@pytest.mark.parametrize(
    "body",
    [
        {"title": "T"},
        {"total_tickets": 5},
        {"title": "T", "total_tickets": 0},
        {"title": "T", "total_tickets": -5},
        {"title": "T", "total_tickets": "50"},
        {"title": "T", "total_tickets": 1.5},
        {"title": "T", "total_tickets": HUGE},
        {"title": "", "total_tickets": 5},
        {"title": "t" * 201, "total_tickets": 5},
        {"title": "T", "total_tickets": 5, "start_time": "tomorrow"},
        {"title": "T", "total_tickets": 5, "start_time": "2030-01-01T10:00:00"},
        {"title": "T\u0000", "total_tickets": 5},
    ],
)
def test_create_event_validation(client: Client, world: dict[str, Any], body: dict[str, Any]) -> None:
    _check(client.request("POST", "/events", json_body=body, token=world["org"]), 422, "validation_error")
    path = f"/events/{world['organizer']['id']}"
    _check(client.request("POST", path, json_body=body, token=world["org"]), 422, "validation_error")


def test_end_before_start_has_its_own_code_on_create_as_on_update(client: Client, world: dict[str, Any]) -> None:
    times = {"start_time": "2030-01-02T10:00:00Z", "end_time": "2030-01-01T10:00:00Z"}
    r = client.request("POST", "/events", json_body={"title": "T", "total_tickets": 5, **times}, token=world["org"])
    _check(r, 422, "invalid_time_range")
    r = client.request("PUT", f"/events/{world['event']['id']}", json_body=times, token=world["org"])
    _check(r, 422, "invalid_time_range")


@pytest.mark.parametrize(
    "body",
    [{"total_tickets": 0}, {"total_tickets": None}, {"title": None}, {"title": 7}, {"venue": "v" * 300}],
)
def test_update_event_validation(client: Client, world: dict[str, Any], body: dict[str, Any]) -> None:
    r = client.request("PUT", f"/events/{world['event']['id']}", json_body=body, token=world["org"])
    _check(r, 422, "validation_error")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"event_id": "1"},
        {"event_id": 0},
        {"event_id": -1},
        {"event_id": HUGE},
        {"event_id": None},
        {"event_id": 1, "quantity": 0},
        {"event_id": 1, "quantity": -2},
        {"event_id": 1, "quantity": "2"},
    ],
)
def test_booking_validation(client: Client, world: dict[str, Any], body: dict[str, Any]) -> None:
    _check(client.request("POST", "/bookings", json_body=body, token=world["cust"]), 422, "validation_error")
    path = f"/book/{world['customer']['id']}"
    _check(client.request("POST", path, json_body=body, token=world["cust"]), 422, "validation_error")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/events/abc"),
        ("GET", "/events/0"),
        ("GET", f"/events/{HUGE}"),
        ("GET", "/bookings/abc"),
        ("PUT", "/events/-1"),
        ("POST", "/book/abc"),
    ],
)
def test_bad_path_ids(client: Client, world: dict[str, Any], method: str, path: str) -> None:
    token = world["cust"] if "book" in path else world["org"]
    r = client.request(
        method,
        path,
        json_body={"event_id": 1} if method == "POST" else {"title": "x"} if method == "PUT" else None,
        token=token,
    )
    _check(r, 422, "validation_error")


@pytest.mark.parametrize(
    "params", [{"limit": 0}, {"limit": 1000}, {"offset": -1}, {"order": "random"}, {"organizer_id": "x"}]
)
def test_bad_list_params(client: Client, params: dict[str, Any]) -> None:
    _check(client.request("GET", "/events", params=params), 422, "validation_error")


def test_update_unknown_event_is_404(client: Client, world: dict[str, Any]) -> None:
    _check(
        client.request("PUT", "/events/99999999", json_body={"title": "x"}, token=world["org"]), 404, "event_not_found"
    )


def test_validation_errors_never_echo_the_password(client: Client) -> None:
    r = client.request("POST", "/users", json_body={"email": "bad", "password": "hunter2-secret", "role": "customer"})
    assert r.status_code == 422
    assert "hunter2-secret" not in r.text


# Every text field refuses these with 422 (a lone surrogate used to reach psycopg: 500).
UNSAFE_CHARACTERS = {
    "NUL": "\x00", "control": "\x01", "DEL": "\x7f", "C1 control": "\x85", "newline": "\n",
    "right-to-left override": "\u202e", "left-to-right isolate": "\u2066", "right-to-left mark": "\u200f",
    "line separator": "\u2028", "lone high surrogate": "\ud800", "lone low surrogate": "\udfff",
}


def _all_refused(send: Any, characters: dict[str, str] = UNSAFE_CHARACTERS) -> None:
    for label, ch in characters.items():
        r = send(ch)
        assert r.status_code == 422, (label, r.status_code, r.text)
        assert r.json()["code"] == "validation_error", label


def test_unsafe_characters_in_registration(client: Client) -> None:
    def body(**fields: str) -> dict[str, Any]:
        return {"email": "ok@test.com", "password": "long-enough-secret", "role": "customer", **fields}

    _all_refused(lambda ch: client.request("POST", "/users", json_body=body(email=f"a{ch}b@test.com")))
    _all_refused(lambda ch: client.request("POST", "/users", json_body=body(name=f"Ann{ch}")))
    # Emails also refuse what is invisible or blank.
    _all_refused(lambda ch: client.request("POST", "/users", json_body=body(email=f"a{ch}b@test.com")),
                 {"zero-width space": "\u200b", "soft hyphen": "\u00ad", "no-break space": "\u00a0",
                  "private use": "\ue000", "fullwidth at": "\uff20x"})


def test_unsafe_characters_in_events(client: Client, world: dict[str, Any]) -> None:
    org, path = world["org"], f"/events/{world['event']['id']}"
    _all_refused(lambda ch: client.request("POST", "/events", token=org,
                                           json_body={"title": f"T{ch}", "total_tickets": 5}))
    _all_refused(lambda ch: client.request("POST", "/events", token=org,
                                           json_body={"title": "T", "venue": f"V{ch}", "total_tickets": 5}))
    _all_refused(lambda ch: client.request("PUT", path, token=org, json_body={"title": f"T{ch}"}))


def test_unsafe_characters_in_the_login_form(client: Client) -> None:
    # A form cannot carry a lone surrogate (its percent-encoding decodes to U+FFFD).
    in_forms = {k: v for k, v in UNSAFE_CHARACTERS.items() if "surrogate" not in k}
    _all_refused(lambda ch: client.request("POST", "/auth/token",
                                           form={"username": f"a{ch}b@test.com", "password": "x"}), in_forms)


def test_passwords_refuse_only_lone_surrogates(client: Client) -> None:
    def register(password: str) -> Any:
        return client.request("POST", "/users", json_body={
            "email": f"pw-{uuid.uuid4().hex[:10]}@test.com", "password": password, "role": "customer"})

    _all_refused(register, {"lone high surrogate": "long-enough-\ud800", "lone low surrogate": "\udfff-long-enough"})
    for password in ("long\x00enough\x01", "\u202edrowssap-long", "пароль-секрет-9", "👨\u200d👩\u200d👧 family!"):
        r = register(password)
        assert r.status_code == 201, (password, r.text)


def test_joiners_and_emoji_stay_allowed_in_text(client: Client, world: dict[str, Any]) -> None:
    title = "Family day 👨\u200d👩\u200d👧 · کتاب\u200cها"
    r = client.request("POST", "/events", token=world["org"], json_body={"title": title, "total_tickets": 5})
    assert r.status_code == 201, r.text
    assert r.json()["title"] == title


@pytest.mark.parametrize("written", ["1.0", "+1", " 1", "01", "1_0", "１"])
def test_path_and_query_integers_are_plain_decimal_digits(client: Client, written: str) -> None:
    """One resource, one URL: lax spellings of an id or a page size are refused, not read."""
    from urllib.parse import quote

    _, org = account(client, "organizer")
    event = create_event(client, org)
    spelled = written.replace("1", str(event["id"]), 1)
    assert client.request("GET", f"/events/{event['id']}").status_code == 200
    r = client.request("GET", f"/events/{quote(spelled)}")
    assert r.status_code == 422 and r.json()["code"] == "validation_error", (written, r.text)
    r = client.request("GET", "/events", params={"limit": written})
    assert r.status_code == 422 and r.json()["code"] == "validation_error", (written, r.text)


def test_a_trailing_slash_is_a_json_404_not_a_redirect(http_client: Any) -> None:
    r = http_client.request("GET", "/events/")
    assert r.status_code == 404 and r.json()["code"] == "not_found"
