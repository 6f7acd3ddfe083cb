"""The ticket rush under production defaults: the booking statement's limit in pgbench vs the full stack.

    python -m bench rush [--duration 10] [--clients 64,256,1024] [--workers 1,2] [--generator auto|wrk|python]
                         [--quick] [--skip-pgbench]

In one run, on one PostgreSQL (see bench/environment.py):

1. pgbench runs ``shared.ticketing.bookings.BOOK_SQL`` itself on one hot event (one row:
   its peak over client counts is the baseline, 1.00) and over many events.
2. The generator's ceiling (wrk and the booking script against a canned-response server) and
   hello-world FastAPI under the API's own uvicorn command (bench/floor.py), both at 64
   connections: what any server could reach here, and what the framework alone reaches.
3. ``uvicorn local.app:app`` with production defaults (``bench.floor.server_env``: APP_ENV
   production, a generated JWT secret, LOG_LEVEL=INFO, rate limits on with their default
   rules; the default pool, coalescing on) plus ``TRUSTED_PROXIES=127.0.0.1``: the load
   generator stands where a deployment's load balancer stands, and each request names its
   customer's address in ``X-Forwarded-For``. The crowd is large enough that the default
   limits (20 bookings per customer per 60 s, 300 per address) never refuse: sized from the
   pgbench peak (the goal rate) x a margin over the run's booking seconds, registered and
   logged in through the API, each customer from its own address, with cheap password
   hashing on this server (setup, not the measured path; the table says so). Hot-event
   ``POST /bookings`` at 64, 256 and 1,024 connections; at 64 with a unique
   ``Idempotency-Key`` per request; at 64 under ``--workers 2``; many events; a sell-out.
   The load comes from ``wrk -t1`` (bench/wrk_booking.py) when on PATH, else bench/loadgen.py.
4. Every scenario is checked: bookings rows == tickets taken for each event, successes
   counted by the client == bookings rows (wrk: within the requests still in flight when it
   stopped), every booking id distinct, one outbox row per booking, zero 5xx, no 429 (a
   429 means the crowd was too small for the rate, not a measurement); a sell-out must end
   with no ticket left, none oversold, and no refusal but ``sold_out``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg.rows import dict_row

from bench import environment, loadgen, pgbench_booking, three_types
from bench.environment import Environment
from bench.wrk_crowd import (
    SETUP_THREADS,
    Crowd,
    Customer,
    Load,
    contiguous_ids,
    create_customers,
    create_events,
    crowd_size,
    key_prefix,
    organizer_token,
    sellout_load,
)
from local.embedded import free_port
from local.processes import Child, spawn, tree_cpu_seconds, wait_http_ok

TICKETS_NOT_SELLING_OUT = 1_000_000  # the API's largest event
# Per-event limit of the events that must not sell out (an event setting; the server default
# stays): the rate limits, not the event, bound what one customer takes in a rush.
NO_CUSTOMER_LIMIT = 1_000_000
LOAD_BALANCER = "127.0.0.1"  # TRUSTED_PROXIES: the generator connects from here
# Registration and login are setup: cheap argon2 on the bench's server only.
SETUP_ENV = {"PASSWORD_HASH_TIME_COST": "1", "PASSWORD_HASH_MEMORY_KIB": "1024"}
BASE_CLIENTS = 64
DEFAULT_EXPECT_RATE = 2000.0  # bookings/s the crowd is sized for when pgbench did not run
# --quick runs a handful of connections: sized for this (x the margin), the crowd registers
# in seconds; a faster machine that draws more sees 429s and the check says to raise it.
QUICK_EXPECT_RATE = 1000.0
GOALS = {"vs_peak": 1.0, "p99_ms": 50.0, "no_collapse": 0.9, "idempotent": 0.8}  # issue 13, goal 2
FD_HEADROOM = 256
# After wrk stops: bookings unchanged for this long means its in-flight requests are done
# (a booking waits at most BOOKING_LANE_WAIT_SECONDS, 5 s, for its batch; the bound covers it).
SETTLE_QUIET_S = 0.5
SETTLE_BOUND_S = 30.0
# Successes from which every type of a mix must have been booked (the rarest, 20%, then
# misses with a chance below 1e-9).
MIX_MIN_SUCCESSES = 100


@dataclass
class Options:
    duration: float = 10.0
    pg_duration: float = 5.0
    pg_clients: list[int] = field(default_factory=lambda: [1, 4, 8, 16, 32, 64])
    clients: list[int] = field(default_factory=lambda: [64, 256, 1024])
    types_clients: list[int] = field(default_factory=lambda: [64, 256])
    workers: list[int] = field(default_factory=lambda: [1, 2])
    idempotent: bool = True
    sellout_tickets: int = 5000
    sellout_clients: int = 256
    sellout_timeout: float = 120.0
    spread_events: int = 1000
    spread_clients: list[int] = field(default_factory=lambda: [64])
    procs: int = 2
    warmup: float = 2.0
    generator: str = "auto"
    expect_rate: float | None = None
    rate_margin: float = 1.5
    customers: int | None = None
    skip_pgbench: bool = False
    skip_http: bool = False
    server_env: dict[str, str] = field(default_factory=dict)
    pg_vars: dict[str, str] = field(default_factory=dict)

    @classmethod
    def quick(cls) -> Options:
        """A seconds-long correctness run (the smoke test): tiny, not a measurement."""
        return cls(duration=2.0, pg_duration=1.0, pg_clients=[1, 4], clients=[8], types_clients=[8],
                   sellout_tickets=200,
                   sellout_clients=8, sellout_timeout=30.0, spread_events=20, spread_clients=[8], procs=1,
                   warmup=0.0, expect_rate=QUICK_EXPECT_RATE)

    @property
    def base_clients(self) -> int:
        """The connections of the comparisons (idempotent, workers, ceiling, hello-world): 64."""
        return BASE_CLIENTS if BASE_CLIENTS in self.clients else min(self.clients)

    def booking_seconds(self) -> float:
        """Seconds of bookings drawn from the crowd in one run (warm-ups included)."""
        extra_servers = len(self.workers) - 1
        timed = (len(self.clients) + len(self.types_clients) + int(self.idempotent) + len(self.spread_clients)
                 + extra_servers)
        return self.warmup * (1 + extra_servers) + self.duration * timed


def add_arguments(parser: argparse.ArgumentParser, *, generator: bool = True) -> None:
    """The rush's options; ``generator``: add ``--generator`` (the floor adds it when both run)."""
    ints = lambda text: [int(x) for x in text.split(",") if x]  # noqa: E731
    parser.add_argument("--quick", action="store_true", help="tiny correctness run (seconds); overrides defaults")
    parser.add_argument("--duration", type=float, help="seconds per HTTP scenario (default 10)")
    parser.add_argument("--pg-duration", type=float, help="seconds per pgbench run (default 5)")
    parser.add_argument("--pg-clients", type=ints, help="pgbench client counts (default 1,4,8,16,32,64)")
    parser.add_argument("--clients", type=ints, help="connections on the hot event (default 64,256,1024)")
    parser.add_argument("--types-clients", type=ints,
                        help="connections on the three-type hot event (default 64,256; an empty value skips it)")
    parser.add_argument("--workers", type=ints,
                        help="uvicorn worker counts: the first serves every scenario, each other one "
                             "the hot event at 64 connections (default 1,2)")
    parser.add_argument("--no-idempotent", dest="idempotent", action="store_false", default=None,
                        help="skip the run with an Idempotency-Key on every request")
    parser.add_argument("--spread-clients", type=ints, help="connections over many events (default 64)")
    parser.add_argument("--spread-events", type=int, help="events in the spread scenarios (default 1000)")
    parser.add_argument("--sellout-tickets", type=int, help="tickets in the sell-out rush (default 5000)")
    parser.add_argument("--sellout-clients", type=int, help="clients in the sell-out rush (default 256)")
    parser.add_argument("--procs", type=int, help="Python load generator processes (default 2)")
    parser.add_argument("--warmup", type=float, help="seconds of unreported bookings before measuring")
    parser.add_argument("--customers", type=int, help="customers in the crowd (default: sized from the rate)")
    parser.add_argument("--expect-rate", type=float,
                        help="bookings/s the crowd is sized for (default: the pgbench peak), times 1.5")
    parser.add_argument("--skip-pgbench", action="store_true", help="no pgbench runs (no ratios)")
    parser.add_argument("--skip-http", action="store_true", help="pgbench only")
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for the uvicorn server (e.g. DB_POOL_MAX=32; the rows "
                             "then name it as a changed default); repeatable")
    parser.add_argument("--pg-var", action="append", default=[], metavar="NAME=EXPR",
                        help="pgbench value for a BOOK_SQL parameter the harness does not know; repeatable")
    if generator:
        parser.add_argument("--generator", choices=("auto", "wrk", "python"),
                            help="load generator (default auto: wrk when on PATH, else bench/loadgen.py)")


