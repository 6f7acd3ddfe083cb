"""The Lambda path: CPU per booking invocation, and throughput of many independent environments.

    python -m bench.lambda_path [--quick] [--invocations 3000] [--envs 64,256] [--duration 10]
                                [--pgbench-peak TPS] [--no-pooler] [--profile 25]

Every process here is a simulated Lambda environment: ``AWS_LAMBDA_FUNCTION_NAME`` set (so a
pool of one connection, no coalescing, EMF metric lines), production settings (``APP_ENV``
unset, a generated 48-byte ``JWT_SECRET``, rate limits on at their defaults, ``LOG_LEVEL=INFO``;
log and metric lines go to a file, as the runtime ships stdout), calling
``functions.booking.handler.handler`` with API Gateway v2 events posting ``/bookings``.

1. **CPU per invocation** (one process): a few thousand bookings after a warm-up, process
   CPU time (``time.process_time``: every thread of the process, the pool's and the
   deadline watchdog's too) divided by invocations; the baseline in the same run is
   bench/lambda_hello.py (FastAPI + Mangum, one async route with a pydantic body) invoked
   with the same kind of events. Every booking must answer 201, or the figure is of
   something else: requests rotate over enough customers and source IPs that the per-user
   (20/60) and per-IP (300/60) limits refuse none. Each customer books ~18 times, so a
   token's signature is verified once and then read from the process's cache (tokens.py),
   as for a customer who books again on a warm environment.
2. **N environments** (64 and 256): one process imports the handler and forks N children
   (independent processes, each its own pool of one and its own Redis client; forking
   after the import only saves the start-up CPU of N interpreters). Each warms up, then all
   book one hot event in a closed loop for D seconds. Reported: bookings/s, p50/p99,
   statuses, and the checks afterwards (bookings rows == tickets taken == 201s counted,
   no oversell, one outbox row per booking, zero 5xx). The baseline is the one-row
   pgbench peak of the same booking SQL (bench/pgbench_booking.py), run here or given.

A default PostgreSQL accepts 100 connections: when ``pgbouncer`` is on PATH the
environments connect through one in transaction mode (a stand-in for RDS Proxy), with
``DB_PREPARE_THRESHOLD=none`` (server-side prepared statements do not survive transaction
pooling in PgBouncer before 1.21) and ``DB_STARTUP_OPTIONS=false`` (PgBouncer before 1.20
refuses the ``statement_timeout`` startup option; its ``connect_query`` sets it instead).
Without it, scenarios that would not fit the server's connections are skipped and said so.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BOOKING_HANDLER = "functions.booking.handler:handler"
GOAL_CPU_RATIO = 3.0  # issue 13 goal 3: booking CPU per invocation within 3x hello-world
GOAL_THROUGHPUT_RATIO = 1.0  # ... and N environments at >= 1.0x the one-row pgbench peak
MB_PER_ENVIRONMENT = 60  # resident memory of one warm booking environment, roughly
NO_CUSTOMER_LIMIT = 1_000_000  # the hot events' own per-customer limit (bench/rush.py)
TICKETS = 1_000_000
# The booking limits at their defaults (shared/platform/settings.py): budgets to spread load over.
PER_USER_BURST, PER_USER_PERIOD = 20, 60.0
PER_IP_BURST, PER_IP_PERIOD = 300, 60.0


@dataclass
class Options:
    invocations: int = 3000
    warmup: int = 300
    envs: list[int] = field(default_factory=lambda: [64, 256])
    duration: float = 10.0
    env_warmup: int = 3
    pg_clients: list[int] = field(default_factory=lambda: [1, 4, 8, 16, 32])
    pg_duration: float = 5.0
    pgbench_peak: float | None = None
    skip_cpu: bool = False
    skip_envs: bool = False
    pooler: bool = True
    pooler_size: int = 20
    profile: int = 0  # top N rows of a cProfile pass over the booking invocations (0: none)
    # Bookings/s the user pools are sized for (spread evenly, with room for 4x imbalance).
    aggregate_cap: float = 5000.0

    @classmethod
    def quick(cls) -> Options:
        """A seconds-long correctness run (the smoke test): tiny, not a measurement."""
        return cls(invocations=150, warmup=30, envs=[4], duration=2.0, env_warmup=2, pg_clients=[1, 4],
                   pg_duration=1.0, aggregate_cap=500.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    ints = lambda text: [int(x) for x in text.split(",") if x]  # noqa: E731
    parser.add_argument("--quick", action="store_true", help="tiny correctness run (seconds); overrides defaults")
    parser.add_argument("--invocations", type=int, help="measured booking invocations, one process (default 3000)")
    parser.add_argument("--warmup", type=int, help="unmeasured invocations first (default 300)")
    parser.add_argument("--envs", type=ints, help="environment counts (default 64,256)")
    parser.add_argument("--duration", type=float, help="seconds per environments scenario (default 10)")
    parser.add_argument("--pg-clients", type=ints, help="pgbench client counts for the peak (default 1,4,8,16,32)")
    parser.add_argument("--pg-duration", type=float, help="seconds per pgbench run (default 5)")
    parser.add_argument("--pgbench-peak", type=float, help="the one-row pgbench peak measured elsewhere (no pgbench)")
    parser.add_argument("--skip-cpu", action="store_true", help="no CPU-per-invocation scenario")
    parser.add_argument("--skip-envs", action="store_true", help="no N-environments scenarios")
    parser.add_argument("--no-pooler", action="store_true", help="connect directly even when pgbouncer exists")
    parser.add_argument("--pooler-size", type=int, help="PgBouncer server connections (default 20)")
    parser.add_argument("--profile", type=int, metavar="N",
                        help="also profile the booking invocations (cProfile) and report the top N")


def options_from(args: argparse.Namespace) -> Options:
    opts = Options.quick() if getattr(args, "quick", False) else Options()
    for name in ("invocations", "warmup", "envs", "duration", "pg_clients", "pg_duration", "pgbench_peak",
                 "pooler_size", "profile"):
        value = getattr(args, name, None)
        if value is not None:
            setattr(opts, name, value)
    opts.skip_cpu = bool(getattr(args, "skip_cpu", False))
    opts.skip_envs = bool(getattr(args, "skip_envs", False))
    opts.pooler = not getattr(args, "no_pooler", False)
    return opts


# --------------------------------------------------------------------------- environments


def lambda_env(database_url: str, redis_url: str, secret: str, run_id: str) -> dict[str, str]:
    """The environment of a simulated Lambda environment: production settings, limits on.

    Variables that would change a default (a developer's shell, the test suite's) are
    dropped; the rate-limit keys and the notification queue get this run's own names, so
    one run's budgets never refuse the next and nothing consumes the bench's messages.
    """
    keep = {k: v for k, v in os.environ.items()
            if k in ("PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "TMPDIR", "VIRTUAL_ENV")}
    return {
        **keep,
        "AWS_LAMBDA_FUNCTION_NAME": "booking",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "JWT_SECRET": secret,
        "LOG_LEVEL": "INFO",
        "RATE_LIMIT_KEY_PREFIX": f"bench-lambda-{run_id}",
        "NOTIFY_QUEUE": f"bench-lambda-{run_id}",
        "PYTHONHASHSEED": "0",
    }


def _python_env(base: dict[str, str]) -> dict[str, str]:
    root = str(Path(__file__).resolve().parent.parent)
    return {**base, "PYTHONPATH": os.pathsep.join(p for p in (root, base.get("PYTHONPATH", "")) if p)}


def _child(kind: str, spec: dict[str, Any], env: dict[str, str], workdir: Path, timeout: float) -> dict[str, Any]:
    """Run ``python -m bench.lambda_path --child`` with ``spec``; its JSON result."""
    spec_path = workdir / f"{kind}-{time.time_ns()}.json"
    result_path = spec_path.with_suffix(".result.json")
    spec_path.write_text(json.dumps({**spec, "kind": kind, "result": str(result_path)}))
    log_path = spec_path.with_suffix(".log")
    with log_path.open("wb") as log:
        proc = subprocess.run([sys.executable, "-m", "bench.lambda_path", "--child", str(spec_path)],
                              env=_python_env(env), stdout=log, stderr=subprocess.STDOUT, timeout=timeout,
                              check=False, cwd=str(Path(__file__).resolve().parent.parent))
    if proc.returncode != 0 or not result_path.exists():
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{kind} child failed ({proc.returncode}); log {log_path}:\n{tail}")
    result: dict[str, Any] = json.loads(result_path.read_text())
    return result


def _source_ips(group: int, count: int) -> list[str]:
    """Distinct IPv4 addresses (each its own per-IP budget) in 10.<group>.0.0/16."""
    return [f"10.{group}.{i // 250}.{i % 250 + 1}" for i in range(count)]


def _pool_sizes(bookings: float) -> tuple[int, int]:
    """Customers and source IPs enough that ``bookings`` spread evenly over them stay in the limits."""
    return (max(1, math.ceil(bookings / (PER_USER_BURST - 2))), max(1, math.ceil(bookings / (PER_IP_BURST - 20))))


# --------------------------------------------------------------------------- PgBouncer


class Pooler:
    """PgBouncer in transaction mode in front of the run's database (a stand-in for RDS Proxy)."""

    def __init__(self, env: Any, max_clients: int, pool_size: int, statement_timeout_ms: int) -> None:
        from local.embedded import free_port

        self.dir = Path(tempfile.mkdtemp(prefix="bench-pgbouncer-"))
        self.port = free_port()
        info = env.pg_conninfo
        server = f"host={info['host']} port={info['port']} user={info['user']} dbname={info['dbname']}"
        if info["password"]:
            server += f" password={info['password']}"
        (self.dir / "users.txt").write_text(f'"{info["user"]}" ""\n')
        (self.dir / "pgbouncer.ini").write_text("\n".join([
            "[databases]",
            # The pool's statement_timeout: PgBouncer before 1.20 refuses a startup
            # ``options`` (DB_STARTUP_OPTIONS=false), so each server connection sets it once.
            f"{info['dbname']} = {server} connect_query='SET statement_timeout = {statement_timeout_ms}'",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            "auth_type = trust",
            f"auth_file = {self.dir / 'users.txt'}",
            "pool_mode = transaction",
            f"max_client_conn = {max_clients + 50}",
            f"default_pool_size = {pool_size}",
            "min_pool_size = 0",
            "ignore_startup_parameters = extra_float_digits",
            f"logfile = {self.dir / 'pgbouncer.log'}",
            "log_connections = 0",
            "log_disconnections = 0",
            "",
        ]))
        self.url = f"postgresql://{info['user']}@127.0.0.1:{self.port}/{info['dbname']}"
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> str | None:
        return shutil.which("pgbouncer") or next(
            (p for p in ("/usr/sbin/pgbouncer", "/usr/local/bin/pgbouncer") if os.access(p, os.X_OK)), None)

    def start(self, timeout: float = 15.0) -> None:
        import psycopg

        from local.embedded import _run_as

        binary = self.available()
        assert binary is not None
        uid, gid = _run_as()  # PgBouncer refuses to run as root: PostgreSQL's embedded user then
        as_user: dict[str, Any] = {}
        if uid is not None:
            as_user = {"user": uid, "group": gid, "extra_groups": []}
            for path in (self.dir, *self.dir.iterdir()):
                os.chown(path, uid, gid if gid is not None else -1)
        self.process = subprocess.Popen([binary, str(self.dir / "pgbouncer.ini")], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, **as_user)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=2, prepare_threshold=None) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.Error:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = self.dir / "pgbouncer.log"
                    raise RuntimeError("pgbouncer did not start: "
                                       + (log.read_text()[-2000:] if log.exists() else "no log")) from None
                time.sleep(0.1)

    def version(self) -> str:
        binary = self.available()
        out = subprocess.run([binary or "pgbouncer", "--version"], capture_output=True, text=True, check=False)
        return out.stdout.splitlines()[0] if out.stdout else "unknown"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def _free_connections(database_url: str) -> int:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            """SELECT current_setting('max_connections')::int
                      - current_setting('superuser_reserved_connections')::int
                      - (SELECT count(*) FROM pg_stat_activity)::int""").fetchone()
    return int(row[0]) if row else 0


