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


# -- straight to PostgreSQL: types, quotas and codes for tests of the granting paths ------------


def sql_type(sql: Any, event_id: int, name: str = "VIP", **fields: Any) -> int:
    """A ticket type of the event (in its event quota, like every type), written with SQL."""
    columns = {"name": name, "price_minor": 0, **fields}
    names = ", ".join(columns)
    values = ", ".join(f"%({c})s" for c in columns)
    type_id: int = sql.execute(
        f"INSERT INTO ticket_types (event_id, {names}) VALUES (%(event_id)s, {values}) RETURNING id",
        {"event_id": event_id, **columns},
    ).fetchone()["id"]
    sql.execute(
        """INSERT INTO quota_types (quota_id, ticket_type_id, event_id)
           SELECT id, %s, event_id FROM quotas WHERE event_id = %s AND is_event""",
        (type_id, event_id),
    )
    return type_id


def sql_quota(sql: Any, event_id: int, size: int, type_ids: list[int], name: str = "VIP area", shards: int = 1) -> int:
    """A quota of ``size`` over ``type_ids`` with its stock rows, written with SQL."""
    from shared.ticketing.inventory import stock_quota

    quota_id: int = sql.execute(
        "INSERT INTO quotas (event_id, name, size, shards) VALUES (%s, %s, %s, %s) RETURNING id",
        (event_id, name, size, shards),
    ).fetchone()["id"]
    sql.execute(
        "INSERT INTO quota_types (quota_id, ticket_type_id, event_id) SELECT %s, t, %s FROM unnest(%s::bigint[]) t",
        (quota_id, event_id, type_ids),
    )
    stock_quota(sql, quota_id)
    return quota_id


def sql_code(sql: Any, event_id: int, code: str, type_ids: list[int], max_uses: int = 10, **fields: Any) -> int:
    """An access code unlocking ``type_ids``, written with SQL (stored as its digest)."""
    from shared.ticketing.access_codes import digest

    columns = {"max_uses": max_uses, **fields}
    names = ", ".join(columns)
    values = ", ".join(f"%({c})s" for c in columns)
    code_id: int = sql.execute(
        f"""INSERT INTO access_codes (event_id, code_digest, {names})
            VALUES (%(event_id)s, %(digest)s, {values}) RETURNING id""",
        {"event_id": event_id, "digest": digest(code), **columns},
    ).fetchone()["id"]
    sql.execute(
        """INSERT INTO access_code_types (access_code_id, ticket_type_id, event_id)
           SELECT %s, t, %s FROM unnest(%s::bigint[]) t""",
        (code_id, event_id, type_ids),
    )
    return code_id


def sql_touch(sql: Any, event_id: int) -> None:
    """Bump the event's gate after changing its types with SQL, as every catalog writer does."""
    sql.execute("UPDATE events SET gate_seq = gate_seq + 1 WHERE id = %s", (event_id,))
    sql.execute(
        """UPDATE quota_stock SET gate_seq = (SELECT gate_seq FROM events WHERE id = %(id)s)
            WHERE quota_id IN (SELECT id FROM quotas WHERE event_id = %(id)s)""",
        {"id": event_id},
    )


def quota_left(sql: Any, quota_id: int) -> int:
    """A quota's available tickets as stored (the sum of its stock rows)."""
    return int(sql.execute(
        "SELECT coalesce(sum(available_tickets), 0) AS n FROM quota_stock WHERE quota_id = %s", (quota_id,)
    ).fetchone()["n"])
