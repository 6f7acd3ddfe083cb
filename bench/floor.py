"""The framework floor: ``GET /health/live`` of the API against a hello-world FastAPI app.

    python -m bench floor [--duration 10] [--generator auto|wrk|python] [--quick]

Each app is served in turn (never two under load at once) by the API's own uvicorn command
(``bench.rush.uvicorn_command``: one worker) with production settings: ``APP_ENV=production``,
a generated ``JWT_SECRET``, ``LOG_LEVEL=INFO``, rate limits on. The apps:

1. hello-world: FastAPI and one async route (``bench.floor_apps:hello``), the floor;
2. ``local.app:app``, the API as a container serves it (issue 13's goal: >= 0.8x the floor);
3. diagnostics that say where the distance is: a plain FastAPI app with only the health
   router, and ``create_app`` with only the health router (our middlewares and handlers).

The load comes from ``wrk -t1 -c64 --latency`` when wrk is on PATH (a C generator: it leaves
the other cores to the server), else from bench/loadgen.py, which the table then names. The
generator's own ceiling (a canned-response server) is measured first, in the same run.

Each row also gives the server's CPU time per answer (its process tree's CPU seconds over
the answers) and hello-world's over it: when other work shares the cores the rates and their
ratio move with it, the CPU spent per answer less so. ``python -m bench.floor_inprocess``
measures the same apps without a server (CPU us per raw ASGI call), steadier still.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import loadgen
from bench.rush import uvicorn_command
from local.embedded import free_port
from local.processes import spawn, tree_cpu_seconds, wait_http_ok

PATH = "/health/live"
GOAL = 0.8  # issue 13: the API's liveness route at >= 0.8x hello-world
HELLO = "hello"
CEILING = "ceiling"


@dataclass(frozen=True)
class App:
    key: str
    label: str
    target: str  # module:attribute, as uvicorn takes it


APPS = (
    App(HELLO, "hello-world FastAPI (one async route)", "bench.floor_apps:hello"),
    App("local", "local.app:app (the API)", "local.app:app"),
    App("fastapi_health", "FastAPI + health router", "bench.floor_apps:fastapi_health"),
    App("create_app_health", "create_app + health router", "bench.floor_apps:create_app_health"),
)


@dataclass
class Options:
    duration: float = 10.0
    warmup: float = 2.0
    connections: int = 64
    generator: str = "auto"  # "auto": wrk when on PATH, else the Python generator
    procs: int = 2  # Python generator processes

    @classmethod
    def quick(cls) -> Options:
        """Seconds per app: the smoke test's run, not a measurement."""
        return cls(duration=1.0, warmup=0.0, connections=16, procs=1)


def add_arguments(parser: argparse.ArgumentParser, *, standalone: bool) -> None:
    """Floor options; beside the rush's ``--duration`` the floor's is ``--floor-duration``."""
    names = ("--duration", "--floor-duration") if standalone else ("--floor-duration",)
    parser.add_argument(*names, dest="floor_duration", type=float, help="seconds per app (default 10)")
    parser.add_argument("--generator", choices=("auto", "wrk", "python"),
                        help="load generator (default auto: wrk when on PATH, else bench/loadgen.py)")


def options_from(args: argparse.Namespace) -> Options:
    opts = Options.quick() if args.quick else Options()
    if args.floor_duration is not None:
        opts.duration = args.floor_duration
    if args.generator is not None:
        opts.generator = args.generator
    return opts


# --------------------------------------------------------------------------- generators