def _available_mb() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------- the run


def run(env: Any, opts: Options, out_dir: Path) -> dict[str, Any]:
    """Both Lambda-path scenarios on ``env`` (bench.environment.Environment); the report's section."""
    out_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-lambda-", dir=out_dir))
    run_id = f"{os.getpid()}-{time.time_ns() % 10**9}"
    secret = secrets.token_urlsafe(48)
    base = lambda_env(env.database_url, env.redis_url, secret, run_id)
    report: dict[str, Any] = {
        "options": dict(opts.__dict__),
        "settings": {"AWS_LAMBDA_FUNCTION_NAME": "booking", "APP_ENV": "unset (production)", "LOG_LEVEL": "INFO",
                     "RATE_LIMIT_ENABLED": "default (true)", "JWT_SECRET": "generated, 48 bytes urlsafe"},
        "notes": [],
    }
    try:
        sizes = _fixture_sizes(opts)
        fixtures = _child("setup", sizes, base, workdir, timeout=600)
        report["fixtures"] = {k: v for k, v in sizes.items()}
        if not opts.skip_cpu:
            report["cpu"] = cpu_part(opts, base, fixtures, workdir)
        if not opts.skip_envs and opts.envs:
            report["pgbench"] = pgbench_part(env, opts, fixtures, workdir, report["notes"])
            report["envs"] = envs_part(env, opts, base, fixtures, workdir, report)
        report["ok"] = _ok(report)
        return report
    finally:
        _drop_queue(env.redis_url, base["NOTIFY_QUEUE"])


