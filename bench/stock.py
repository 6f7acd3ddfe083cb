"""One stock row against many: pgbench on the booking statement, a one-row and a sharded hot event.

``python -m bench.stock [--database-url URL] [--clients 10,64] [--duration 5] [--shards 16]``

Issue 13, goal 3: without coalescing, concurrent bookings of one event queue on its stock
row's lock. This runs the project's exact ``BOOK_SQL`` (translated by
:mod:`bench.pgbench_booking`) against two events of a scratch database: one with a single
stock row (the one-row design, the baseline) and one with ``--shards`` rows, at each client
count, then checks that no ticket was lost or oversold. The ratio is what travels between
machines; on a shared machine the absolute figures are noise.
"""

from __future__ import annotations

import argparse
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row, tuple_row

from bench import pgbench_booking
from bench.environment import Environment, with_database

TICKETS = 1_000_000  # never sold out within a run: every transaction books


def bench_event(conn: psycopg.Connection[Any], organizer: int, title: str, tickets: int, shards: int,
                per_customer: int) -> int:
    """An event as ``POST /events`` makes it (one default type in one event quota of ``tickets``),
    its quota's stock on ``shards`` rows: the schema's shape without the API (a fixture, not a copy
    of the rules)."""
    from shared.ticketing.inventory import stock_quota

    cur = conn.cursor(row_factory=tuple_row)  # whatever rows the caller's connection makes

    def one(query: str, params: tuple[Any, ...]) -> int:
        row = cur.execute(query, params).fetchone()
        assert row is not None
        return int(row[0])

    event = one("""INSERT INTO events (organizer_id, title, total_tickets, max_tickets_per_customer)
                   VALUES (%s, %s, %s, %s) RETURNING id""", (organizer, title, tickets, per_customer))
    ticket_type = one("INSERT INTO ticket_types (event_id, name, is_default) VALUES (%s, 'General admission', true) "
                      "RETURNING id", (event,))
    quota = one("""INSERT INTO quotas (event_id, name, size, shards, is_event)
                   VALUES (%s, 'Event capacity', %s, %s, true) RETURNING id""", (event, tickets, shards))
    cur.execute("INSERT INTO quota_types (quota_id, ticket_type_id, event_id) VALUES (%s, %s, %s)",
                (quota, ticket_type, event))
    stock_quota(conn, quota)
    return int(event)


def _fixtures(url: str, shards: list[int], customers: int) -> tuple[list[int], tuple[int, int]]:
    """An organizer, ``customers`` customers (contiguous ids) and one event per entry of ``shards``."""
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        org = conn.execute(
            "INSERT INTO users (email, password_hash, role) VALUES ('org@bench.test', 'x', 'organizer') RETURNING id"
        ).fetchone()
        assert org is not None
        ids = conn.execute(
            """INSERT INTO users (email, password_hash, role)
               SELECT 'c' || g || '@bench.test', 'x', 'customer' FROM generate_series(1, %s) g RETURNING id""",
            (customers,),
        ).fetchall()
        events = [bench_event(conn, org["id"], f"{n} rows", TICKETS, n, TICKETS) for n in shards]
        conn.execute("ANALYZE")
    return events, (min(r["id"] for r in ids), max(r["id"] for r in ids))


def _check(url: str, event_id: int) -> dict[str, Any]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        row = conn.execute(
            """WITH st AS (SELECT s.available_tickets FROM quota_stock s JOIN quotas q ON q.id = s.quota_id
                             WHERE q.event_id = %(id)s AND q.is_event)
               SELECT (SELECT sum(available_tickets) FROM st) AS available,
                      (SELECT count(*) FROM st WHERE available_tickets < 0) AS negative,
                      (SELECT coalesce(sum(quantity), 0) FROM bookings WHERE event_id = %(id)s) AS booked,
                      (SELECT count(*) FROM bookings WHERE event_id = %(id)s) AS rows""",
            {"id": event_id},
        ).fetchone()
    assert row is not None
    return {**row, "exact": row["available"] + row["booked"] == TICKETS and row["negative"] == 0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    admin_url = os.environ.get("BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--database-url", default=admin_url,
                        help="a server where a scratch database may be created (and dropped after)")
    parser.add_argument("--clients", default="10,64")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--shards", type=int, default=16)
    args = parser.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",") if c]

    from shared.platform import migrate

    name = f"bench_stock_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.database_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = with_database(args.database_url, name)
    try:
        migrate.migrate(url)
        events, (lo, hi) = _fixtures(url, [1, args.shards], max(clients) * 4)
        env = Environment(database_url=url, redis_url="", postgres_source="configured")
        defines = {"now": datetime.now(UTC).isoformat()}
        common = {"user_id": f"random({lo}, {hi})", "quantity": "1", "default_max": "10", "customer_max": "20"}
        workdir = Path(f"/tmp/{name}")
        results: dict[tuple[int, int], float] = {}
        for event_id, shards in zip(events, [1, args.shards], strict=True):
            variables = {**common, "event_id": str(event_id)}
            script = pgbench_booking.translate(pgbench_booking.book_sql(), variables, defines)
            before = _check(url, event_id)["rows"]
            transactions = 0
            for n in clients:
                run = pgbench_booking.run(env, script, clients=n, duration=args.duration, workdir=workdir,
                                          label=f"stock{shards}", defines=defines)
                results[shards, n] = run.tps
                transactions += run.transactions
                print(f"  {shards:>3} row(s), {n:>3} clients: {run.tps:>9.1f} bookings/s "
                      f"(failed {run.failed})", flush=True)
            check = _check(url, event_id)
            ok = check["exact"] and check["rows"] - before == transactions
            print(f"  {shards:>3} row(s): {check['rows']} bookings, {check['available']} left, exact: {ok}")
        peak = max(v for (s, _), v in results.items() if s == 1)
        print(f"\n  one-row peak {peak:.1f}/s; ratios to it:")
        for (s, n), v in sorted(results.items()):
            print(f"  {s:>3} row(s), {n:>3} clients: {v / peak:.2f}x")
    finally:
        with psycopg.connect(args.database_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
