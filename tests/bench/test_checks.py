"""The rush's oversell check holds every quota to its types' lines, and says which one failed."""

from __future__ import annotations

from typing import Any

import psycopg

from bench import rush
from bench.stock import bench_event


def _fixture(sql: psycopg.Connection[Any]) -> dict[str, int]:
    """An event of 100 tickets on two stock rows with a VIP type in a VIP quota of 10 (one row)."""
    from shared.ticketing.inventory import stock_quota

    org = sql.execute("INSERT INTO users (email, password_hash, role) VALUES ("
                      "'chk-org-' || gen_random_uuid() || '@bench.test', 'x', 'organizer') RETURNING id").fetchone()
    user = sql.execute("INSERT INTO users (email, password_hash, role) VALUES ("
                       "'chk-c-' || gen_random_uuid() || '@bench.test', 'x', 'customer') RETURNING id").fetchone()
    assert org is not None and user is not None
    event = bench_event(sql, org["id"], "check", 100, 2, 100)
    ids = sql.execute(
        """WITH vip AS (INSERT INTO ticket_types (event_id, name, price_minor) VALUES (%(e)s, 'VIP', 100) RETURNING id),
                quota AS (INSERT INTO quotas (event_id, name, size, shards) VALUES (%(e)s, 'VIP', 10, 1) RETURNING id),
                listed AS (INSERT INTO quota_types (quota_id, ticket_type_id, event_id)
                           SELECT quota.id, vip.id, %(e)s FROM quota, vip
                           UNION ALL
                           SELECT q.id, vip.id, %(e)s FROM quotas q, vip WHERE q.event_id = %(e)s AND q.is_event)
           SELECT vip.id AS vip, quota.id AS vip_quota,
                  (SELECT id FROM ticket_types WHERE event_id = %(e)s AND is_default) AS general,
                  (SELECT id FROM quotas WHERE event_id = %(e)s AND is_event) AS event_quota
             FROM vip, quota""", {"e": event}).fetchone()
    assert ids is not None
    stock_quota(sql, ids["vip_quota"])
    return {"event": event, "user": user["id"], **ids}


def _order(sql: psycopg.Connection[Any], f: dict[str, int], type_key: str, quotas: list[str]) -> None:
    """One order of one ticket as a grant leaves it: a line, an outbox row, a unit off each quota's stock."""
    booking = sql.execute("INSERT INTO bookings (event_id, user_id, quantity) VALUES (%s, %s, 1) RETURNING id",
                          (f["event"], f["user"])).fetchone()
    assert booking is not None
    sql.execute("INSERT INTO booking_lines (booking_id, ticket_type_id, quantity, unit_price_minor) "
                "VALUES (%s, %s, 1, 0)", (booking["id"], f[type_key]))
    sql.execute("INSERT INTO outbox (task, payload) VALUES ('booking_confirmation', "
                "jsonb_build_object('booking_id', %s::bigint, 'event_id', %s::bigint))", (booking["id"], f["event"]))
    for quota in quotas:
        _take(sql, f[quota])


def _take(sql: psycopg.Connection[Any], quota_id: int) -> None:
    sql.execute("""UPDATE quota_stock SET available_tickets = available_tickets - 1
                    WHERE (quota_id, shard) = (SELECT quota_id, min(shard) FROM quota_stock
                                                WHERE quota_id = %s AND available_tickets > 0 GROUP BY quota_id)""",
                (quota_id,))


def test_every_quota_is_checked_against_its_types_lines(database: str, sql: psycopg.Connection[Any]) -> None:
    f = _fixture(sql)
    before = rush.max_booking_id(database)
    _order(sql, f, "general", ["event_quota"])
    _order(sql, f, "vip", ["event_quota", "vip_quota"])
    _order(sql, f, "vip", ["event_quota", "vip_quota"])
    types = {f["general"]: 1, f["vip"]: 2}
    check = rush.ticket_check(database, [f["event"]], after_booking_id=before, client_successes=3,
                              ids_distinct=True, client_types=types)
    assert check["ok"] and check["problems"] == [] and check["quotas"] == 2
    gone = {q["name"]: (q["gone"], q["sold"], q["size"]) for q in check["per_quota"]}
    assert gone == {"Event capacity": (3, 3, 100), "VIP": (2, 2, 10)}
    assert check["lines_by_type"] == types and check["booking_lines_rows"] == check["outbox_rows"] == 3

    # The answers' types must match the lines' types, not only their count.
    swapped = rush.ticket_check(database, [f["event"]], after_booking_id=before, client_successes=3,
                                client_types={f["general"]: 2, f["vip"]: 1})
    assert not swapped["ok"] and any(f"type {f['vip']}: 2 lines for 1 successes" in p for p in swapped["problems"])

    # A unit gone from the VIP quota that no line took: that quota, and only it, is named.
    _take(sql, f["vip_quota"])
    check = rush.ticket_check(database, [f["event"]], after_booking_id=before, client_successes=3)
    assert not check["ok"] and check["quotas_sold_ne_taken"] == 1 and check["events_sold_ne_booked"] == 0
    assert check["problems"] == [f"quota {f['vip_quota']} (VIP): 3 gone from its stock, lines took 2"]