def _fixture_sizes(opts: Options) -> dict[str, Any]:
    """How many customers each scenario rotates over (limits on: none may be refused)."""
    cpu_users, _ = _pool_sizes(opts.warmup + opts.invocations)
    # The profile pass (its own process, right after) gets customers of its own.
    profile_users = _pool_sizes(_profile_warmup(opts) + opts.invocations)[0] if opts.profile else 0
    # Environments: the aggregate cap spread evenly over the window (and warm-ups), 4x room.
    window_budget = PER_USER_BURST + opts.duration * PER_USER_BURST / PER_USER_PERIOD
    env_users = {n: max(n * 2, math.ceil(4 * opts.aggregate_cap * opts.duration / window_budget) + n * opts.env_warmup)
                 for n in (opts.envs if not opts.skip_envs else [])}
    return {"cpu_users": 0 if opts.skip_cpu else cpu_users + profile_users, "profile_users": profile_users,
            "env_users": env_users}


def _profile_warmup(opts: Options) -> int:
    return min(opts.warmup, 50)


def _ok(report: dict[str, Any]) -> bool:
    cpu = report.get("cpu")
    ok = cpu is None or cpu["all_201"]
    for s in (report.get("envs") or {}).get("scenarios", []):
        ok = ok and (s.get("skipped") is not None or (s["check"]["ok"] and s["errors_5xx"] == 0))
    return bool(ok)


