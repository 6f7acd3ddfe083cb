"""Timestamps are range-checked before anything is written, and reads never fail on a stored one.

The security review's case: ``start_time: "9999-12-31T23:30:00-01:00"`` (year 10000 in UTC)
answered 422 after the INSERT had committed, and from then on listing, reading, updating
and cancelling that event answered 422 for everyone.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from shared.platform import migrate as migrations
from tests.support import databases
from tests.support.clients import Client
from tests.support.factories import account, create_event

REVIEW_CASE = "9999-12-31T23:30:00-01:00"
REFUSED = [
    REVIEW_CASE,
    "9999-12-31T23:59:59Z",
    "3000-01-01T00:00:00Z",
    "1899-12-31T23:59:59Z",
    "0001-01-01T00:00:00+01:00",
    "2030-06-30T23:59:60Z",  # a leap second Python cannot hold
    "2030-01-01",  # a date, not a date-time
    "2030-01-01T10:00:00",  # no offset
    "2030-01-01 10:00:00Z",  # not RFC 3339's T
    "2030-01-01T10:00:00+24:00",
    1_700_000_000,  # a Unix time: the schema says date-time string
    0,
    1.5,
    True,
    ["2030-01-01T10:00:00Z"],
]
ACCEPTED = ["1900-01-01T00:00:00+23:59", "2999-12-31T23:59:59.999999-23:59", "2030-06-01t20:00:00.5z"]


@pytest.fixture
def organizer(client: Client) -> tuple[dict[str, Any], str]:
    return account(client, "organizer")


def _events_of(sql: psycopg.Connection, organizer_id: int) -> list[dict[str, Any]]:
    return sql.execute(
        "SELECT id, start_time::text AS start_time, end_time::text AS end_time FROM events WHERE organizer_id = %s",
        (organizer_id,),
    ).fetchall()


def test_the_reviews_case_is_refused_and_nothing_is_stored(
    client: Client, organizer: tuple[dict[str, Any], str], sql: psycopg.Connection
) -> None:
    user, token = organizer
    body = {"title": "T", "total_tickets": 5, "start_time": REVIEW_CASE}
    r = client.request("POST", "/events", json_body=body, token=token)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "validation_error"
    assert _events_of(sql, user["id"]) == []
    r = client.request("GET", "/events", params={"organizer_id": user["id"]})
    assert r.status_code == 200 and r.json()["items"] == []


@pytest.mark.parametrize("value", REFUSED, ids=repr)
def test_every_timestamp_field_of_every_route_refuses_out_of_range_and_non_strings(
    client: Client, organizer: tuple[dict[str, Any], str], sql: psycopg.Connection, value: Any
) -> None:
    user, token = organizer
    event = create_event(client, token, start_time="2030-01-01T10:00:00Z", end_time="2030-01-01T12:00:00Z")
    before = _events_of(sql, user["id"])
    routes = [("POST", "/events"), ("POST", f"/events/{user['id']}"), ("PUT", f"/events/{event['id']}")]
    for field in ("start_time", "end_time"):
        for method, path in routes:
            r = client.request(method, path, json_body={"title": "T", "total_tickets": 5, field: value}, token=token)
            assert r.status_code == 422, (method, path, r.text)
            assert r.json()["code"] == "validation_error"
            assert r.json()["details"]["errors"][0]["loc"] == ["body", field]
    assert _events_of(sql, user["id"]) == before


@pytest.mark.parametrize("value", ACCEPTED)
def test_the_edges_of_the_window_are_accepted_and_read_back(
    client: Client, organizer: tuple[dict[str, Any], str], value: str
) -> None:
    _, token = organizer
    event = create_event(client, token, start_time=value)
    r = client.request("GET", f"/events/{event['id']}")
    assert r.status_code == 200, r.text
    assert r.json()["start_time"] == event["start_time"]


def test_the_schema_says_what_is_accepted(client: Client) -> None:
    import re

    from local.app import app

    start = app.openapi()["components"]["schemas"]["EventCreate"]["properties"]["start_time"]["anyOf"][0]
    assert start["type"] == "string" and start["format"] == "date-time"
    pattern = re.compile(start["pattern"])
    assert all(pattern.match(v) for v in ACCEPTED)
    assert not any(isinstance(v, str) and pattern.match(v) for v in REFUSED)


@pytest.mark.parametrize("value", ["10000-01-01 00:30:00+00", "infinity", "-infinity", "0044-03-15 BC", "1899-12-30"])
def test_the_database_refuses_what_the_api_would(v2: Client, sql: psycopg.Connection, value: str) -> None:
    event = create_event(v2, account(v2, "organizer")[1])  # no times yet
    for column in ("start_time", "end_time"):
        with pytest.raises(psycopg.errors.CheckViolation, match=f"events_{column}_in_range"):
            sql.execute(f"UPDATE events SET {column} = %s WHERE id = %s", (value, event["id"]))


@pytest.mark.parametrize("binary", [False, True])
def test_reads_never_fail_on_a_value_python_cannot_hold(database: str, binary: bool) -> None:
    from datetime import UTC, datetime

    from shared.platform.db import connection

    with connection() as conn:
        row = conn.execute(
            "SELECT '10000-01-01 00:30:00+00'::timestamptz AS big, 'infinity'::timestamptz AS inf,"
            " '-infinity'::timestamptz AS ninf, '0044-03-15 BC'::timestamptz AS bc,"
            " '2030-01-01 10:00:00+00'::timestamptz AS fine",
            binary=binary,
        ).fetchone()
    assert row is not None
    far_future, far_past = datetime.max.replace(tzinfo=UTC), datetime.min.replace(tzinfo=UTC)
    assert (row["big"], row["inf"], row["ninf"], row["bc"]) == (far_future, far_future, far_past, far_past)
    assert row["fine"] == datetime(2030, 1, 1, 10, tzinfo=UTC)


@pytest.fixture
def unrepresentable_event(client: Client, sql: psycopg.Connection) -> Iterator[tuple[dict[str, Any], str]]:
    """An event whose start_time Python cannot hold, as a database from before 0006 may have."""
    _, token = account(client, "organizer")
    event = create_event(client, token)
    sql.execute("ALTER TABLE events DROP CONSTRAINT events_start_time_in_range")
    try:
        sql.execute("UPDATE events SET start_time = '10000-01-01 00:30:00+00' WHERE id = %s", (event["id"],))
        yield event, token
    finally:
        sql.execute("UPDATE events SET start_time = NULL WHERE id = %s", (event["id"],))
        sql.execute(
            "ALTER TABLE events ADD CONSTRAINT events_start_time_in_range"
            " CHECK (start_time >= '1899-12-31 00:00:00+00' AND start_time < '3000-01-02 00:00:00+00')"
        )


def test_listing_reading_updating_and_cancelling_work_with_such_a_row(
    client: Client, unrepresentable_event: tuple[dict[str, Any], str]
) -> None:
    event, token = unrepresentable_event
    r = client.request("GET", "/events", params={"organizer_id": event["organizer_id"]})
    assert r.status_code == 200, r.text
    assert r.json()["items"][0]["start_time"].startswith("9999-12-31T23:59:59")
    assert client.request("GET", f"/events/{event['id']}").status_code == 200
    r = client.request("PUT", f"/events/{event['id']}", json_body={"title": "Renamed"}, token=token)
    assert r.status_code == 200, r.text
    r = client.request("POST", f"/events/{event['id']}/cancel", token=token)
    assert r.status_code == 200, r.text


@pytest.fixture
def scratch_database(server_urls: dict[str, str]) -> Iterator[str]:
    with databases.scratch_database(server_urls["database"], "ts_migrate") as url:
        yield url


def test_migration_0006_repairs_stored_times_then_refuses_them(
    scratch_database: str, tmp_path: Path
) -> None:
    databases.migrate_before(scratch_database, 6, tmp_path / "before-0006")
    with psycopg.connect(scratch_database, autocommit=True) as conn:
        conn.execute("INSERT INTO users (email, password_hash, role) VALUES ('o@test.com', 'x', 'organizer')")
        rows = [
            ("10000-01-01 00:30:00+00", None),
            ("-infinity", "2030-01-01 00:00:00+00"),
            ("2030-01-01 00:00:00+00", "infinity"),
            ("2030-01-01 00:00:00+00", "2030-01-02 00:00:00+00"),
        ]
        for start, end in rows:
            conn.execute(
                "INSERT INTO events (organizer_id, title, start_time, end_time, total_tickets, available_tickets)"
                " SELECT id, 'T', %s, %s, 5, 5 FROM users",
                (start, end),
            )
    assert migrations.migrate(scratch_database) == [m.version for m in migrations.discover() if m.version >= 6]
    with psycopg.connect(scratch_database) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        stored = conn.execute("SELECT start_time::text, end_time::text FROM events ORDER BY id").fetchall()
        assert stored == [
            (None, None),
            (None, "2030-01-01 00:00:00+00"),
            ("2030-01-01 00:00:00+00", None),
            ("2030-01-01 00:00:00+00", "2030-01-02 00:00:00+00"),
        ]
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE events SET start_time = 'infinity'")


def test_a_path_that_skips_validation_still_stores_nothing_and_gets_422(v2: Client, sql: psycopg.Connection) -> None:
    # The database's range check is the net under a route that forgot the Timestamp type:
    # its violation is the client's 422; any other failed check stays a 500 (a bug).
    from fastapi import APIRouter
    from fastapi.testclient import TestClient

    from shared.platform.db import connection
    from shared.web.app import create_app

    event = create_event(v2, account(v2, "organizer")[1])
    router = APIRouter()

    @router.post("/set/{column}/{value}")
    def set_value(column: str, value: str) -> dict[str, str]:
        with connection() as conn:
            conn.execute(f"UPDATE events SET {column} = %s WHERE id = %s", (value, event["id"]))
        return {}

    client = TestClient(create_app("probe", [router]))
    r = client.post("/set/start_time/infinity")
    assert (r.status_code, r.json()["code"]) == (422, "invalid_value")
    r = client.post("/set/total_tickets/-1")
    assert (r.status_code, r.json()["code"]) == (500, "internal_error")
    stored = sql.execute("SELECT start_time, total_tickets FROM events WHERE id = %s", (event["id"],)).fetchone()
    assert stored == {"start_time": None, "total_tickets": 50}