def options_from(args: argparse.Namespace) -> Options:
    opts = Options.quick() if args.quick else Options()
    for name in ("duration", "pg_duration", "pg_clients", "clients", "types_clients", "workers", "idempotent",
                 "spread_clients", "spread_events", "sellout_tickets", "sellout_clients", "procs", "warmup",
                 "customers", "expect_rate", "generator"):
        value = getattr(args, name, None)
        if value is not None:
            setattr(opts, name, value)
    opts.skip_pgbench, opts.skip_http = args.skip_pgbench, args.skip_http
    opts.server_env = dict(item.split("=", 1) for item in args.server_env)
    opts.pg_vars = dict(item.split("=", 1) for item in args.pg_var)
    if args.quick and args.clients and args.sellout_clients is None:
        opts.sellout_clients = max(args.clients)
    if args.quick and args.clients and args.spread_clients is None:
        opts.spread_clients = [max(args.clients)]
    if args.quick and args.clients and args.types_clients is None:
        opts.types_clients = [max(args.clients)]
    return opts


# --------------------------------------------------------------------------- the server


def uvicorn_command(app: str, port: int, workers: int = 1) -> list[str]:
    """The API's uvicorn command, for ``app`` (module:attribute) on ``port``: every bench serves with it.

    ``--no-access-log``: the project's apps write their own request line (uvicorn's is off in
    them anyway); a hello-world app must not pay for one the API does not write.
    """
    return [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", "--no-access-log", "--no-proxy-headers", "--workers", str(workers)]


def server_env(env: Environment, extra: dict[str, str]) -> dict[str, str]:
    """Production defaults (bench/floor.py's, one definition) behind a trusted load balancer.

    Beside the defaults: TRUSTED_PROXIES (how a deployment behind a load balancer is
    configured), cheap password hashing (registration and login are setup here), a queue of
    its own (nothing consumes it; a configured Redis's real queue stays clean), and
    ``--server-env``, which the rows then name.
    """
    from bench import floor  # floor imports uvicorn_command from here

    return {**floor.server_env(env.database_url, env.redis_url), "TRUSTED_PROXIES": LOAD_BALANCER, **SETUP_ENV,
            "NOTIFY_QUEUE": f"bench-rush-{os.getpid()}", **extra}


class ApiServer:
    """``uvicorn local.app:app`` as a child process, as a container runs it."""

    def __init__(self, env: dict[str, str], log_path: Path, workers: int = 1) -> None:
        self.port = free_port()
        self.workers = workers
        self.log_path = log_path
        self.env = env
        self.child: Child | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> None:
        self.child = spawn("api", uvicorn_command("local.app:app", self.port, self.workers), self.env, self.log_path,
                           follow=False)
        wait_http_ok(f"{self.base_url}/health/live", self.child, timeout)

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
            self.child = None


class CpuProbe:
    """Cores busy in the server, in PostgreSQL and on the whole machine between two snapshots.

    The machine figure minus server, PostgreSQL and load generator is other work sharing
    the cores (pgbench-free scenarios only have those three): it says how clean a run was.
    """

    def __init__(self, server_pid: int | None, postgres_pid: int | None, server_children: bool = False) -> None:
        # Workers beyond one are the server's child processes: counted with it then.
        self.server_pid, self.postgres_pid, self.server_children = server_pid, postgres_pid, server_children

    def snapshot(self) -> dict[str, float | None]:
        return {
            "server": tree_cpu_seconds(self.server_pid, children=self.server_children) if self.server_pid else None,
            "postgres": tree_cpu_seconds(self.postgres_pid) if self.postgres_pid else None,
            "machine": self._machine_busy(),
            "wall": time.monotonic(),
        }

    @staticmethod
    def _machine_busy() -> float | None:
        try:
            import psutil

            t = psutil.cpu_times()
            return float(t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0))
        except Exception:
            return None

    @staticmethod
    def cores(before: dict[str, float | None], after: dict[str, float | None]) -> dict[str, float | None]:
        """Average cores busy per process (tree) over the interval."""
        wall = (after["wall"] or 0) - (before["wall"] or 0)
        out: dict[str, float | None] = {}
        for key in ("server", "postgres", "machine"):
            a, b = after[key], before[key]
            # max(0): a backend that exits between snapshots takes its CPU time with it.
            out[key] = round(max(0.0, a - b) / wall, 2) if a is not None and b is not None and wall > 0 else None
        return out


# --------------------------------------------------------------------------- the crowd's size


def customer_limit(opts: Options) -> int:
    """The server's default per-customer limit (the sell-out event's)."""
    from shared.platform.settings import Settings

    default = Settings.model_fields["max_tickets_per_customer"].default
    return int(opts.server_env.get("MAX_TICKETS_PER_CUSTOMER", default))


def sellout_customers(opts: Options) -> int:
    """Customers for the sell-out: each connection rotates over as many, a third of the limit each on average."""
    per_connection = math.ceil(3 * opts.sellout_tickets / customer_limit(opts) / opts.sellout_clients)
    return max(1, per_connection) * opts.sellout_clients


# --------------------------------------------------------------------------- checks