def cpu_part(opts: Options, base: dict[str, str], fixtures: dict[str, Any], workdir: Path) -> dict[str, Any]:
    users = fixtures["cpu"]
    profile_users = len(users["tokens"]) - _pool_sizes(opts.warmup + opts.invocations)[0] if opts.profile else 0
    tokens = users["tokens"][: len(users["tokens"]) - profile_users]
    spec = {"tokens": tokens, "event_id": users["event_id"],
            "ips": _source_ips(1, _pool_sizes(opts.warmup + opts.invocations)[1]),
            "warmup": opts.warmup, "invocations": opts.invocations}
    print(f"lambda path: CPU per invocation, {opts.invocations} after {opts.warmup} warm-up", flush=True)
    hello = _child("cpu", {**spec, "handler": "bench.lambda_hello:handler"}, base, workdir, timeout=600)
    booking = _child("cpu", {**spec, "handler": BOOKING_HANDLER}, base, workdir, timeout=900)
    ratio = booking["cpu_us"] / hello["cpu_us"] if hello["cpu_us"] else None
    out = {"hello": hello, "booking": booking, "ratio": None if ratio is None else round(ratio, 2),
           "goal": GOAL_CPU_RATIO, "met": ratio is not None and ratio <= GOAL_CPU_RATIO,
           "all_201": set(booking["statuses"]) == {"201"} and set(hello["statuses"]) == {"201"}}
    print(f"  hello FastAPI+Mangum {hello['cpu_us']:>8.0f} us/invocation; booking {booking['cpu_us']:>8.0f} us "
          f"({out['ratio']}x; statuses {booking['statuses']})", flush=True)
    if opts.profile:
        # A process of its own: cProfile slows what it watches, and in every thread from its
        # start (the booking runs on a worker thread), so it cannot share the measured one.
        profiled = _child("cpu", {**spec, "handler": BOOKING_HANDLER, "tokens": users["tokens"][-profile_users:],
                                  "ips": _source_ips(200, _pool_sizes(_profile_warmup(opts) + opts.invocations)[1]),
                                  "warmup": _profile_warmup(opts), "profile": opts.profile}, base, workdir, 900)
        out["profile"] = profiled["profile"]
        out["all_201"] = out["all_201"] and set(profiled["statuses"]) == {"201"}
    return out


def pgbench_part(env: Any, opts: Options, fixtures: dict[str, Any], workdir: Path,
                 notes: list[str]) -> dict[str, Any] | None:
    """The one-row pgbench peak of the booking SQL (bench/rush.py's runs), or the figure given."""
    if opts.pgbench_peak:
        return {"peak": {"tps": opts.pgbench_peak, "clients": None}, "source": "given (--pgbench-peak)"}
    from bench import pgbench_booking, rush
    from bench.wrk_crowd import contiguous_ids

    pg = fixtures["pgbench"]
    rush_opts = rush.Options(pg_clients=opts.pg_clients, pg_duration=opts.pg_duration)
    print("pgbench: the booking statement alone, one hot event on one stock row", flush=True)
    try:
        part = rush.pgbench_part(env, contiguous_ids(pg["customer_ids"]), pg["event_id"], None, [], rush_opts,
                                 workdir)
    except (pgbench_booking.ScriptError, FileNotFoundError, RuntimeError) as exc:
        notes.append(f"pgbench not run: {exc}")
        return None
    part["source"] = "measured in this run"
    return part


