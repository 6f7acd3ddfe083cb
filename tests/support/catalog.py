"""Helpers for the catalog's tests: an organizer's event with types, quotas and codes."""

from __future__ import annotations

from typing import Any

from tests.support.clients import Client


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.text else None


def refused(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    return body


def add_type(client: Client, token: str, event_id: int, **fields: Any) -> dict[str, Any]:
    body = {"name": "VIP", **fields}
    return ok(client.request("POST", f"/events/{event_id}/ticket-types", json_body=body, token=token), 201)  # type: ignore[no-any-return]


def add_quota(
    client: Client, token: str, event_id: int, size: int, type_ids: list[int], name: str = "VIP area"
) -> dict[str, Any]:
    body = {"name": name, "size": size, "ticket_type_ids": type_ids}
    return ok(client.request("POST", f"/events/{event_id}/quotas", json_body=body, token=token), 201)  # type: ignore[no-any-return]


def quotas_of(client: Client, token: str, event_id: int) -> list[dict[str, Any]]:
    return ok(client.request("GET", f"/events/{event_id}/quotas", token=token))["items"]  # type: ignore[no-any-return]


def types_of(client: Client, token: str, event_id: int) -> list[dict[str, Any]]:
    return ok(client.request("GET", f"/events/{event_id}/ticket-types", token=token))["items"]  # type: ignore[no-any-return]


def inventory(client: Client, token: str, event_id: int) -> dict[str, Any]:
    return ok(client.request("GET", f"/events/{event_id}/inventory", token=token))  # type: ignore[no-any-return]


def assert_counts_add_up(client: Client, token: str, event_id: int) -> dict[str, Any]:
    """For every quota: sold + held + free == size, none negative; a type's available is the
    least free over its quotas."""
    inv = inventory(client, token, event_id)
    free = {}
    for q in inv["quotas"]:
        assert min(q["sold"], q["held"], q["free"]) >= 0, q
        assert q["sold"] + q["held"] + q["free"] == q["size"], q
        free[q["id"]] = q["free"]
    for t in types_of(client, token, event_id):
        assert t["available"] == min(free[i] for i in t["quota_ids"]), t
    return inv