def max_booking_id(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        return int(conn.execute("SELECT coalesce(max(id), 0) FROM bookings").fetchone()[0])  # type: ignore[index]


def settle(database_url: str, event_ids: list[int], after_booking_id: int, *, quiet: float = SETTLE_QUIET_S,
           bound: float = SETTLE_BOUND_S) -> float:
    """Wait until the scenario's bookings stop growing: requests wrk left in flight finish on
    the server after it stopped (each within the booking's own bounds). Returns the seconds waited."""
    t0 = time.monotonic()
    last = -1
    with psycopg.connect(database_url, autocommit=True) as conn:
        while time.monotonic() - t0 < bound:
            rows = conn.execute("SELECT count(*) FROM bookings WHERE event_id = ANY(%s) AND id > %s",
                                (event_ids, after_booking_id)).fetchone()[0]  # type: ignore[index]
            if rows == last:
                break
            last = rows
            time.sleep(quiet)
    return round(time.monotonic() - t0, 2)


# Order states that took stock (payment comes later: a pending order holds its tickets too).
TAKING_STATUSES = ("confirmed", "pending_payment")

_QUOTAS_SQL = """
WITH q AS (SELECT id, event_id, name, size, is_event FROM quotas WHERE event_id = ANY(%(events)s)),
stock AS (SELECT st.quota_id, sum(st.available_tickets)::bigint AS available,
                 count(*) FILTER (WHERE st.available_tickets < 0) AS negative
            FROM quota_stock st JOIN q ON q.id = st.quota_id GROUP BY st.quota_id),
sold AS (SELECT qt.quota_id, sum(bl.quantity - bl.cancelled_quantity)::bigint AS sold
           FROM q JOIN quota_types qt ON qt.quota_id = q.id
           JOIN booking_lines bl ON bl.ticket_type_id = qt.ticket_type_id
           JOIN bookings b ON b.id = bl.booking_id AND b.status = ANY(%(taking)s)
          GROUP BY qt.quota_id),
held AS (SELECT qt.quota_id, sum(hl.quantity)::bigint AS held
           FROM q JOIN quota_types qt ON qt.quota_id = q.id
           JOIN hold_lines hl ON hl.ticket_type_id = qt.ticket_type_id
           JOIN holds h ON h.id = hl.hold_id AND h.status = 'active'
          GROUP BY qt.quota_id)
SELECT q.id, q.event_id, q.name, q.size, q.is_event, e.total_tickets,
       coalesce(stock.available, 0) AS available, coalesce(stock.negative, 0) AS negative,
       coalesce(sold.sold, 0) AS sold, coalesce(held.held, 0) AS held,
       (SELECT coalesce(sum(b.quantity - b.cancelled_quantity), 0) FROM bookings b
         WHERE q.is_event AND b.event_id = q.event_id AND b.status = ANY(%(taking)s))::bigint AS booked
  FROM q JOIN events e ON e.id = q.event_id
  LEFT JOIN stock ON stock.quota_id = q.id LEFT JOIN sold ON sold.quota_id = q.id
  LEFT JOIN held ON held.quota_id = q.id
 ORDER BY q.event_id, q.id
"""

_NEW_ROWS_SQL = """
WITH b AS (SELECT id, quantity FROM bookings WHERE event_id = ANY(%(events)s) AND id > %(after)s),
lines AS (SELECT bl.booking_id, bl.ticket_type_id, bl.quantity FROM booking_lines bl JOIN b ON b.id = bl.booking_id)
SELECT (SELECT count(*) FROM b) AS bookings,
       (SELECT count(*) FROM lines) AS lines,
       (SELECT count(*) FROM b LEFT JOIN (SELECT booking_id, sum(quantity) AS units FROM lines GROUP BY booking_id) l
            ON l.booking_id = b.id WHERE b.quantity IS DISTINCT FROM l.units) AS quantity_ne_lines,
       (SELECT coalesce(jsonb_object_agg(t.ticket_type_id, t.n), '{}')
          FROM (SELECT ticket_type_id, count(*) AS n FROM lines GROUP BY ticket_type_id) t) AS lines_by_type,
       (SELECT count(*) FROM outbox WHERE task = 'booking_confirmation'
           AND (payload->>'booking_id')::bigint > %(after)s
           AND (payload->>'event_id')::bigint = ANY(%(events)s)) AS outbox
"""

QUOTA_DETAIL_MAX = 10  # per-quota figures in the report for scenarios of at most this many quotas


def ticket_check(
    database_url: str, event_ids: list[int], *, after_booking_id: int, client_successes: int | None,
    ids_distinct: bool | None = None, unanswered: int = 0, sellout: bool = False,
    client_types: dict[int, int] | None = None,
) -> dict[str, Any]:
    """The oversell check of a scenario's events, per quota, and of the bookings it made.

    Per quota: the tickets gone from its stock (size - available - held) equal the units of
    its types' lines in orders that took stock, and none is sold past its size; per event,
    the event quota's size is ``total_tickets`` and its tickets gone equal the orders'
    quantities. New orders: each has one line (every bench order books one type) whose
    quantity is the order's; one outbox row per order. ``client_types``: successes by the
    type the answers named, each compared with the new lines of that type like the rows.
    ``unanswered``: requests still in flight when the generator stopped (wrk stops at its
    deadline): the server may have booked them, so rows may exceed successes by that many.
    The caller waits for them first (:func:`settle`); the queries share one snapshot.
    """
    params = {"events": event_ids, "after": after_booking_id, "taking": list(TAKING_STATUSES)}
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        quotas = conn.execute(_QUOTAS_SQL, params).fetchall()
        new = conn.execute(_NEW_ROWS_SQL, params).fetchone()
    assert new is not None
    event_quotas = [q for q in quotas if q["is_event"]]
    gone = {q["id"]: q["size"] - q["available"] - q["held"] for q in quotas}
    oversold = sum(max(0, q["sold"] + q["held"] - q["size"]) for q in quotas) + sum(q["negative"] for q in quotas)
    quota_mismatch = [q for q in quotas if gone[q["id"]] != q["sold"]]
    event_mismatch = [q for q in event_quotas
                      if q["size"] != q["total_tickets"] or gone[q["id"]] != q["booked"]]
    new_rows, lines_by_type = int(new["bookings"]), {int(k): int(v) for k, v in new["lines_by_type"].items()}
    check: dict[str, Any] = {
        "events": len(event_quotas),
        "quotas": len(quotas),
        "tickets_sold": sum(gone[q["id"]] for q in event_quotas),
        "bookings_rows": new_rows,
        "booking_lines_rows": int(new["lines"]),
        "oversold": oversold,
        "quotas_sold_ne_taken": len(quota_mismatch),
        "events_sold_ne_booked": len(event_mismatch),
        "orders_quantity_ne_lines": int(new["quantity_ne_lines"]),
        "outbox_rows": int(new["outbox"]),
    }
    if len(quotas) <= QUOTA_DETAIL_MAX:
        check["per_quota"] = [{k: q[k] for k in ("id", "name", "size", "available", "held", "sold")}
                              | {"gone": gone[q["id"]], "event_quota": q["is_event"]} for q in quotas]
    if len(lines_by_type) <= QUOTA_DETAIL_MAX:
        check["lines_by_type"] = lines_by_type
    problems: list[str] = []
    if missing := set(event_ids) - {q["event_id"] for q in event_quotas}:
        problems.append(f"events without an event quota: {sorted(missing)[:5]}")
    if oversold:
        problems.append(f"{oversold} tickets past a quota's size (or negative stock rows)")
    problems += [f"quota {q['id']} ({q['name']}): {gone[q['id']]} gone from its stock, lines took {q['sold']}"
                 for q in quota_mismatch[:5]]
    problems += [f"event {q['event_id']}: total_tickets {q['total_tickets']}, event quota {q['size']}, "
                 f"{gone[q['id']]} gone, orders took {q['booked']}" for q in event_mismatch[:5]]
    if check["booking_lines_rows"] != new_rows or check["orders_quantity_ne_lines"]:
        problems.append(f"{new_rows} orders with {check['booking_lines_rows']} lines, "
                        f"{check['orders_quantity_ne_lines']} whose quantity is not their lines' (one line each)")
    if check["outbox_rows"] != new_rows:
        problems.append(f"{check['outbox_rows']} outbox rows for {new_rows} orders")
    if client_successes is not None:
        check["client_successes"] = client_successes
        check["unanswered_at_stop"] = unanswered
        if not client_successes <= new_rows <= client_successes + unanswered:
            problems.append(f"{new_rows} orders for {client_successes} successes (+{unanswered} unanswered)")
    if client_types is not None:
        check["client_successes_by_type"] = {int(k): int(v) for k, v in client_types.items()}
        for type_id in sorted(set(client_types) | set(lines_by_type)):
            seen, lines = client_types.get(type_id, 0), lines_by_type.get(type_id, 0)
            if not seen <= lines <= seen + unanswered:
                problems.append(f"type {type_id}: {lines} lines for {seen} successes (+{unanswered} unanswered)")
    if ids_distinct is not None:
        check["client_ids_distinct"] = ids_distinct
        if not ids_distinct:
            problems.append("booking ids repeated or missing in the answers")
    if sellout:
        check["available_left"] = sum(q["available"] for q in event_quotas)
        check["sold_out_exactly"] = check["available_left"] == 0 and check["tickets_sold"] == sum(
            q["size"] for q in event_quotas)
        if not check["sold_out_exactly"]:
            problems.append(f"sell-out: {check['available_left']} left, {check['tickets_sold']} sold")
    check["problems"] = problems
    check["ok"] = not problems
    return check


# --------------------------------------------------------------------------- load


# --------------------------------------------------------------------------- scenarios


def _cpu(cores: dict[str, float | None], loadgen_cpu_s: list[float], elapsed: float) -> dict[str, Any]:
    out: dict[str, Any] = {**cores, "loadgen_per_proc": [round(c / elapsed, 2) for c in loadgen_cpu_s]}
    parts = [cores["server"], cores["postgres"], cores["machine"]]
    if all(p is not None for p in parts) and elapsed > 0:
        out["other"] = round(max(0.0, cores["machine"] - cores["server"] - cores["postgres"]  # type: ignore[operator]
                                 - sum(loadgen_cpu_s) / elapsed), 2)
    return out


def scenario(name: str, kind: str, run_load: Any, *, probe: CpuProbe, database_url: str, event_ids: list[int],
             label: str = "", sellout: bool = False, workers: int = 1, changed: list[str] | None = None,
             mix: list[int] | None = None) -> dict[str, Any]:
    """Run one load (``run_load()``), then check the database against what the client saw.

    ``changed``: the production defaults this scenario's server does not keep (its row says so).
    ``mix``: the ticket types the requests drew from: the answers must name each of them
    (and no other), else the server booked something else than asked.
    """
    before_id = max_booking_id(database_url)
    cpu0 = probe.snapshot()
    load: Load = run_load()
    cpu1 = probe.snapshot()
    elapsed = load.elapsed_s
    refusals = {str(s): n for s, n in sorted(load.statuses.items()) if 400 <= s < 500}
    waited = settle(database_url, event_ids, before_id) if load.unanswered else 0.0
    check = ticket_check(database_url, event_ids, after_booking_id=before_id, client_successes=load.successes,
                         ids_distinct=load.ids_distinct, unanswered=load.unanswered, sellout=sellout,
                         client_types=dict(load.types) if load.types else None)
    check["settled_s"] = waited
    check["errors_5xx"] = sum(n for s, n in load.statuses.items() if s >= 500)
    check["rate_limited"] = load.statuses.get(429, 0)
    problems = check["problems"]
    if check["errors_5xx"]:
        problems.append(f"{check['errors_5xx']} answers 5xx")
    if check["rate_limited"]:
        problems.append(f"{check['rate_limited']} answers 429: too few customers for this rate "
                        "(a crowd sizing fault, not a measurement; raise --customers or --expect-rate)")
    if sellout and set(load.codes) - {"sold_out"}:
        problems.append(f"refusals other than sold_out: {dict(load.codes)}")
    elif not sellout and sum(refusals.values()) > check["rate_limited"]:
        # Events that never sell out, customers without a per-event limit, unique keys: nothing
        # here should be refused (an expired token, 401, would say the run outlived JWT_TTL_SECONDS).
        problems.append(f"unexpected refusals: {dict(load.codes)}")
    if load.transport_errors:
        problems.append(f"transport errors {load.transport_errors}")
    if mix is not None and load.successes >= MIX_MIN_SUCCESSES and set(load.types) != set(mix):
        problems.append(f"answers named the types {sorted(load.types)}, the requests drew from {sorted(mix)}")
    check["ok"] = not problems
    return {
        "name": name,
        "kind": kind,
        "label": label,
        "changed_defaults": changed or [],
        "generator": load.generator,
        "clients": load.connections,
        "workers": workers,
        "elapsed_s": round(elapsed, 2),
        "responses": sum(load.statuses.values()),
        "successes": load.successes,
        "per_s": round(load.successes / elapsed, 1) if elapsed > 0 else 0.0,
        "requests_per_s": round(sum(load.statuses.values()) / elapsed, 1) if elapsed > 0 else 0.0,
        "latency_ms": load.latency_ms,
        "status_2xx": load.successes,
        "status_4xx": refusals,
        "error_codes": dict(load.codes),
        "errors_5xx": check["errors_5xx"],
        "transport_errors": load.transport_errors,
        "cpu_cores": _cpu(CpuProbe.cores(cpu0, cpu1), load.loadgen_cpu_s, elapsed),
        "check": check,
    }


def one_row(database_url: str, event_id: int, sharded_event: int | None) -> int:
    """Fold ``event_id``'s event quota into one stock row (the baseline's design); return
    ``sharded_event``'s event-quota row count. Both events have sold nothing yet."""
    from shared.ticketing.inventory import stock_quota

    with psycopg.connect(database_url, autocommit=True) as conn, conn.transaction():
        quota = _event_quota(conn, event_id)
        conn.execute("DELETE FROM quota_stock WHERE quota_id = %s", (quota,))
        conn.execute("UPDATE quotas SET shards = 1 WHERE id = %s", (quota,))
        stock_quota(conn, quota)  # type: ignore[arg-type]
        if sharded_event is None:
            return 0
        row = conn.execute("SELECT count(*) FROM quota_stock WHERE quota_id = %s",
                           (_event_quota(conn, sharded_event),)).fetchone()
    return int(row[0]) if row else 0


def _event_quota(conn: psycopg.Connection[Any], event_id: int) -> int:
    row = conn.execute("SELECT id FROM quotas WHERE event_id = %s AND is_event", (event_id,)).fetchone()
    if row is None:
        raise RuntimeError(f"event {event_id} has no event quota")
    return int(row[0])


def pgbench_part(env: Environment, customer_ids: tuple[int, int], hot_event: int, sharded_event: int | None,
                 spread: list[int], opts: Options, workdir: Path) -> dict[str, Any]:
    """pgbench on the one-row booking (the baseline) and over ``spread`` events.

    The baseline is the issue's: the booking statement on ONE stock row, the design every
    event had before its tickets were spread over rows. So the hot event's stock is folded
    into one row first; then the same statement runs on an event as the API creates it
    (``INVENTORY_SHARDS`` rows), at the peak's client count and at 64, for the record.
    """
    from shared.platform.settings import get_settings

    lo, hi = customer_ids
    if spread and max(spread) - min(spread) + 1 != len(spread):
        raise RuntimeError("spread event ids are not contiguous")
    from datetime import UTC, datetime

    settings = get_settings()
    common = {"user_id": f"random({lo}, {hi})", "quantity": "1",
              "default_max": str(settings.max_tickets_per_booking),
              "customer_max": str(settings.max_tickets_per_customer), **opts.pg_vars}
    defines = {"now": datetime.now(UTC).isoformat()}  # the application's clock, a constant here
    sql = pgbench_booking.book_sql()
    sharded_rows = one_row(env.database_url, hot_event, sharded_event)
    hot_script = pgbench_booking.translate(sql, {**common, "event_id": str(hot_event)}, defines)
    before = max_booking_id(env.database_url)
    hot = []
    for clients in opts.pg_clients:
        run = pgbench_booking.run(env, hot_script, clients=clients, duration=opts.pg_duration, workdir=workdir,
                                  label="hot", defines=defines)
        print(f"  pgbench hot event, {clients:>3} clients: {run.tps:>8.1f} bookings/s", flush=True)
        hot.append(run.as_dict())
    hot_check = ticket_check(env.database_url, [hot_event], after_booking_id=before, client_successes=None)
    hot_check["pgbench_transactions"] = sum(r["transactions"] for r in hot)
    hot_check["ok"] = hot_check["ok"] and hot_check["pgbench_transactions"] == hot_check["bookings_rows"]
    peak = max(hot, key=lambda r: r["tps"])
    sharded: list[dict[str, Any]] = []
    sharded_check = None
    if sharded_event is not None:
        before = max_booking_id(env.database_url)
        sharded_script = pgbench_booking.translate(sql, {**common, "event_id": str(sharded_event)}, defines)
        for clients in sorted({peak["clients"], 64} & set(opts.pg_clients) or {max(opts.pg_clients)}):
            run = pgbench_booking.run(env, sharded_script, clients=clients, duration=opts.pg_duration,
                                      workdir=workdir, label="sharded", defines=defines)
            print(f"  pgbench hot event on {sharded_rows} stock rows, {clients:>3} clients: "
                  f"{run.tps:>8.1f} bookings/s", flush=True)
            sharded.append(run.as_dict())
        sharded_check = ticket_check(env.database_url, [sharded_event], after_booking_id=before,
                                     client_successes=None)
        hot_check["ok"] = hot_check["ok"] and sharded_check["ok"] and sum(
            r["transactions"] for r in sharded) == sharded_check["bookings_rows"]
    spread_runs = []
    spread_check = None
    if spread:
        spread_script = pgbench_booking.translate(
            sql, {**common, "event_id": f"random({min(spread)}, {max(spread)})"}, defines)
        before = max_booking_id(env.database_url)
        for clients in sorted({peak["clients"], 64} & set(opts.pg_clients) or {max(opts.pg_clients)}):
            run = pgbench_booking.run(env, spread_script, clients=clients, duration=opts.pg_duration,
                                      workdir=workdir, label="spread", defines=defines)
            print(f"  pgbench {len(spread)} events, {clients:>3} clients: {run.tps:>8.1f} bookings/s", flush=True)
            spread_runs.append(run.as_dict())
        spread_check = ticket_check(env.database_url, spread, after_booking_id=before, client_successes=None)
        spread_check["pgbench_transactions"] = sum(r["transactions"] for r in spread_runs)
        spread_check["ok"] = spread_check["ok"] and spread_check["pgbench_transactions"] == spread_check[
            "bookings_rows"]
    at_64 = next((r for r in hot if r["clients"] == 64), None)
    return {
        "sql": sql.strip(),
        "script": hot_script,
        "hot": hot,
        "peak": peak,
        "sharded": {"rows": sharded_rows, "runs": sharded, "check": sharded_check},
        "at_64": at_64,
        "hot_check": hot_check,
        "spread": spread_runs,
        "spread_check": spread_check,
    }


def run(env: Environment, opts: Options, out_dir: Path, *, floor_report: dict[str, Any] | None = None
        ) -> dict[str, Any]:
    """Every rush scenario on ``env``; returns the report's ``rush`` section.

    ``floor_report``: the floor part of the same run, whose hello-world row (same uvicorn
    command, same connections) is reused rather than measured twice.
    """
    from bench import floor  # floor imports uvicorn_command from here

    os.environ["DATABASE_URL"], os.environ["REDIS_URL"] = env.database_url, env.redis_url
    from shared.platform.settings import Settings, get_settings

    get_settings.cache_clear()
    out_dir.mkdir(parents=True, exist_ok=True)
    generator, generator_note = floor.pick_generator(opts.generator)
    fd_note = environment.raise_fd_limit(2 * max([*opts.clients, opts.sellout_clients]) + FD_HEADROOM)
    base_env = server_env(env, opts.server_env)
    defaults = Settings.model_fields
    per_customer_rule = base_env.get("RATE_LIMIT_BOOKING_PER_USER", defaults["rate_limit_booking_per_user"].default)
    log_path = out_dir / "uvicorn.log"
    log_path.unlink(missing_ok=True)  # one run's logs: the API writes a line per request
    server = ApiServer(base_env, log_path, opts.workers[0])
    report: dict[str, Any] = {
        "options": dict(opts.__dict__),
        "machine": environment.machine(),
        "generator": generator,
        "generator_note": generator_note,
        "fd_limit_note": fd_note,
        "server": {
            # uvicorn_command without the interpreter: what a container's command line reads.
            "command": "uvicorn " + " ".join(uvicorn_command("local.app:app", 0, opts.workers[0])[3:])
            .replace(" 0 ", " <free> "),
            "production_defaults": {k: base_env[k] for k in ("APP_ENV", "LOG_LEVEL", "RATE_LIMIT_ENABLED")}
            | {"JWT_SECRET": "generated", "DB_POOL_MAX": str(defaults["db_pool_max"].default),
               "BOOKING_COALESCE": str(defaults["booking_coalesce"].default).lower(),
               "RATE_LIMIT_BOOKING_PER_USER": per_customer_rule,
               "RATE_LIMIT_BOOKING_PER_IP": base_env.get("RATE_LIMIT_BOOKING_PER_IP",
                                                         defaults["rate_limit_booking_per_ip"].default)},
            "deployment": {"TRUSTED_PROXIES": LOAD_BALANCER},
            "setup_only": SETUP_ENV,
            "changed_defaults": dict(opts.server_env),
        },
    }
    print(f"rush: {generator}" + (f" ({generator_note})" if generator_note else "")
          + (f"; {fd_note}" if fd_note else ""), flush=True)
    crowd: Crowd | None = None
    try:
        t0 = time.monotonic()
        server.start()
        org = organizer_token(server.base_url)
        first = create_customers(server.base_url, 0, max(2, opts.pg_clients[-1] if opts.pg_clients else 2))
        with httpx.Client(base_url=server.base_url, timeout=30) as api:
            unlimited = {"tickets": TICKETS_NOT_SELLING_OUT, "per_customer": NO_CUSTOMER_LIMIT}
            pg_hot, pg_sharded = create_events(api, org, 2, title="pgbench hot", **unlimited)
            spread = create_events(api, org, opts.spread_events, title="spread", **unlimited)
            hot_events = create_events(api, org, len(opts.clients) + int(opts.idempotent) + len(opts.workers),
                                       title="hot", **unlimited)
            sellout_event = create_events(api, org, 1, opts.sellout_tickets, "sell-out")[0]
            typed = [three_types.create(api, org, title=f"three types {i}", **unlimited)
                     for i in range(len(opts.types_clients))]
        report["three_types"] = {"scenario": three_types.describe(), "events": [t.as_dict() for t in typed]}
        report["per_customer_limit"] = {"sell-out": customer_limit(opts), "hot, spread, pgbench": NO_CUSTOMER_LIMIT}
        if not opts.skip_pgbench:
            # The server stops meanwhile: its idle pool would hold connections pgbench's 64
            # clients need (max_connections is 100 by default), and its process a little CPU.
            server.stop()
            print("pgbench: the booking statement alone (the API server stopped meanwhile)", flush=True)
            try:
                report["pgbench"] = pgbench_part(env, contiguous_ids([c.id for c in first]), pg_hot, pg_sharded,
                                                 spread, opts, out_dir)
            except pgbench_booking.ScriptError as exc:  # say why, and still measure the full stack
                report["pgbench_skipped"] = f"{exc} (give values with --pg-var NAME=EXPR)"
                print(f"  pgbench skipped: {report['pgbench_skipped']}", flush=True)
        if opts.skip_http:
            report["setup_s"] = round(time.monotonic() - t0, 1)
            return report
        if server.child is None:
            server.start()  # the same secret: the tokens it issued still hold
        peak = report["pgbench"]["peak"]["tps"] if "pgbench" in report else None
        expected = (opts.expect_rate or peak or DEFAULT_EXPECT_RATE) * opts.rate_margin
        wanted = opts.customers or crowd_size(expected, opts.booking_seconds(), per_customer_rule)
        sellers = sellout_customers(opts)
        t1 = time.monotonic()
        more = create_customers(server.base_url, len(first), max(0, wanted + sellers - len(first)))
        everyone = first + more
        crowd = Crowd(everyone[:wanted], generator, out_dir, opts.procs)
        sellout_crowd = everyone[wanted:wanted + sellers] or everyone[:sellers]
        report["crowd"] = {
            "customers": wanted, "sellout_customers": sellers, "expected_rate": round(expected, 1),
            "booking_seconds": opts.booking_seconds(), "per_customer_rule": per_customer_rule,
            "registered_per_s": round(len(more) / max(1e-6, time.monotonic() - t1), 1),
            "how": "registered and logged in through the API, each customer from its own X-Forwarded-For "
                   f"address, {SETUP_THREADS} at a time (503 busy retried); cheap hashing on this server",
        }
        report["setup_s"] = round(time.monotonic() - t0, 1)
        print(f"crowd: {wanted} customers (+{sellers} for the sell-out) sized for {expected:.0f} bookings/s over "
              f"{opts.booking_seconds():g} s within {per_customer_rule} each; setup {report['setup_s']} s", flush=True)
        report["reference"] = reference_rows(floor, generator, crowd, opts, base_env, out_dir, floor_report)
        scenarios = measured_scenarios(server, crowd, sellout_crowd, env, opts, hot_events, spread, sellout_event,
                                       typed)
        server.stop()
        for workers, event in zip(opts.workers[1:], hot_events[len(opts.clients) + int(opts.idempotent):],
                                  strict=False):
            other = ApiServer(base_env, log_path, workers)
            try:
                other.start()
                probe = CpuProbe(other.child.process.pid if other.child else None, env.postgres_pid, workers > 1)
                if opts.warmup > 0:
                    crowd.book(other.port, [hot_events[-1]], connections=opts.base_clients, duration=opts.warmup)
                s = scenario(f"hot event, {opts.base_clients} connections, {workers} workers", "workers",
                             lambda o=other, e=event: crowd.book(o.port, [e], connections=opts.base_clients,
                                                                 duration=opts.duration),
                             probe=probe, database_url=env.database_url, event_ids=[event],
                             workers=workers, changed=changed_defaults(opts, workers))
            finally:
                other.stop()
            scenarios.append(s)
            _say(s)
        report["scenarios"] = scenarios
        report["ratios"] = ratios(report)
        report["goals"] = goals(report)
        pg_checks = (report.get("pgbench", {}).get("hot_check"), report.get("pgbench", {}).get("spread_check"))
        report["ok"] = "pgbench_skipped" not in report and all(s["check"]["ok"] for s in scenarios) and all(
            c is None or c["ok"] for c in pg_checks)
        return report
    finally:
        server.stop()
        if crowd is not None:
            crowd.close()
        _drop_queue(env.redis_url, base_env["NOTIFY_QUEUE"])


def reference_rows(floor: Any, generator: str, crowd: Crowd, opts: Options, env: dict[str, str], out_dir: Path,
                   floor_report: dict[str, Any] | None) -> dict[str, Any]:
    """The generator's ceiling (the booking script against a canned server) and hello-world FastAPI."""
    connections = opts.base_clients
    with loadgen.canned_server() as port:
        ceiling = crowd.book(port, [1], connections=connections, duration=opts.duration)
    rows: dict[str, Any] = {"ceiling": {
        "label": f"generator ceiling: {generator}, booking requests, canned server",
        "clients": connections, "per_s": round(sum(ceiling.statuses.values()) / ceiling.elapsed_s, 1)
        if ceiling.elapsed_s else 0.0, "latency_ms": ceiling.latency_ms, "generator": generator}}
    print(f"  {rows['ceiling']['label']:<64} {rows['ceiling']['per_s']:>9.1f}/s", flush=True)
    reused = next((r for r in (floor_report or {}).get("rows", []) if r["key"] == floor.HELLO), None)
    if reused is not None and floor_report and floor_report["options"]["connections"] == connections:
        hello, source = reused, "the floor part of this run"
    else:
        app = next(a for a in floor.APPS if a.key == floor.HELLO)
        fopts = floor.Options(duration=opts.duration, warmup=min(opts.warmup, 2.0), connections=connections,
                              generator=generator, procs=opts.procs)
        hello, source = floor.serve_and_measure(app, generator, fopts, env, out_dir / "floor-uvicorn.log"), "measured"
    rows["hello"] = {"label": "hello-world FastAPI (async GET), same uvicorn command",
                     "clients": connections, "per_s": hello["requests_per_s"],
                     "latency_ms": {"p50": None, "p99": hello["p99_ms"], "max": None},
                     "generator": hello["generator"], "source": source}
    print(f"  {rows['hello']['label']:<64} {rows['hello']['per_s']:>9.1f}/s", flush=True)
    return rows


def measured_scenarios(server: ApiServer, crowd: Crowd, sellout_crowd: list[Customer], env: Environment,
                       opts: Options, hot_events: list[int], spread: list[int], sellout_event: int,
                       typed: list[three_types.ThreeTypeEvent]) -> list[dict[str, Any]]:
    """The hot event at each connection count, the three-type hot event at each of its counts,
    with idempotency keys, many events, the sell-out."""
    assert server.child is not None
    probe = CpuProbe(server.child.process.pid, env.postgres_pid, server.workers > 1)
    port, db = server.port, env.database_url
    changed, workers = changed_defaults(opts, server.workers), server.workers
    print(f"full stack: uvicorn local.app:app, production defaults, POST /bookings ({crowd.generator})", flush=True)
    if opts.warmup > 0:
        crowd.book(port, [hot_events[-1]], connections=opts.base_clients, duration=opts.warmup)
    out = []
    typed_at = dict(zip(opts.types_clients, typed, strict=True))

    def three_type_row(clients: int) -> None:
        t = typed_at.pop(clients)
        out.append(scenario(f"three types, {clients} connections", "three_types",
                            lambda: crowd.book(port, [t.event_id], connections=clients, duration=opts.duration,
                                               ticket_types=t.weights),
                            probe=probe, database_url=db, event_ids=[t.event_id], workers=workers,
                            changed=changed, mix=list(t.type_ids)))
        _say(out[-1])

    # Each three-type row right after the one-type row of its connections: side by side in
    # time too, so a drift of the machine's load moves both rather than the ratio.
    for clients, event in zip(opts.clients, hot_events, strict=False):
        out.append(scenario(f"hot event, {clients} connections", "hot",
                            lambda c=clients, e=event: crowd.book(port, [e], connections=c, duration=opts.duration),
                            probe=probe, database_url=db, event_ids=[event], workers=workers, changed=changed))
        _say(out[-1])
        if clients in typed_at:
            three_type_row(clients)
    for clients in list(typed_at):
        three_type_row(clients)
    if opts.idempotent:
        event, prefix = hot_events[len(opts.clients)], key_prefix()
        out.append(scenario(f"hot event, {opts.base_clients} connections, Idempotency-Key", "idempotent",
                            lambda: crowd.book(port, [event], connections=opts.base_clients, duration=opts.duration,
                                               key_prefix=prefix),
                            probe=probe, database_url=db, event_ids=[event], workers=workers, changed=changed))
        keys_check(out[-1]["check"], db, prefix)
        _say(out[-1])
    for clients in opts.spread_clients:
        out.append(scenario(f"{len(spread)} events, {clients} connections", "spread",
                            lambda c=clients: crowd.book(port, spread, connections=c, duration=opts.duration),
                            probe=probe, database_url=db, event_ids=spread, workers=workers, changed=changed))
        _say(out[-1])
    out.append(scenario(f"sell-out {opts.sellout_tickets} tickets, {opts.sellout_clients} connections", "sellout",
                        lambda: sellout_load(sellout_crowd, port, sellout_event, connections=opts.sellout_clients,
                                             timeout=opts.sellout_timeout, procs=opts.procs),
                        probe=probe, database_url=db, event_ids=[sellout_event], sellout=True,
                        label="python generator: each connection stops at sold_out", workers=workers,
                        changed=changed))
    _say(out[-1])
    return out


def keys_check(check: dict[str, Any], database_url: str, prefix: str) -> None:
    """Every booking of the keyed run was made under its key: one stored 201 answer per bookings row."""
    with psycopg.connect(database_url) as conn:
        stored = conn.execute(
            "SELECT count(*) FROM idempotency_keys WHERE key LIKE %s AND state = 'done' AND response_status = 201",
            (prefix.replace("_", r"\_") + "%",),
        ).fetchone()[0]  # type: ignore[index]
    check["idempotency_keys_201"] = int(stored)
    if stored != check["bookings_rows"]:
        check["problems"].append(f"{stored} keys stored a 201 for {check['bookings_rows']} bookings")
        check["ok"] = False


def changed_defaults(opts: Options, workers: int) -> list[str]:
    """What a server runs with beyond production defaults and the load balancer (rows name it)."""
    out = [f"{k}={v}" for k, v in opts.server_env.items()]
    return ([f"--workers {workers} (default 1)"] if workers != 1 else []) + out


def _drop_queue(redis_url: str, queue: str) -> None:
    import redis

    try:
        client = redis.Redis.from_url(redis_url, socket_timeout=5)
        client.delete(queue)
        client.close()
    except redis.RedisError:
        pass


# --------------------------------------------------------------------------- ratios and the table


def _by_kind(report: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [s for s in report.get("scenarios", []) if s["kind"] == kind]


def _base(report: dict[str, Any]) -> dict[str, Any] | None:
    """The hot event at the comparisons' connection count (64), one worker."""
    clients = report["options"]["clients"]
    base = BASE_CLIENTS if BASE_CLIENTS in clients else min(clients)
    return next((s for s in _by_kind(report, "hot") if s["clients"] == base), None)


def types_pairs(report: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """Each three-type row with the one-type hot row at its connection count (None: not run)."""
    hot = {s["clients"]: s for s in _by_kind(report, "hot")}
    return [(s, hot.get(s["clients"])) for s in _by_kind(report, "three_types")]


def ratios(report: dict[str, Any]) -> dict[str, float | None]:
    """Same-run ratios: every full-stack row to the pgbench peak, and the rows to one another."""
    out: dict[str, float | None] = {}
    pg = report.get("pgbench")
    peak = pg["peak"]["tps"] if pg else None
    at_64 = (pg.get("at_64") or {}).get("tps") if pg else None
    base = _base(report)

    def ratio(a: float, b: float | None) -> float | None:
        return round(a / b, 2) if b else None

    for s in report.get("scenarios", []):
        if s["kind"] in ("hot", "three_types", "idempotent", "workers", "sellout"):
            out[f"{s['name']} / pgbench peak"] = ratio(s["per_s"], peak)
    for typed, one in types_pairs(report):
        if one is not None:
            out[f"{typed['name']} / {one['name']}"] = ratio(typed["per_s"], one["per_s"])
    if base is not None:
        if at_64:
            out[f"{base['name']} / pgbench 64 clients"] = ratio(base["per_s"], at_64)
        for s in report.get("scenarios", []):
            if s is not base and s["kind"] in ("hot", "idempotent", "workers"):
                out[f"{s['name']} / {base['name']}"] = ratio(s["per_s"], base["per_s"])
    for s in _by_kind(report, "spread"):
        spread_pg = {r["clients"]: r["tps"] for r in (pg or {}).get("spread", [])}
        if spread_pg:
            out[f"{s['name']} / pgbench spread"] = ratio(s["per_s"], spread_pg.get(s["clients"])
                                                          or max(spread_pg.values()))
    return out


def goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 13's goal 2, each with its figure and whether it is met."""
    pg = report.get("pgbench")
    base = _base(report)
    if not pg or base is None:
        return []
    peak = pg["peak"]["tps"]
    out = [
        {"goal": f"{base['name']} >= {GOALS['vs_peak']}x the pgbench peak",
         "value": round(base["per_s"] / peak, 2), "met": base["per_s"] >= GOALS["vs_peak"] * peak},
        {"goal": f"{base['name']}: p99 <= {GOALS['p99_ms']:g} ms", "value": base["latency_ms"]["p99"],
         "met": (base["latency_ms"]["p99"] or 1e9) <= GOALS["p99_ms"]},
    ]
    for s in _by_kind(report, "hot"):
        if s["clients"] > base["clients"]:
            out.append({"goal": f"{s['name']}: no collapse, >= {GOALS['no_collapse']}x the {base['clients']}",
                        "value": round(s["per_s"] / base["per_s"], 2) if base["per_s"] else None,
                        "met": s["per_s"] >= GOALS["no_collapse"] * base["per_s"]})
    for s in _by_kind(report, "idempotent"):
        out.append({"goal": f"{s['name']} >= {GOALS['idempotent']}x the pgbench peak",
                    "value": round(s["per_s"] / peak, 2), "met": s["per_s"] >= GOALS["idempotent"] * peak})
    scenarios = report.get("scenarios", [])
    out.append({"goal": "zero 5xx, zero oversell, every check", "value": sum(s["errors_5xx"] for s in scenarios),
                "met": all(s["check"]["ok"] for s in scenarios)})
    return out


def _say(s: dict[str, Any]) -> None:
    lat = s["latency_ms"]
    check = s["check"]
    print(f"  {s['name']:<48} {s['per_s']:>9.1f}/s  p50 {lat['p50']} ms  p99 {lat['p99']} ms  "
          f"4xx {s['status_4xx'] or '-'} 5xx {s['errors_5xx']}  check {'ok' if check['ok'] else 'FAILED'}"
          + (f"  ({'; '.join(check['problems'])})" if check["problems"] else ""), flush=True)


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _codes(s: dict[str, Any]) -> str:
    if not s["error_codes"]:
        return "-"
    return ",".join(f"{c}:{n}" for c, n in sorted(s["error_codes"].items()))


def table(report: dict[str, Any]) -> str:
    """The rush's table: the machine, the headline rows with ratios to the pgbench peak first."""
    m = report.get("machine") or environment.machine()
    srv = report["server"]
    d = srv["production_defaults"]
    lines = [
        f"ticket rush: POST /bookings on one hot event; machine: {m['nproc']} cores, {m['cpu_model']}, "
        f"Python {m['python']}",
        f"server: {srv['command']}; production defaults: APP_ENV={d['APP_ENV']}, JWT_SECRET generated, "
        f"LOG_LEVEL={d['LOG_LEVEL']}, rate limits on ({d['RATE_LIMIT_BOOKING_PER_USER']} per customer, "
        f"{d['RATE_LIMIT_BOOKING_PER_IP']} per address), DB_POOL_MAX={d['DB_POOL_MAX']}, coalescing "
        f"{'on' if d['BOOKING_COALESCE'] == 'true' else 'off'}"
        + (f"; CHANGED: {', '.join(f'{k}={v}' for k, v in srv['changed_defaults'].items())}"
           if srv["changed_defaults"] else ""),
        f"  deployed behind a load balancer: TRUSTED_PROXIES={LOAD_BALANCER}, each request's X-Forwarded-For is "
        "its customer's own address",
    ]
    gen = report.get("generator")
    if gen == "wrk":
        lines.append("load: wrk -t1 (one thread: at most one core), a rotating customer (token + address) per request")
    elif gen:
        lines.append(f"load: bench/loadgen.py (Python, {report['options']['procs']} processes): "
                     f"{report.get('generator_note') or ''}")
    if report.get("fd_limit_note"):
        lines.append(f"WARNING: {report['fd_limit_note']}")
    crowd = report.get("crowd")
    if crowd:
        lines.append(f"crowd: {crowd['customers']} customers (+{crowd['sellout_customers']} for the sell-out), sized "
                     f"for {crowd['expected_rate']:.0f} bookings/s over {crowd['booking_seconds']:g} s; registered "
                     f"through the API with PASSWORD_HASH_TIME_COST=1 (setup only, not on the measured path)")
    pg = report.get("pgbench")
    peak = pg["peak"]["tps"] if pg else None
    head = (f"{'row':<72} {'conns':>5} {'vs peak':>7} {'per s':>9} {'p50 ms':>7} {'p99 ms':>7} {'2xx':>7} "
            f"{'5xx':>4}  {'4xx by code':<22} check")
    lines += ["", head, "-" * len(head)]

    def row(label: str, clients: int | str, per_s: float, p50: float | None = None, p99: float | None = None,
            ratio: bool = True, tail: str = "") -> None:
        vs = f"{per_s / peak:.2f}" if ratio and peak else "-"
        lines.append(f"{label:<72} {clients!s:>5} {vs:>7} {per_s:>9.1f} {_fmt(p50):>7} {_fmt(p99):>7}{tail}")

    if pg:
        row(f"pgbench, the one-row booking statement, peak ({pg['peak']['clients']} clients)", pg["peak"]["clients"],
            peak or 0.0, pg["peak"]["latency_avg_ms"])
        if pg.get("at_64"):
            row("pgbench, the one-row booking statement, 64 clients", 64, pg["at_64"]["tps"],
                pg["at_64"]["latency_avg_ms"])
        sharded = pg.get("sharded") or {}
        for r in sharded.get("runs", []):
            row(f"pgbench, the same statement, event on {sharded['rows']} stock rows (as the API makes it)",
                r["clients"], r["tps"], r["latency_avg_ms"])
    elif report.get("pgbench_skipped"):
        lines.append(f"pgbench skipped: {report['pgbench_skipped']}")
    ref = report.get("reference") or {}
    for key in ("ceiling", "hello"):
        if key in ref:
            r = ref[key]
            row(r["label"][:72], r["clients"], r["per_s"], r["latency_ms"].get("p50"), r["latency_ms"].get("p99"),
                ratio=False)
    for s in report.get("scenarios", []):
        if s["kind"] not in ("hot", "idempotent", "workers"):
            continue
        label = "full stack, production defaults" + {"idempotent": ", Idempotency-Key each"}.get(s["kind"], "")
        if s["changed_defaults"]:
            label += f", CHANGED {', '.join(s['changed_defaults'])}"
        if s["generator"] != gen:
            label += f" ({s['generator']})"
        row(label, s["clients"], s["per_s"], s["latency_ms"]["p50"], s["latency_ms"]["p99"],
            tail=f" {s['status_2xx']:>7} {s['errors_5xx']:>4}  {_codes(s):<22} "
                 + _verdict(s))
    lines.append("  (pgbench latency: its average, in the p50 column; vs peak: bookings/s over the pgbench peak)")
    lines += types_table(report, peak)
    if report.get("goals"):
        lines += ["", "issue 13, goal 2 (container path, production defaults):"]
        lines += [f"  {'met    ' if g['met'] else 'NOT MET'} {g['goal']}: {g['value']}" for g in report["goals"]]
    others = [s for s in report.get("scenarios", []) if s["kind"] in ("spread", "sellout")]
    if others or pg:
        lines += ["", "other rows (not headline)"]
    for s in others:
        changed = f", CHANGED {', '.join(s['changed_defaults'])}" if s["changed_defaults"] else ""
        row(s["name"] + changed + (" *" if s["label"] else ""), s["clients"], s["per_s"],
            s["latency_ms"]["p50"], s["latency_ms"]["p99"],
            tail=f" {s['status_2xx']:>7} {s['errors_5xx']:>4}  {_codes(s):<22} "
                 + _verdict(s))
    lines += [f"  * {s['label']}" for s in others if s["label"]]
    if pg:
        lines.append("  pgbench hot event: " + ", ".join(f"{r['clients']}: {r['tps']:.0f}" for r in pg["hot"])
                     + f" tps; oversell check {'ok' if pg['hot_check']['ok'] else 'FAILED'}")
        if pg["spread"]:
            lines.append(f"  pgbench {pg['spread_check']['events']} events: "
                         + ", ".join(f"{r['clients']}: {r['tps']:.0f}" for r in pg["spread"]) + " tps")
    cores = [f"{s['name']}: {_cores(s)}" for s in report.get("scenarios", [])]
    if cores:
        lines.append("  cores busy server/postgres/python-generator/other: " + "; ".join(cores))
    return "\n".join(lines)


def types_table(report: dict[str, Any], peak: float | None) -> list[str]:
    """The three-type hot event beside the one-type hot event at the same connections, with their ratio."""
    pairs = types_pairs(report)
    if not pairs:
        return []
    described = (report.get("three_types") or {}).get("scenario", "")
    head = (f"{'conns':>5} {'one type /s':>11} {'p99 ms':>7} {'vs peak':>7} {'three types /s':>14} {'p99 ms':>7} "
            f"{'vs peak':>7} {'three/one':>9} {'2xx':>7} {'5xx':>4}  {'4xx by code':<22} check")
    out = ["", "three ticket types vs one type, hot event, full stack, production defaults (issue 14):",
           f"  {described}", head, "-" * len(head)]

    def vs(per_s: float | None) -> str:
        return f"{per_s / peak:.2f}" if peak and per_s is not None else "-"

    for typed, one in pairs:
        one_rate = one["per_s"] if one else None
        ratio = f"{typed['per_s'] / one_rate:.2f}" if one_rate else "-"
        out.append(f"{typed['clients']:>5} {_fmt(one_rate):>11} {_fmt(one['latency_ms']['p99'] if one else None):>7} "
                   f"{vs(one_rate):>7} {typed['per_s']:>14.1f} {_fmt(typed['latency_ms']['p99']):>7} "
                   f"{vs(typed['per_s']):>7} {ratio:>9} {typed['status_2xx']:>7} {typed['errors_5xx']:>4}  "
                   f"{_codes(typed):<22} {_verdict(typed)}")
    checked = [q for typed, _ in pairs for q in typed["check"].get("per_quota", [])]
    if checked:
        out.append("  per quota after the runs (size - available - held == units of its types' lines): "
                   + "; ".join(f"{q['name']} {q['gone']} gone, {q['sold']} sold of {q['size']}" for q in checked))
    return out


def _verdict(s: dict[str, Any]) -> str:
    check = s["check"]
    if check["ok"]:
        return "ok"
    return "FAILED: " + ("; ".join(check["problems"]) or "rows, oversell or outbox (see the report)")


def _cores(s: dict[str, Any]) -> str:
    c = s["cpu_cores"]
    parts = [c.get("server"), c.get("postgres"), sum(c["loadgen_per_proc"]), c.get("other")]
    return "/".join("-" if p is None else f"{p:.2f}" for p in parts)