def envs_part(env: Any, opts: Options, base: dict[str, str], fixtures: dict[str, Any], workdir: Path,
              report: dict[str, Any]) -> dict[str, Any]:
    notes: list[str] = report["notes"]
    pooler: Pooler | None = None
    binary = Pooler.available()
    out: dict[str, Any] = {"scenarios": []}
    peak = ((report.get("pgbench") or {}).get("peak") or {}).get("tps")
    try:
        if opts.pooler and binary:
            from shared.platform.settings import Settings

            pooler = Pooler(env, max(opts.envs), opts.pooler_size, Settings().db_statement_timeout_ms)
            pooler.start()
            out["pooler"] = {"kind": "pgbouncer", "version": pooler.version(), "pool_mode": "transaction",
                             "server_connections": opts.pooler_size, "DB_PREPARE_THRESHOLD": "none",
                             "DB_STARTUP_OPTIONS": "false"}
        else:
            why = "--no-pooler" if not opts.pooler else "pgbouncer is not on PATH"
            notes.append(f"no pooler ({why}): environments connect directly to PostgreSQL")
            out["pooler"] = None
        for group, n in enumerate(opts.envs, start=2):
            name = f"{n} environments, hot event"
            free_mb = _available_mb()
            if free_mb is not None and n * MB_PER_ENVIRONMENT > 0.8 * free_mb:
                out["scenarios"].append({"name": name, "envs": n, "skipped":
                                         f"{n} x ~{MB_PER_ENVIRONMENT} MB does not fit {free_mb} MB available"})
                notes.append(out["scenarios"][-1]["skipped"])
                continue
            if pooler is None and n + 5 > _free_connections(env.database_url):
                out["scenarios"].append({"name": name, "envs": n, "skipped":
                                         f"{n} connections do not fit the server's free connections "
                                         "(no pooler)"})
                notes.append(f"{name}: skipped, {out['scenarios'][-1]['skipped']}")
                continue
            env_vars = dict(base)
            if pooler is not None:
                env_vars.update(DATABASE_URL=pooler.url, DB_PREPARE_THRESHOLD="none", DB_STARTUP_OPTIONS="false")
            s = env_scenario(env, opts, n, group, env_vars, fixtures["envs"][str(n)], workdir)
            s["name"] = name
            s["via"] = "pgbouncer (transaction mode)" if pooler is not None else "direct"
            s["ratio"] = round(s["per_s"] / peak, 2) if peak else None
            out["scenarios"].append(s)
            print(f"  {name:<30} {s['per_s']:>8.1f}/s  p50 {s['latency_ms']['p50']} ms  "
                  f"p99 {s['latency_ms']['p99']} ms  statuses {s['statuses']}  "
                  f"check {'ok' if s['check']['ok'] else 'FAILED'}", flush=True)
        return out
    finally:
        if pooler is not None:
            pooler.stop()


def env_scenario(env: Any, opts: Options, n: int, group: int, env_vars: dict[str, str], users: dict[str, Any],
                 workdir: Path) -> dict[str, Any]:
    from bench import rush

    per_env_budget = 4 * opts.aggregate_cap / n * opts.duration + opts.env_warmup
    _, ips_per_env = _pool_sizes(per_env_budget)
    spec = {"tokens": users["tokens"], "event_id": users["event_id"], "envs": n, "duration": opts.duration,
            "warmup": opts.env_warmup, "ips": _source_ips(group, ips_per_env * n)}
    print(f"lambda path: {n} environments, {opts.duration:.0f} s on one hot event", flush=True)
    before = rush.max_booking_id(env.database_url)
    result = _child("envs", spec, env_vars, workdir, timeout=opts.duration + 120 + n)
    from bench.loadgen import percentile

    lat = result["latencies_ms"]
    statuses = {int(k): v for k, v in result["statuses"].items()}
    successes_all = result["successes_total"]
    check = rush.ticket_check(env.database_url, [users["event_id"]], after_booking_id=before,
                              client_successes=successes_all,
                              ids_distinct=len(set(result["booking_ids"])) == len(result["booking_ids"]))
    out = {
        "envs": n,
        "duration_s": result["window_s"],
        "successes": result["successes"],
        "per_s": round(result["successes"] / result["window_s"], 1) if result["window_s"] else 0.0,
        "latency_ms": {p: _ms(percentile(lat, q)) for p, q in (("p50", 50), ("p95", 95), ("p99", 99))}
        | {"max": _ms(max(lat) if lat else None)},
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "outside_window": result["outside_window"],
        "errors_5xx": sum(v for k, v in statuses.items() if k >= 500)
        + sum(v for k, v in result["outside_window"].items() if int(k) >= 500),
        "refused_429": statuses.get(429, 0),
        "ready_s": result["ready_s"],
        "late_starts": result["late_starts"],
        "check": check,
    }
    return out


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _drop_queue(redis_url: str, queue: str) -> None:
    try:
        import redis

        client = redis.Redis.from_url(redis_url, socket_timeout=5)
        client.delete(queue)
        client.close()
    except Exception:  # the bench's own queue; nothing depends on it being gone
        pass


# --------------------------------------------------------------------------- the table


