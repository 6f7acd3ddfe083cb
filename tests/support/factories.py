"""Helpers that create users, tokens and events through the public API."""

from __future__ import annotations

import uuid
from typing import Any

from tests.support.clients import Client

PASSWORD = "s3cret-pass"


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@test.com"


def register(client: Client, role: str, *, email: str | None = None, name: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"email": email or unique_email(role), "password": PASSWORD, "role": role}
    if name:
        body["name"] = name
    r = client.request("POST", "/users", json_body=body)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def login(client: Client, email: str, password: str = PASSWORD) -> str:
    r = client.request("POST", "/auth/token", form={"username": email, "password": password})
    assert r.status_code == 200, r.text
    return r.json()["access_token"]  # type: ignore[no-any-return]


def account(client: Client, role: str) -> tuple[dict[str, Any], str]:
    """A registered user and a token for them."""
    user = register(client, role)
    return user, login(client, user["email"])


def create_event(client: Client, token: str, **fields: Any) -> dict[str, Any]:
    body = {"title": "Music Concert", "total_tickets": 50, **fields}
    r = client.request("POST", "/events", json_body=body, token=token)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]
