"""The Lambda-emulating router: HTTP <-> API Gateway v2 events, faithfully both ways.

The shared flow tests already run through it (the ``emulated`` transport); these pin
down the translation details that a plain ASGI call would never exercise.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

import local.emulate as emulate
from local.emulate import LambdaEmulator, request_to_lambda_event, response_from_lambda
from tests.support.clients import HttpClient
from tests.support.factories import account, create_event


def _scope(**overrides: Any) -> dict[str, Any]:
    scope = {
        "type": "http", "method": "POST", "path": "/users", "raw_path": b"/users",
        "query_string": b"a=1&a=2&b=x%20y", "scheme": "http",
        "server": ("127.0.0.1", 8000), "client": ("10.1.2.3", 5555),
        "headers": [(b"host", b"localhost:8000"), (b"accept", b"text/html"),
                    (b"accept", b"application/json"), (b"cookie", b"a=1; b=2"),
                    (b"cookie", b"c=3"), (b"content-type", b"application/octet-stream")],
    }
    scope.update(overrides)
    return scope


def test_request_becomes_a_v2_event_like_api_gateway_builds() -> None:
    event = request_to_lambda_event(_scope(), b"\xff\x00binary")
    assert event["version"] == "2.0"
    assert event["requestContext"]["http"]["method"] == "POST"
    assert event["rawPath"] == "/users"
    assert event["rawQueryString"] == "a=1&a=2&b=x%20y"
    # Cookies move to their own list; the Cookie header is gone, as in API Gateway v2.
    assert event["cookies"] == ["a=1", "b=2", "c=3"]
    assert "cookie" not in event["headers"]
    # Repeated headers are folded with commas.
    assert event["headers"]["accept"] == "text/html,application/json"
    assert event["headers"]["host"] == "localhost:8000"
    assert event["headers"]["x-forwarded-proto"] == "http"
    assert event["requestContext"]["http"]["sourceIp"] == "10.1.2.3"
    # A body that is not UTF-8 travels base64-encoded.
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == b"\xff\x00binary"


def test_text_body_travels_as_text() -> None:
    event = request_to_lambda_event(_scope(), b'{"x": "\xc3\xa9"}')
    assert event["isBase64Encoded"] is False
    assert event["body"] == '{"x": "é"}'


def test_v2_response_cookies_become_set_cookie_headers_and_base64_is_decoded() -> None:
    status, headers, body = response_from_lambda({
        "statusCode": 201,
        "headers": {"content-type": "image/png", "x-a": "1,2", "content-length": "999"},
        "cookies": ["s=1; HttpOnly", "t=2"],
        "body": base64.b64encode(b"\x89PNG").decode(),
        "isBase64Encoded": True,
    })
    assert status == 201 and body == b"\x89PNG"
    assert (b"set-cookie", b"s=1; HttpOnly") in headers and (b"set-cookie", b"t=2") in headers
    assert (b"x-a", b"1,2") in headers
    # Framing is recomputed from the decoded body, never copied from the function.
    assert [v for k, v in headers if k == b"content-length"] == [b"4"]


def test_v1_multi_value_headers_are_all_sent() -> None:
    status, headers, body = response_from_lambda({
        "statusCode": 200, "headers": {"x-one": "a"},
        "multiValueHeaders": {"set-cookie": ["a=1", "b=2"]}, "body": "ok",
        "isBase64Encoded": False,
    })
    assert status == 200 and body == b"ok"
    assert [v for k, v in headers if k == b"set-cookie"] == [b"a=1", b"b=2"]
    assert (b"x-one", b"a") in headers


def test_unrouted_path_gets_api_gateways_own_404(emulated_client: HttpClient) -> None:
    r = emulated_client.request("GET", "/no/such/route")
    assert r.status_code == 404
    assert r.json() == {"message": "Not Found"}


def test_docs_openapi_and_health_come_from_the_local_app(emulated_client: HttpClient) -> None:
    assert emulated_client.request("GET", "/docs").status_code == 200
    spec = emulated_client.request("GET", "/openapi.json").json()
    assert "/book/{user_id}" in spec["paths"]
    assert emulated_client.request("GET", "/health/live").json() == {"status": "ok"}


def test_wrong_method_reaches_the_function_which_answers_405(emulated_client: HttpClient) -> None:
    r = emulated_client.request("DELETE", "/users")
    assert r.status_code == 405
    assert r.json()["code"] == "method_not_allowed"


def test_binary_garbage_body_is_a_4xx_not_a_crash(emulated_client: HttpClient) -> None:
    r = emulated_client.request("POST", "/users", content=b"\xff\xfe\x00garbage",
                                headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    assert "code" in r.json()


def test_query_strings_reach_the_function(emulated_client: HttpClient) -> None:
    organizer, token = account(emulated_client, "organizer")
    event = create_event(emulated_client, token, title="Query me")
    r = emulated_client.request("GET", "/events",
                                params={"organizer_id": organizer["id"], "limit": 1})
    assert r.status_code == 200, r.text
    page = r.json()
    assert page["limit"] == 1
    assert [e["id"] for e in page["items"]] == [event["id"]]


@pytest.fixture
def fresh_emulator() -> Any:
    """A separate emulator server, for tests that patch the module it calls."""
    clients: list[HttpClient] = []

    def start() -> HttpClient:
        clients.append(HttpClient(LambdaEmulator(), name="emulated-fresh"))
        return clients[-1]

    yield start
    for client in clients:
        client.close()


def test_function_crash_is_a_502_like_api_gateway(monkeypatch: pytest.MonkeyPatch,
                                                  fresh_emulator: Any) -> None:
    def boom(function: str, event: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("handler blew up")

    monkeypatch.setattr(emulate, "invoke", boom)
    r = fresh_emulator().request("GET", "/events")
    assert r.status_code == 502
    assert r.json() == {"message": "Internal Server Error"}


def test_malformed_lambda_response_is_a_502(monkeypatch: pytest.MonkeyPatch,
                                            fresh_emulator: Any) -> None:
    monkeypatch.setattr(emulate, "invoke", lambda function, event: {"body": "no status"})
    assert fresh_emulator().request("GET", "/events").status_code == 502


def test_oversized_request_is_refused_like_lambdas_payload_limit(
        emulated_client: HttpClient) -> None:
    r = emulated_client.request("POST", "/users",
                                content=b"x" * (emulate.LAMBDA_PAYLOAD_LIMIT + 1),
                                headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json() == {"message": "Request Entity Too Large"}
