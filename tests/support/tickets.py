"""Requests about an event's tickets through the public API, for tests that count them."""

from __future__ import annotations

from typing import Any

from tests.support.clients import Client, Response


def place_hold(client: Client, token: str, event_id: int, quantity: int = 1, **extra: Any) -> Response:
    """``POST /events/{id}/holds``; the answer is the test's to check."""
    return client.request("POST", f"/events/{event_id}/holds", json_body={"quantity": quantity, **extra}, token=token)


def available_tickets(client: Client, event_id: int) -> int:
    return client.request("GET", f"/events/{event_id}").json()["available_tickets"]