def table(report: dict[str, Any]) -> str:
    """Markdown rows: what | figure | ratio | p99 | notes."""
    rows = ["| what | figure | ratio | p99 | notes |", "|---|---|---|---|---|"]
    cpu = report.get("cpu")
    if cpu:
        hello, booking = cpu["hello"], cpu["booking"]
        rows.append(f"| Lambda: hello-world FastAPI + Mangum (pydantic body), CPU per invocation | "
                    f"{hello['cpu_us']:.0f} us | 1.00 | - | {hello['invocations']} invocations |")
        goal = "met" if cpu["met"] else "NOT met"
        rows.append(f"| Lambda: booking handler, CPU per invocation (production settings, limits on) | "
                    f"{booking['cpu_us']:.0f} us | **{cpu['ratio']:.2f}** | - | goal <= {cpu['goal']:.0f}x {goal}; "
                    f"statuses {_statuses(booking['statuses'])}; {booking['wall_us']:.0f} us wall |")
    pg = report.get("pgbench") or {}
    peak = (pg.get("peak") or {}).get("tps")
    if peak:
        clients = pg["peak"].get("clients")
        rows.append(f"| pgbench, booking SQL, one hot row, peak | {peak:,.0f} tps | 1.00 | - | "
                    f"{pg.get('source', '')}{f', {clients} clients' if clients else ''} |")
    envs = report.get("envs") or {}
    for s in envs.get("scenarios", []):
        if s.get("skipped"):
            rows.append(f"| Lambda: {s['name']} | - | - | - | skipped: {s['skipped']} |")
            continue
        ratio = f"**{s['ratio']:.2f}**" if s.get("ratio") is not None else "-"
        check = "0 oversell, checks ok" if s["check"]["ok"] else f"CHECK FAILED {s['check']}"
        rows.append(f"| Lambda: {s['name']} ({s['via']}) | {s['per_s']:,.0f} bookings/s | {ratio} | "
                    f"{_fmt(s['latency_ms']['p99'])} ms | p50 {_fmt(s['latency_ms']['p50'])} ms; "
                    f"statuses {_statuses(s['statuses'])}; {check} |")
    pooler = envs.get("pooler")
    if pooler:
        rows.append(f"| pooler | {pooler['version']} | - | - | transaction mode, {pooler['server_connections']} "
                    "server connections, DB_PREPARE_THRESHOLD=none, DB_STARTUP_OPTIONS=false |")
    for note in report.get("notes", []):
        rows.append(f"| note | - | - | - | {note} |")
    profile = (cpu or {}).get("profile")
    if profile:
        rows.append("")
        rows.append("Booking invocation profile (cProfile on each thread's CPU clock, by own time):")
        rows += [f"    {line}" for line in profile]
    return "\n".join(rows)


