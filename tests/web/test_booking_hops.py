"""A booking request crosses no thread-pool hop it does not need (issue 13).

Counted at ``anyio.to_thread.run_sync``, which Starlette's ``run_in_threadpool`` (sync
dependencies and routes) and ``shared.platform.threads.in_thread`` both go through. On a
server the only hop left is the lane's transaction; through Mangum, where a loop serves one
invocation, none (the booking and its key's SQL run on that loop).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import anyio.to_thread
import pytest

from functions.booking.handler import handler as booking_handler
from local.lambda_events import build_lambda_event
from tests.support.clients import LambdaClient
from tests.support.event_loop import run_on_new_loop
from tests.support.factories import account, create_event


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    calls: list[Any] = []
    original = anyio.to_thread.run_sync

    async def counted(func: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(getattr(func, "func", func))
        return await original(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    return calls


@pytest.fixture
def booking(database: str) -> tuple[str, int]:
    client = LambdaClient("v2")
    _, organizer = account(client, "organizer")
    _, token = account(client, "customer")
    return token, create_event(client, organizer, total_tickets=100)["id"]


def _headers(token: str, key: str | None) -> dict[str, str]:
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    if key:
        headers["idempotency-key"] = key
    return headers


@pytest.mark.parametrize("keyed", [False, True])
def test_through_mangum_a_booking_crosses_no_thread(booking: tuple[str, int], hops: list[Any], keyed: bool) -> None:
    token, event_id = booking
    request = build_lambda_event("POST", "/bookings", body=json.dumps({"event_id": event_id}),
                                 headers=_headers(token, uuid.uuid4().hex if keyed else None))
    assert booking_handler(request, None)["statusCode"] == 201
    assert hops == []


def test_on_a_server_only_the_lanes_transaction_crosses_to_a_thread(booking: tuple[str, int], hops: list[Any]) -> None:
    from local.app import app

    token, event_id = booking
    body = json.dumps({"event_id": event_id}).encode()
    headers = [(k.encode(), v.encode()) for k, v in _headers(token, None).items()]
    headers.append((b"content-length", str(len(body)).encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/bookings", "raw_path": b"/bookings", "query_string": b"",
             "root_path": "", "headers": headers, "client": ("127.0.0.1", 40000),
             "server": ("127.0.0.1", 8000)}
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    run_on_new_loop(app(scope, receive, send))
    assert statuses == [201]
    assert [getattr(call, "__name__", repr(call)) for call in hops] == ["book"]  # alone in its lane