@dataclass
class Measured:
    generator: str
    requests_per_s: float
    p99_ms: float | None
    requests: int
    errors: dict[str, int] = field(default_factory=dict)  # non-2xx answers and socket errors


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def parse_wrk(text: str) -> Measured:
    """Requests/sec, the p99 of ``--latency``'s distribution, and the errors of wrk's output."""
    rate = re.search(r"^Requests/sec:\s*([\d.]+)", text, re.M)
    total = re.search(r"^\s*(\d+) requests in ", text, re.M)
    if rate is None or total is None:
        raise RuntimeError(f"no rate in wrk's output:\n{text[-2000:]}")
    p99 = re.search(r"^\s*99(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M)
    errors: dict[str, int] = {}
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    if non_2xx:
        errors["non_2xx"] = int(non_2xx.group(1))
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if sockets:
        for name, value in zip(("connect", "read", "write", "timeout"), sockets.groups(), strict=True):
            if int(value):
                errors[name] = int(value)
    return Measured(
        generator="wrk",
        requests_per_s=round(float(rate.group(1)), 1),
        p99_ms=round(float(p99.group(1)) * _UNITS_MS[p99.group(2)], 2) if p99 else None,
        requests=int(total.group(1)),
        errors=errors,
    )


def run_wrk(port: int, *, connections: int, duration: float) -> Measured:
    seconds = max(1, round(duration))  # wrk takes whole seconds
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", f"http://127.0.0.1:{port}{PATH}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return parse_wrk(proc.stdout)


def run_python(port: int, *, connections: int, duration: float, procs: int) -> Measured:
    spec = loadgen.Spec(host="127.0.0.1", port=port, method="GET", path=PATH)
    result = loadgen.run(spec, connections=connections, duration=duration, procs=procs)
    errors = {str(s): n for s, n in sorted(result.statuses.items()) if not 200 <= s < 300}
    if result.conn_errors:
        errors["connection"] = result.conn_errors
    if result.timeouts:
        errors["timeout"] = result.timeouts
    p99 = loadgen.percentile(result.latencies_ms, 99)
    elapsed = result.wall_s or duration
    return Measured(
        generator="python",
        requests_per_s=round(result.responses / elapsed, 1) if elapsed > 0 else 0.0,
        p99_ms=None if p99 is None else round(p99, 2),
        requests=result.responses,
        errors=errors,
    )


def pick_generator(wanted: str) -> tuple[str, str | None]:
    """The generator to use and, when it is not wrk, why (the report and the table say it)."""
    on_path = shutil.which("wrk") is not None
    if wanted == "wrk" and not on_path:
        raise SystemExit("--generator wrk: wrk is not on PATH (Debian/Ubuntu: apt-get install wrk)")
    if wanted == "python":
        return "python", "asked for (--generator python)"
    if on_path:
        return "wrk", None
    return "python", ("wrk is not on PATH: bench/loadgen.py (Python) drives the load instead, and may "
                      "take cores the server needs (apt-get install wrk for the real figures)")


def measure(generator: str, port: int, opts: Options, duration: float) -> Measured:
    if generator == "wrk":
        return run_wrk(port, connections=opts.connections, duration=duration)
    return run_python(port, connections=opts.connections, duration=duration, procs=opts.procs)


# --------------------------------------------------------------------------- the run


def server_env(database_url: str | None, redis_url: str | None) -> dict[str, str]:
    """Production settings, as a container runs the API; the same for every app.

    The caller's own application settings (a test run's, a developer's) are dropped: the
    servers run on the defaults, with only the servers' URLs passed on.
    """
    from shared.platform.settings import Settings

    ours = {name.upper() for name in Settings.model_fields}
    env = {
        **{k: v for k, v in os.environ.items() if k.upper() not in ours},
        "APP_ENV": "production",
        "JWT_SECRET": secrets.token_urlsafe(48),  # a throwaway server: its own random secret
        "LOG_LEVEL": "INFO",
        "RATE_LIMIT_ENABLED": "true",
    }
    for name, url in (("DATABASE_URL", database_url or os.environ.get("DATABASE_URL")),
                      ("REDIS_URL", redis_url or os.environ.get("REDIS_URL"))):
        if url:
            env[name] = url
    return env


def _row(key: str, label: str, target: str, measured: Measured, server_cores: float | None,
         cpu_us: float | None = None) -> dict[str, Any]:
    return {"key": key, "label": label, "app": target, **asdict(measured), "server_cores": server_cores,
            "cpu_us_per_request": cpu_us}


def serve_and_measure(app: App, generator: str, opts: Options, env: dict[str, str], log_path: Path) -> dict[str, Any]:
    """Start ``app`` alone, warm it up, measure it, stop it."""
    port = free_port()
    child = spawn(f"floor-{app.key}", uvicorn_command(app.target, port), env, log_path, follow=False)
    try:
        wait_http_ok(f"http://127.0.0.1:{port}{PATH}", child, 60)
        if opts.warmup:
            measure(generator, port, opts, opts.warmup)
        pid = child.process.pid
        cpu0, t0 = tree_cpu_seconds(pid), time.monotonic()
        measured = measure(generator, port, opts, opts.duration)
        cpu1, wall = tree_cpu_seconds(pid), time.monotonic() - t0
    finally:
        child.stop()
    cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
    cores = round(cpu / wall, 2) if cpu is not None and wall > 0 else None
    # The server's CPU time per answer: unlike the rate, it barely moves when other work
    # shares the cores, so its ratio still compares the apps on a busy machine.
    cpu_us = round(cpu / measured.requests * 1e6, 1) if cpu is not None and measured.requests else None
    return _row(app.key, app.label, app.target, measured, cores, cpu_us)


def run(opts: Options, out_dir: Path, *, database_url: str | None = None,
        redis_url: str | None = None) -> dict[str, Any]:
    """Every app of the floor, one after another; returns the report's ``floor`` section."""
    generator, note = pick_generator(opts.generator)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "floor-uvicorn.log"
    log_path.unlink(missing_ok=True)  # one run's logs: the API writes a line per request
    env = server_env(database_url, redis_url)
    print(f"framework floor: GET {PATH}, {generator}, {opts.connections} connections, {opts.duration:g} s per app"
          + (f" ({note})" if note else ""), flush=True)
    rows = []
    with loadgen.canned_server() as port:
        ceiling = measure(generator, port, opts, opts.duration)
    rows.append(_row(CEILING, "generator ceiling (canned server)", "bench.loadgen canned server", ceiling, None))
    _say(rows[-1])
    for app in APPS:
        rows.append(serve_and_measure(app, generator, opts, env, log_path))
        _say(rows[-1])
    hello_row = next(r for r in rows if r["key"] == HELLO)
    hello, hello_cpu = hello_row["requests_per_s"], hello_row["cpu_us_per_request"]
    for r in rows:
        r["ratio"] = round(r["requests_per_s"] / hello, 3) if hello and r["key"] != CEILING else None
        # hello-world's CPU per answer over this app's: 1.0 as cheap, 0.8 a quarter dearer.
        cpu = r["cpu_us_per_request"]
        r["cpu_ratio"] = round(hello_cpu / cpu, 3) if hello_cpu and cpu else None
    local = next(r for r in rows if r["key"] == "local")
    return {
        "path": f"GET {PATH}",
        "generator": generator,
        "generator_note": note,
        "options": asdict(opts),
        "server": {"command": " ".join(["uvicorn", *uvicorn_command("<app>", 0)[3:]]).replace(" 0 ", " <free> "),
                   "env": {k: env[k] for k in ("APP_ENV", "LOG_LEVEL", "RATE_LIMIT_ENABLED")}
                   | {"JWT_SECRET": "generated"}},
        "rows": rows,
        "goal": {"local_vs_hello": GOAL, "met": (local["ratio"] or 0) >= GOAL},
        "ok": all(r["requests"] > 0 and r["requests_per_s"] > 0 and not r["errors"] for r in rows),
    }


def _say(row: dict[str, Any]) -> None:
    p99 = "-" if row["p99_ms"] is None else f"{row['p99_ms']:.1f} ms"
    print(f"  {row['label']:<40} {row['requests_per_s']:>9.0f} req/s  p99 {p99}"
          + (f"  errors {row['errors']}" if row["errors"] else ""), flush=True)


def table(report: dict[str, Any]) -> str:
    """The floor's rows: rate, p99 and the ratio to hello-world."""
    lines = [f"framework floor: {report['path']}, {report['options']['connections']} connections, "
             f"{report['options']['duration']:g} s per app, one uvicorn worker, production settings",
             f"{'app':<40} {'generator':<9} {'req/s':>9} {'p99 ms':>8} {'ratio':>6} {'cpu us/req':>10} "
             f"{'cpu ratio':>9}"]
    for r in report["rows"]:
        p99 = "-" if r["p99_ms"] is None else f"{r['p99_ms']:.1f}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        cpu = "-" if r.get("cpu_us_per_request") is None else f"{r['cpu_us_per_request']:.1f}"
        cpu_ratio = "-" if r.get("cpu_ratio") is None else f"{r['cpu_ratio']:.2f}"
        goal = f"  goal >= {GOAL}" if r["key"] == "local" else ""
        errors = f"  errors {r['errors']}" if r["errors"] else ""
        lines.append(f"{r['label']:<40} {r['generator']:<9} {r['requests_per_s']:>9.0f} {p99:>8} {ratio:>6} "
                     f"{cpu:>10} {cpu_ratio:>9}{goal}{errors}")
    if report["generator_note"]:
        lines.append(f"generator: {report['generator_note']}")
    return "\n".join(lines)
