"""The ticket rush: pgbench's limit for the booking statement vs the full stack under load.

    python -m bench rush [--duration 10] [--clients 64,256] [--quick] [--skip-pgbench]

In one run, on one PostgreSQL (see bench/environment.py):

1. pgbench runs ``shared.ticketing.bookings.BOOK_SQL`` itself on one hot event at several client
   counts (the peak and 64 clients are what the full stack is compared with), and spread
   over many events.
2. ``uvicorn local.app:app`` (one worker, rate limits off, logs at WARNING) is started as
   a subprocess; users, tokens and events are created through its API; then the load
   generator (bench/loadgen.py) measures its own ceiling on ``/health/live`` and rushes
   ``POST /bookings``: one hot event at each client count, a sell-out, and spread events.
   Events that must not sell out (hot, spread, pgbench) are created with their own
   per-customer limit of 1,000,000 (an event setting, the default is unchanged): no number
   of customers would keep a minutes-long rush on one event within 20 each. The sell-out
   runs at the default limit, with customers enough (the load generator rotates each
   connection over its share of them), so it must end with nothing but ``sold_out``.
3. Every scenario is checked: bookings rows == tickets taken for each event, successes
   counted by the client == bookings rows, every booking id distinct, one outbox row per
   booking; a sell-out must end with no ticket left and none oversold.
"""

from __future__ import annotations

import argparse
import math
import os
import secrets
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench import loadgen, pgbench_booking
from bench.environment import Environment
from local.embedded import free_port
from local.processes import Child, spawn, tree_cpu_seconds, wait_http_ok

PASSWORD = "bench-pass-1"
TICKETS_NOT_SELLING_OUT = 1_000_000  # the API's largest event
# Per-event limit of the events that must not sell out: one customer may take them all.
NO_CUSTOMER_LIMIT = 1_000_000