def _statuses(statuses: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


# --------------------------------------------------------------------------- children


def _load(handler: str) -> Any:
    import importlib

    module, _, attr = handler.partition(":")
    return getattr(importlib.import_module(module), attr)


def _booking_event(token: str, ip: str, event_id: int) -> dict[str, Any]:
    from local.lambda_events import build_lambda_event

    body = json.dumps({"event_id": event_id, "quantity": 1})
    return build_lambda_event("POST", "/bookings", headers={"authorization": f"Bearer {token}",
                                                            "content-type": "application/json"},
                              body=body, source_ip=ip)


def _context(i: int) -> Any:
    from local.lambda_events import LambdaContext

    return LambdaContext(function_name="booking", aws_request_id=f"00000000-0000-4000-8000-{i:012d}")


def _child_setup(spec: dict[str, Any]) -> dict[str, Any]:
    """Customers (bulk, no password anyone uses), their tokens, and the events, in the run's database."""
    from shared.accounts.emails import email_skeleton, normalize_email
    from shared.accounts.tokens import issue_token
    from shared.platform.db import close_pool, connection
    from shared.ticketing.events import create_event

    stamp = f"{os.getpid()}-{time.time_ns()}"

    def customers(count: int, label: str) -> list[int]:
        emails = [f"bench-{label}-{i}-{stamp}@bench.test" for i in range(count)]
        with connection() as conn, conn.transaction(), conn.cursor() as cur:
            with cur.copy("COPY users (email, email_key, email_skeleton, password_hash, role) FROM STDIN") as copy:
                for email in emails:
                    copy.write_row((email, normalize_email(email), email_skeleton(email), "!bench", "customer"))
            rows = conn.execute("SELECT id FROM users WHERE email = ANY(%s) ORDER BY id", (emails,)).fetchall()
        return [int(r["id"]) for r in rows]

    def hot_event(organizer: int, title: str) -> int:
        event = create_event(organizer_id=organizer, fields={
            "title": title, "total_tickets": TICKETS, "max_tickets_per_customer": NO_CUSTOMER_LIMIT})
        return int(event["id"])

    with connection() as conn:
        row = conn.execute(
            "INSERT INTO users (email, email_key, email_skeleton, password_hash, role) "
            "VALUES (%(e)s, %(e)s, %(e)s, '!bench', 'organizer') RETURNING id",
            {"e": f"bench-organizer-{stamp}@bench.test"}).fetchone()
    assert row is not None
    organizer = int(row["id"])

    def pool(count: int, label: str) -> dict[str, Any]:
        ids = customers(count, label)
        return {"event_id": hot_event(organizer, f"lambda {label}"), "customer_ids": ids,
                "tokens": [issue_token(i, "customer")[0] for i in ids]}

    out: dict[str, Any] = {"envs": {}}
    if spec["cpu_users"]:
        out["cpu"] = pool(spec["cpu_users"], "cpu")
    for n, count in spec["env_users"].items():
        out["envs"][str(n)] = pool(count, f"envs-{n}")
    if spec["env_users"]:
        # pgbench picks customers by id from a contiguous range: the largest pool's.
        out["pgbench"] = {"event_id": hot_event(organizer, "lambda pgbench"),
                          "customer_ids": out["envs"][str(max(spec["env_users"], key=int))]["customer_ids"]}
    close_pool()
    return out


def _child_cpu(spec: dict[str, Any]) -> dict[str, Any]:
    """One process, one handler: CPU time per invocation over many, after a warm-up.

    With ``profile``, every thread runs under cProfile from the start (warm-up included)
    and the result is the top of the merged profile, not a figure to compare.
    """
    import gc

    handler = _load(spec["handler"])
    tokens, ips = spec["tokens"], spec["ips"]
    total = spec["warmup"] + spec["invocations"]
    # Built up front: building an event is the caller's cost, not the function's.
    requests = [(_booking_event(tokens[i % len(tokens)], ips[i % len(ips)], spec["event_id"]), _context(i))
                for i in range(total)]
    profilers = _profile_every_thread() if spec.get("profile") else None  # before any worker thread starts
    statuses: Counter[str] = Counter()
    for event, context in requests[: spec["warmup"]]:
        statuses[str(handler(event, context)["statusCode"])] += 1
    measured = requests[spec["warmup"]:]
    gc.collect()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for event, context in measured:
        statuses[str(handler(event, context)["statusCode"])] += 1
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    out: dict[str, Any] = {
        "handler": spec["handler"],
        "invocations": len(measured),
        "cpu_us": round(cpu / len(measured) * 1e6, 1),
        "wall_us": round(wall / len(measured) * 1e6, 1),
        "statuses": dict(statuses),
    }
    if profilers is not None:
        out["profile"] = _profile_lines(profilers, spec["profile"])
    return out


def _profile_every_thread() -> list[Any]:
    """A cProfile profiler in this thread and in every thread started from now on.

    Timed by each thread's CPU clock: the figures are CPU, not time spent waiting for the
    database or Redis (or for the GIL)."""
    import cProfile
    import threading

    profilers: list[cProfile.Profile] = []

    def in_new_thread(*_: Any) -> None:
        threading.setprofile(None)
        sys.setprofile(None)
        profiler = cProfile.Profile(time.thread_time)
        profilers.append(profiler)
        profiler.enable()

    threading.setprofile(in_new_thread)
    main = cProfile.Profile(time.thread_time)
    profilers.append(main)
    main.enable()
    return profilers


def _profile_lines(profilers: list[Any], top: int) -> list[str]:
    import io
    import pstats

    class Snapshot:
        """A profiler's completed calls. Not ``disable()``: from this thread it would close a
        worker thread's open calls (its idle wait) on this thread's clock."""

        def __init__(self, profiler: Any) -> None:
            profiler.snapshot_stats()
            self.stats = profiler.stats

        def create_stats(self) -> None:
            pass

    profilers[0].disable()
    stream = io.StringIO()
    stats = pstats.Stats(Snapshot(profilers[0]), stream=stream)  # type: ignore[arg-type]  # duck-typed
    for profiler in profilers[1:]:
        stats.add(Snapshot(profiler))  # type: ignore[arg-type]  # a worker thread's, still running
    stats.sort_stats("tottime").print_stats(top)
    return [line.rstrip() for line in stream.getvalue().splitlines() if line.strip()]


def _child_envs(spec: dict[str, Any]) -> dict[str, Any]:
    """Import the handler once, fork N environments, book one hot event in a closed loop in each."""
    handler = _load(BOOKING_HANDLER)
    n, tokens, ips = spec["envs"], spec["tokens"], spec["ips"]
    result_dir = Path(spec["result"]).with_suffix(".d")
    result_dir.mkdir(exist_ok=True)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    window_path = result_dir / "window.json"
    pids = []
    for k in range(n):
        pid = os.fork()
        if pid == 0:  # an environment
            code = 1
            try:
                os.close(ready_r)
                os.close(go_w)
                mine = (tokens[k::n] or tokens, ips[k::n] or ips)
                _environment(handler, spec, k, mine, ready_w, go_r, window_path, result_dir / f"{k}.json")
                code = 0
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
        pids.append(pid)
    os.close(ready_w)
    os.close(go_r)
    started = time.monotonic()
    ready = 0
    while ready < n:
        chunk = os.read(ready_r, n)
        if not chunk:
            break  # every environment wrote or died
        ready += len(chunk)
    ready_s = time.monotonic() - started
    start = time.time() + 0.2
    window_path.write_text(json.dumps({"start": start, "end": start + spec["duration"]}))
    os.close(go_w)  # EOF: every environment reads the window and goes
    failed = 0
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        failed += status != 0
    if failed:
        raise RuntimeError(f"{failed} of {n} environments failed")
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    outside: Counter[str] = Counter()
    ids: list[int] = []
    successes = successes_total = late = 0
    for k in range(n):
        part = json.loads((result_dir / f"{k}.json").read_text())
        latencies += part["latencies_ms"]
        statuses.update(part["statuses"])
        outside.update(part["outside"])
        ids += part["booking_ids"]
        successes += part["successes"]
        successes_total += part["successes_total"]
        late += part["late"]
    return {"envs": n, "ready_s": round(ready_s, 1), "window_s": spec["duration"], "latencies_ms": latencies,
            "statuses": dict(statuses), "outside_window": dict(outside), "booking_ids": ids, "successes": successes,
            "successes_total": successes_total, "late_starts": late}


def _environment(handler: Any, spec: dict[str, Any], k: int, mine: tuple[list[str], list[str]], ready_w: int,
                 go_r: int, window_path: Path, out: Path) -> None:
    """One environment: warm up, wait for the window, invoke back to back until it closes."""
    import asyncio

    # An event loop of its own (Mangum runs every invocation on the thread's loop): one made
    # before the fork would share its epoll instance and wake-up pipe with every sibling,
    # which then steal each other's wake-ups. Never closed: closing would unregister the
    # shared descriptors in the siblings' epoll too.
    asyncio.set_event_loop(asyncio.new_event_loop())
    tokens, ips = mine
    # Built before the loop (a deep copy of a template each: the runtime's cost, not the
    # function's); Mangum only reads an event, so each is reused as customers rotate.
    events = [_booking_event(tokens[j % len(tokens)], ips[j % len(ips)], spec["event_id"])
              for j in range(max(len(tokens), len(ips)))]
    i = 0

    def invoke() -> tuple[int, str | None]:
        nonlocal i
        response = handler(events[i % len(events)], _context(k * 10_000_000 + i))
        i += 1
        return response["statusCode"], response.get("body")

    booking_ids: list[int] = []
    statuses: Counter[str] = Counter()  # in the window
    outside: Counter[str] = Counter()  # warm-up, and the one in flight when the window closed
    successes_total = 0
    for _ in range(spec["warmup"]):
        status, body = invoke()
        outside[str(status)] += 1
        if status == 201:
            successes_total += 1
            booking_ids.append(int(json.loads(body or "{}")["id"]))
    os.write(ready_w, b"r")
    os.close(ready_w)
    os.read(go_r, 1)  # blocks until the parent closes its end
    window = json.loads(window_path.read_text())
    late = time.time() > window["start"] + 0.5
    while time.time() < window["start"]:
        time.sleep(0.001)
    latencies: list[float] = []
    successes = 0
    while True:
        t0 = time.perf_counter()
        status, body = invoke()
        done = time.time()
        if status == 201:
            successes_total += 1
            booking_ids.append(int(json.loads(body or "{}")["id"]))
        if done > window["end"]:
            outside[str(status)] += 1  # booked (or not) all the same: the check counts it
            break
        latencies.append((time.perf_counter() - t0) * 1000)
        statuses[str(status)] += 1
        successes += status == 201
    out.write_text(json.dumps({"latencies_ms": latencies, "statuses": dict(statuses), "outside": dict(outside),
                               "booking_ids": booking_ids,
                               "successes": successes, "successes_total": successes_total, "late": int(late)}))


_CHILDREN = {"setup": _child_setup, "cpu": _child_cpu, "envs": _child_envs}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        spec = json.loads(Path(argv[1]).read_text())
        result = _CHILDREN[spec["kind"]](spec)
        Path(spec["result"]).write_text(json.dumps(result))
        return 0
    from bench import environment

    parser = argparse.ArgumentParser(prog="python -m bench.lambda_path", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="an existing server (a fresh database is created on it)")
    parser.add_argument("--redis-url", help="an existing Redis (the bench uses keys and a queue of its own)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    add_arguments(parser)
    args = parser.parse_args(argv)
    opts = options_from(args)
    with environment.prepared(args.database_url, args.redis_url) as env:
        report: dict[str, Any] = {"machine": environment.machine(), "loadavg_at_start": list(os.getloadavg()),
                  "lambda_path": run(env, opts, args.out)}
    report["loadavg_at_end"] = list(os.getloadavg())
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"lambda-path-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    print()
    print(f"machine: {report['machine']['nproc']} x {report['machine']['cpu_model']}; load average "
          f"{report['loadavg_at_start'][0]:.1f} at start, {report['loadavg_at_end'][0]:.1f} at end")
    print(table(report["lambda_path"]))
    ok = report["lambda_path"]["ok"]
    print(f"\nreport: {path}{'' if ok else '  CHECKS FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