@dataclass
class Options:
    duration: float = 10.0
    pg_duration: float = 5.0
    pg_clients: list[int] = field(default_factory=lambda: [1, 4, 8, 16, 32, 64])
    clients: list[int] = field(default_factory=lambda: [64, 256])
    sellout_tickets: int = 5000
    sellout_clients: int = 256
    sellout_timeout: float = 120.0
    spread_events: int = 1000
    spread_clients: list[int] = field(default_factory=lambda: [64, 256])
    procs: int = 2
    workers: int = 1
    warmup: float = 2.0
    skip_pgbench: bool = False
    skip_http: bool = False
    server_env: dict[str, str] = field(default_factory=dict)
    pg_vars: dict[str, str] = field(default_factory=dict)

    @classmethod
    def quick(cls) -> Options:
        """A seconds-long correctness run (the smoke test): tiny, not a measurement."""
        return cls(duration=2.0, pg_duration=1.0, pg_clients=[1, 4], clients=[8], sellout_tickets=200,
                   sellout_clients=8, sellout_timeout=30.0, spread_events=20, spread_clients=[8], procs=1,
                   warmup=0.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    ints = lambda text: [int(x) for x in text.split(",") if x]  # noqa: E731
    parser.add_argument("--quick", action="store_true", help="tiny correctness run (seconds); overrides defaults")
    parser.add_argument("--duration", type=float, help="seconds per HTTP scenario (default 10)")
    parser.add_argument("--pg-duration", type=float, help="seconds per pgbench run (default 5)")
    parser.add_argument("--pg-clients", type=ints, help="pgbench client counts (default 1,4,8,16,32,64)")
    parser.add_argument("--clients", type=ints, help="HTTP clients on the hot event (default 64,256)")
    parser.add_argument("--spread-clients", type=ints, help="HTTP clients over many events (default 64,256)")
    parser.add_argument("--spread-events", type=int, help="events in the spread scenarios (default 1000)")
    parser.add_argument("--sellout-tickets", type=int, help="tickets in the sell-out rush (default 5000)")
    parser.add_argument("--sellout-clients", type=int, help="clients in the sell-out rush (default 256)")
    parser.add_argument("--procs", type=int, help="load generator processes (default 2)")
    parser.add_argument("--workers", type=int, help="uvicorn worker processes (default 1)")
    parser.add_argument("--warmup", type=float, help="seconds of unreported bookings before measuring")
    parser.add_argument("--skip-pgbench", action="store_true", help="no pgbench runs (no ratios)")
    parser.add_argument("--skip-http", action="store_true", help="pgbench only")
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for the uvicorn server (e.g. DB_POOL_MAX=32); repeatable")
    parser.add_argument("--pg-var", action="append", default=[], metavar="NAME=EXPR",
                        help="pgbench value for a BOOK_SQL parameter the harness does not know; repeatable")


def options_from(args: argparse.Namespace) -> Options:
    opts = Options.quick() if args.quick else Options()
    for name in ("duration", "pg_duration", "pg_clients", "clients", "spread_clients", "spread_events",
                 "sellout_tickets", "sellout_clients", "procs", "workers", "warmup"):
        value = getattr(args, name)
        if value is not None:
            setattr(opts, name, value)
    opts.skip_pgbench, opts.skip_http = args.skip_pgbench, args.skip_http
    opts.server_env = dict(item.split("=", 1) for item in args.server_env)
    opts.pg_vars = dict(item.split("=", 1) for item in args.pg_var)
    if args.quick and args.clients and args.sellout_clients is None:
        opts.sellout_clients = max(args.clients)
    return opts


# --------------------------------------------------------------------------- the server


def uvicorn_command(app: str, port: int, workers: int = 1) -> list[str]:
    """The API's uvicorn command, for ``app`` (module:attribute) on ``port``: every bench serves with it.

    ``--no-access-log``: the project's apps write their own request line (uvicorn's is off in
    them anyway); a hello-world app must not pay for one the API does not write.
    """
    return [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", "--no-access-log", "--no-proxy-headers", "--workers", str(workers)]


class ApiServer:
    """``uvicorn local.app:app`` as a child process: one worker, as a container runs it."""

    def __init__(self, env: Environment, log_path: Path, extra_env: dict[str, str], workers: int = 1) -> None:
        self.port = free_port()
        self.workers = workers
        self.log_path = log_path
        self.env = {
            **os.environ,
            "DATABASE_URL": env.database_url,
            "REDIS_URL": env.redis_url,
            "RATE_LIMIT_ENABLED": "false",
            # A throwaway server: its own random signing secret (it issues the tokens it checks).
            "JWT_SECRET": secrets.token_urlsafe(48),
            # The production default: one JSON request line per booking is part of the cost.
            "LOG_LEVEL": "INFO",
            # Registration and login are not what is measured: cheap hashing for the setup.
            "PASSWORD_HASH_TIME_COST": "1",
            "PASSWORD_HASH_MEMORY_KIB": "1024",
            # Its own queue: nothing consumes it, and a configured Redis's real queue stays clean.
            "NOTIFY_QUEUE": f"bench-rush-{os.getpid()}",
            **extra_env,
        }
        self.extra_env = extra_env
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


class CpuProbe:
    """Cores busy in the server, in PostgreSQL and on the whole machine between two snapshots.

    The machine figure minus server, PostgreSQL and load generator is other work sharing
    the cores (pgbench-free scenarios only have those three): it says how clean a run was.
    """

    def __init__(self, server_pid: int | None, postgres_pid: int | None) -> None:
        self.server_pid, self.postgres_pid = server_pid, postgres_pid

    def snapshot(self) -> dict[str, float | None]:
        return {
            "server": tree_cpu_seconds(self.server_pid, children=False) if self.server_pid else None,
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


# --------------------------------------------------------------------------- setup through the API


@dataclass
class Fixtures:
    customer_ids: list[int]
    tokens: list[str]
    organizer_token: str


def create_accounts(api: httpx.Client, customers: int) -> Fixtures:
    """An organizer and ``customers`` customers, each with a token, through the public API."""
    stamp = f"{os.getpid()}-{time.time_ns()}"

    def account(role: str, i: int) -> tuple[int, str]:
        email = f"bench-{role}-{i}-{stamp}@bench.test"
        r = api.post("/users", json={"email": email, "password": PASSWORD, "role": role})
        r.raise_for_status()
        t = api.post("/auth/token", data={"username": email, "password": PASSWORD})
        t.raise_for_status()
        return int(r.json()["id"]), str(t.json()["access_token"])

    _, organizer = account("organizer", 0)
    pairs = [account("customer", i) for i in range(customers)]
    return Fixtures([p[0] for p in pairs], [p[1] for p in pairs], organizer)


def create_events(api: httpx.Client, token: str, count: int, tickets: int, title: str,
                  per_customer: int | None = None) -> list[int]:
    ids = []
    for i in range(count):
        body: dict[str, Any] = {"title": f"{title} {i}", "total_tickets": tickets}
        if per_customer is not None:
            body["max_tickets_per_customer"] = per_customer
        r = api.post("/events", json=body, headers={"Authorization": f"Bearer {token}"})
        r.raise_for_status()
        ids.append(int(r.json()["id"]))
    return ids


# --------------------------------------------------------------------------- checks


def max_booking_id(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        return int(conn.execute("SELECT coalesce(max(id), 0) FROM bookings").fetchone()[0])  # type: ignore[index]


def ticket_check(
    database_url: str, event_ids: list[int], *, after_booking_id: int, client_successes: int | None,
    client_ids: list[int] | None = None, sellout: bool = False,
) -> dict[str, Any]:
    """The oversell check of a scenario's events and of the bookings it made."""
    with psycopg.connect(database_url) as conn:
        per_event = conn.execute(
            """SELECT e.id, e.total_tickets,
                      (SELECT sum(st.available_tickets) FROM event_stock st WHERE st.event_id = e.id)
                          AS available_tickets,
                      coalesce(sum(b.quantity), 0)::bigint AS booked, count(b.id) AS rows
                 FROM events e LEFT JOIN bookings b ON b.event_id = e.id AND b.status = 'confirmed'
                WHERE e.id = ANY(%s) GROUP BY e.id""",
            (event_ids,),
        ).fetchall()
        new_rows = conn.execute(
            "SELECT count(*) FROM bookings WHERE event_id = ANY(%s) AND id > %s",
            (event_ids, after_booking_id),
        ).fetchone()[0]  # type: ignore[index]
        outbox_rows = conn.execute(
            """SELECT count(*) FROM outbox WHERE task = 'booking_confirmation'
                 AND (payload->>'booking_id')::bigint > %s AND (payload->>'event_id')::bigint = ANY(%s)""",
            (after_booking_id, event_ids),
        ).fetchone()[0]  # type: ignore[index]
    oversold = sum(max(0, booked - total) for _, total, _, booked, _ in per_event)
    mismatched = sum(1 for _, total, available, booked, _ in per_event if total - available != booked)
    check: dict[str, Any] = {
        "events": len(per_event),
        "tickets_sold": sum(total - available for _, total, available, _, _ in per_event),
        "bookings_rows": int(new_rows),
        "oversold": oversold,
        "events_sold_ne_booked": mismatched,
        "outbox_rows": int(outbox_rows),
    }
    ok = oversold == 0 and mismatched == 0 and outbox_rows == new_rows
    if client_successes is not None:
        check["client_successes"] = client_successes
        ok = ok and client_successes == new_rows
    if client_ids is not None:
        check["client_ids_distinct"] = len(set(client_ids)) == len(client_ids) == client_successes
        ok = ok and check["client_ids_distinct"]
    if sellout:
        check["available_left"] = sum(available for _, _, available, _, _ in per_event)
        check["sold_out_exactly"] = check["available_left"] == 0 and check["tickets_sold"] == sum(
            total for _, total, _, _, _ in per_event)
        ok = ok and check["sold_out_exactly"]
    check["ok"] = bool(ok)
    return check


# --------------------------------------------------------------------------- scenarios


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _cpu(cores: dict[str, float | None], loadgen_cpu_s: list[float], elapsed: float) -> dict[str, Any]:
    out: dict[str, Any] = {**cores, "loadgen_per_proc": [round(c / elapsed, 2) for c in loadgen_cpu_s]}
    parts = [cores["server"], cores["postgres"], cores["machine"]]
    if all(p is not None for p in parts) and elapsed > 0:
        out["other"] = round(max(0.0, cores["machine"] - cores["server"] - cores["postgres"]  # type: ignore[operator]
                                 - sum(loadgen_cpu_s) / elapsed), 2)
    return out


def http_scenario(
    name: str, spec: loadgen.Spec, *, connections: int, duration: float, opts: Options, probe: CpuProbe,
    database_url: str | None = None, event_ids: list[int] | None = None, sellout: bool = False,
) -> dict[str, Any]:
    before_id = max_booking_id(database_url) if database_url else 0
    cpu0 = probe.snapshot()
    result = loadgen.run(spec, connections=connections, duration=duration, procs=opts.procs)
    cpu1 = probe.snapshot()
    # A sell-out ends at its last booking; a timed run when its last answer arrived.
    elapsed = result.last_success_at - result.started_at if sellout and result.successes else result.wall_s or duration
    errors = {str(s): n for s, n in sorted(result.statuses.items()) if not 200 <= s < 300}
    if result.conn_errors:
        errors["connection"] = result.conn_errors
    if result.timeouts:
        errors["timeout"] = result.timeouts
    out: dict[str, Any] = {
        "name": name,
        "path": f"{spec.method} {spec.path}",
        "clients": connections,
        "elapsed_s": round(elapsed, 2),
        "responses": result.responses,
        "successes": result.successes,
        "per_s": round(result.successes / elapsed, 1) if elapsed > 0 else 0.0,
        "requests_per_s": round(result.responses / elapsed, 1) if elapsed > 0 else 0.0,
        "latency_ms": {
            "p50": _ms(loadgen.percentile(result.latencies_ms, 50)),
            "p95": _ms(loadgen.percentile(result.latencies_ms, 95)),
            "p99": _ms(loadgen.percentile(result.latencies_ms, 99)),
            "max": _ms(max(result.latencies_ms) if result.latencies_ms else None),
        },
        "errors": errors,
        "error_codes": dict(result.codes),
        "errors_5xx": sum(n for s, n in result.statuses.items() if s >= 500),
        "cpu_cores": _cpu(CpuProbe.cores(cpu0, cpu1), result.cpu_s, elapsed),
    }
    if database_url and event_ids is not None:
        out["check"] = ticket_check(database_url, event_ids, after_booking_id=before_id,
                                    client_successes=result.successes, client_ids=result.booking_ids,
                                    sellout=sellout)
    return out


def pgbench_part(env: Environment, fx: Fixtures, hot_event: int, spread: list[int], opts: Options,
                 workdir: Path) -> dict[str, Any]:
    from shared.platform.settings import get_settings

    lo, hi = min(fx.customer_ids), max(fx.customer_ids)
    if hi - lo + 1 != len(fx.customer_ids):
        raise RuntimeError("customer ids are not contiguous: pgbench picks them with random(lo, hi)")
    if spread and max(spread) - min(spread) + 1 != len(spread):
        raise RuntimeError("spread event ids are not contiguous")
    from datetime import UTC, datetime

    settings = get_settings()
    common = {"user_id": f"random({lo}, {hi})", "quantity": "1",
              "default_max": str(settings.max_tickets_per_booking),
              "customer_max": str(settings.max_tickets_per_customer), **opts.pg_vars}
    defines = {"now": datetime.now(UTC).isoformat()}  # the application's clock, a constant here
    sql = pgbench_booking.book_sql()
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
        "at_64": at_64,
        "hot_check": hot_check,
        "spread": spread_runs,
        "spread_check": spread_check,
    }


def run(env: Environment, opts: Options, out_dir: Path) -> dict[str, Any]:
    """Every rush scenario on ``env``; returns the report's ``rush`` section."""
    os.environ["DATABASE_URL"], os.environ["REDIS_URL"] = env.database_url, env.redis_url
    from shared.platform.settings import get_settings

    get_settings.cache_clear()
    out_dir.mkdir(parents=True, exist_ok=True)
    server = ApiServer(env, out_dir / "uvicorn.log", opts.server_env, opts.workers)
    report: dict[str, Any] = {"options": {k: v for k, v in opts.__dict__.items()}}
    try:
        t0 = time.monotonic()
        server.start()
        customers = max([*opts.clients, *opts.spread_clients, sellout_customers(opts), 2])
        with httpx.Client(base_url=server.base_url, timeout=30) as api:
            fx = create_accounts(api, customers)
            org = fx.organizer_token
            unlimited = {"tickets": TICKETS_NOT_SELLING_OUT, "per_customer": NO_CUSTOMER_LIMIT}
            pg_hot = create_events(api, org, 1, title="pgbench hot", **unlimited)[0]
            spread = create_events(api, org, opts.spread_events, title="spread", **unlimited)
            hot_events = create_events(api, org, len(opts.clients) + 1, title="hot", **unlimited)
            sellout_event = create_events(api, org, 1, opts.sellout_tickets, "sell-out")[0]
        report["setup_s"] = round(time.monotonic() - t0, 1)
        report["customers"] = customers
        report["per_customer_limit"] = {"sell-out": customer_limit(opts), "hot, spread, pgbench": NO_CUSTOMER_LIMIT}
        report["server"] = {"command": f"uvicorn local.app:app ({opts.workers} worker(s))",
                            "env": {"RATE_LIMIT_ENABLED": "false", "LOG_LEVEL": "INFO", **opts.server_env},
                            "db_pool_max": int(server.env.get("DB_POOL_MAX", get_settings().db_pool_max))}
        if not opts.skip_pgbench:
            print("pgbench: the booking statement alone", flush=True)
            try:
                report["pgbench"] = pgbench_part(env, fx, pg_hot, spread, opts, out_dir)
            except pgbench_booking.ScriptError as exc:  # say why, and still measure the full stack
                report["pgbench_skipped"] = f"{exc} (give values with --pg-var NAME=EXPR)"
                print(f"  pgbench skipped: {report['pgbench_skipped']}", flush=True)
        if opts.skip_http:
            return report
        assert server.child is not None
        probe = CpuProbe(server.child.process.pid, env.postgres_pid)
        host, port = "127.0.0.1", server.port
        book = loadgen.Spec(host=host, port=port, method="POST", path="/bookings", tokens=tuple(fx.tokens))
        scenarios: list[dict[str, Any]] = []
        print("full stack: uvicorn local.app:app, POST /bookings", flush=True)
        ceiling_clients = max(opts.clients)
        ceiling = http_scenario("generator ceiling (/health/live)",
                                loadgen.Spec(host=host, port=port, method="GET", path="/health/live"),
                                connections=ceiling_clients, duration=opts.duration, opts=opts, probe=probe)
        report["generator_ceiling"] = ceiling
        _say(ceiling)
        alone = loadgen.self_ceiling(connections=ceiling_clients, duration=min(3.0, opts.duration), procs=opts.procs)
        report["generator_alone"] = {
            "clients": ceiling_clients, "procs": alone.procs,
            "per_s": round(alone.responses / alone.wall_s, 1) if alone.wall_s else 0.0,
            "p99_ms": _ms(loadgen.percentile(alone.latencies_ms, 99)),
            "loadgen_cores_per_proc": [round(c / alone.wall_s, 2) for c in alone.cpu_s] if alone.wall_s else [],
        }
        print(f"  generator alone (canned-response server)    {report['generator_alone']['per_s']:>9.1f}/s", flush=True)
        if opts.warmup > 0:
            loadgen.run(replace(book, event_ids=(hot_events[-1],)), connections=min(64, ceiling_clients),
                        duration=opts.warmup, procs=opts.procs)
        for clients, event in zip(opts.clients, hot_events, strict=False):
            s = http_scenario(f"hot event, {clients} clients", replace(book, event_ids=(event,)),
                              connections=clients, duration=opts.duration, opts=opts, probe=probe,
                              database_url=env.database_url, event_ids=[event])
            s["kind"] = "hot"
            scenarios.append(s)
            _say(s)
        s = http_scenario(f"sell-out {opts.sellout_tickets} tickets, {opts.sellout_clients} clients",
                          replace(book, event_ids=(sellout_event,), stop_codes=("sold_out",)),
                          connections=opts.sellout_clients, duration=opts.sellout_timeout, opts=opts, probe=probe,
                          database_url=env.database_url, event_ids=[sellout_event], sellout=True)
        s["kind"] = "sellout"
        scenarios.append(s)
        _say(s)
        for clients in opts.spread_clients:
            s = http_scenario(f"{len(spread)} events, {clients} clients", replace(book, event_ids=tuple(spread)),
                              connections=clients, duration=opts.duration, opts=opts, probe=probe,
                              database_url=env.database_url, event_ids=spread)
            s["kind"] = "spread"
            scenarios.append(s)
            _say(s)
        report["scenarios"] = scenarios
        report["ratios"] = ratios(report)
        report["ok"] = "pgbench_skipped" not in report and all(
            s["check"]["ok"] and s["errors_5xx"] == 0 for s in scenarios) and all(
            c is None or c["ok"] for c in (report.get("pgbench", {}).get("hot_check"),
                                           report.get("pgbench", {}).get("spread_check")))
        return report
    finally:
        server.stop()
        _drop_queue(env.redis_url, server.env["NOTIFY_QUEUE"])


def customer_limit(opts: Options) -> int:
    """The server's default per-customer limit (the sell-out event's)."""
    from shared.platform.settings import get_settings

    return int(opts.server_env.get("MAX_TICKETS_PER_CUSTOMER", get_settings().max_tickets_per_customer))


def sellout_customers(opts: Options) -> int:
    """Customers for the sell-out: each connection rotates over as many, a third of the limit each on average."""
    per_connection = math.ceil(3 * opts.sellout_tickets / customer_limit(opts) / opts.sellout_clients)
    return max(1, per_connection) * opts.sellout_clients


def _drop_queue(redis_url: str, queue: str) -> None:
    import redis

    try:
        client = redis.Redis.from_url(redis_url, socket_timeout=5)
        client.delete(queue)
        client.close()
    except redis.RedisError:
        pass


def ratios(report: dict[str, Any]) -> dict[str, float | None]:
    pg = report.get("pgbench")
    if not pg:
        return {}
    peak, at_64 = pg["peak"]["tps"], (pg["at_64"] or {}).get("tps")
    spread_pg = {r["clients"]: r["tps"] for r in pg["spread"]}
    out: dict[str, float | None] = {}
    for s in report.get("scenarios", []):
        key = s["name"]
        if s["kind"] in ("hot", "sellout"):
            out[f"{key} / pgbench peak"] = round(s["per_s"] / peak, 2) if peak else None
            if s["clients"] == 64 and at_64:
                out[f"{key} / pgbench 64 clients"] = round(s["per_s"] / at_64, 2)
        elif s["kind"] == "spread" and spread_pg:
            base = spread_pg.get(s["clients"]) or max(spread_pg.values())
            out[f"{key} / pgbench spread"] = round(s["per_s"] / base, 2)
    return out


def _say(s: dict[str, Any]) -> None:
    lat = s["latency_ms"]
    check = s.get("check", {})
    print(f"  {s['name']:<42} {s['per_s']:>9.1f}/s  p50 {lat['p50']} ms  p99 {lat['p99']} ms  "
          f"errors {s['errors'] or 0}  check {'ok' if check.get('ok', True) else 'FAILED'}", flush=True)


def table(report: dict[str, Any]) -> str:
    """The human summary: one line per measurement, ratios first."""
    lines = []
    pg = report.get("pgbench")
    peak = pg["peak"]["tps"] if pg else None
    if report.get("ratios"):
        lines.append("Ratios (full stack / pgbench, same SQL, same PostgreSQL)")
        lines += [f"  {name:<62} {value:>6.2f}x" for name, value in report["ratios"].items() if value is not None]
        lines.append("")
    head = f"{'scenario':<44} {'clients':>7} {'bookings/s':>11} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} " \
           f"{'vs peak':>8}  {'errors':<24} {'oversell':<8} {'cores srv/pg/gen/other':<22}"
    lines += [head, "-" * len(head)]
    if pg:
        for r in pg["hot"]:
            mark = " (peak)" if r is pg["peak"] or r == pg["peak"] else ""
            lines.append(f"{'pgbench hot event' + mark:<44} {r['clients']:>7} {r['tps']:>11.1f} "
                         f"{_fmt(r['latency_avg_ms']):>8} {'':>8} {'':>8} {r['tps'] / peak:>7.2f}x  "
                         f"{'failed ' + str(r['failed']) if r['failed'] else '-':<24} "
                         f"{_oversell(pg['hot_check']):<8}")
        for r in pg["spread"]:
            lines.append(f"{'pgbench ' + str(pg['spread_check']['events']) + ' events':<44} {r['clients']:>7} "
                         f"{r['tps']:>11.1f} {_fmt(r['latency_avg_ms']):>8} {'':>8} {'':>8} {'':>8}  "
                         f"{'-':<24} {_oversell(pg['spread_check']):<8}")
        lines.append("  (pgbench latency: average, the p50 column)")
    ceiling = report.get("generator_ceiling")
    if ceiling:
        lat = ceiling["latency_ms"]
        lines.append(f"{'generator ceiling GET /health/live':<44} {ceiling['clients']:>7} "
                     f"{ceiling['per_s']:>11.1f} {_fmt(lat['p50']):>8} {_fmt(lat['p95']):>8} {_fmt(lat['p99']):>8} "
                     f"{'':>8}  {_errors(ceiling):<24} {'':<8} {_cores(ceiling)}")
    alone = report.get("generator_alone")
    if alone:
        lines.append(f"{'generator alone (canned-response server)':<44} {alone['clients']:>7} {alone['per_s']:>11.1f} "
                     f"{'':>8} {'':>8} {_fmt(alone['p99_ms']):>8} {'':>8}  {'-':<24} {'':<8} "
                     f"-/-/{sum(alone['loadgen_cores_per_proc']):.2f}/-")
    for s in report.get("scenarios", []):
        lat = s["latency_ms"]
        vs = f"{s['per_s'] / peak:>7.2f}x" if peak else f"{'':>8}"
        lines.append(f"{'http ' + s['name']:<44} {s['clients']:>7} {s['per_s']:>11.1f} {_fmt(lat['p50']):>8} "
                     f"{_fmt(lat['p95']):>8} {_fmt(lat['p99']):>8} {vs}  {_errors(s):<24} "
                     f"{_oversell(s['check']):<8} {_cores(s)}")
    return "\n".join(lines)


def _cores(s: dict[str, Any]) -> str:
    c = s["cpu_cores"]
    parts = [c.get("server"), c.get("postgres"), sum(c["loadgen_per_proc"]), c.get("other")]
    return "/".join("-" if p is None else f"{p:.2f}" for p in parts)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _errors(s: dict[str, Any]) -> str:
    if not s["errors"]:
        return "-"
    codes = ",".join(f"{c}:{n}" for c, n in s["error_codes"].items())
    text = " ".join(f"{k}:{v}" for k, v in s["errors"].items())
    return f"{text} ({codes})" if codes else text


def _oversell(check: dict[str, Any] | None) -> str:
    if check is None:
        return "-"
    return "0 ok" if check["ok"] else f"FAIL {check['oversold']}"
