"""The framework floor in process: CPU microseconds per ``GET /health/live``, no server, no socket.

    python -m bench.floor_inprocess [--calls 5000] [--rounds 3]

The apps of bench/floor.py, each in a fresh process with the same production settings, are
called as raw ASGI apps (the scope uvicorn builds for ``wrk``'s request) in a loop, and the
process's CPU time per call is taken (the least of several batches). It measures what the
app adds per request and leaves out the server's own share, which is the same for every app.

Why beside the wrk run: on a machine other work shares, rates and their ratio move with
that work from one run to the next, while the CPU one call takes barely does; apps are
measured in turns (round after round), so a busy spell touches all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.floor import APPS, HELLO, PATH, server_env

ROOT = Path(__file__).resolve().parents[1]


def _scope() -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000), "scheme": "http",
            "method": "GET", "root_path": "", "path": PATH, "raw_path": PATH.encode(), "query_string": b"",
            "headers": [(b"host", b"127.0.0.1:8000")], "state": {}}


async def _measure(app: Any, calls: int, batches: int) -> tuple[float, int]:
    """(least CPU us per call over ``batches`` batches, the answer's status)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    for _ in range(200):  # warm up: first-call caches, metric children
        await app(_scope(), receive, send)
    status = sent[0]["status"]
    best = float("inf")
    for _ in range(batches):
        started = time.process_time()
        for _ in range(calls):
            await app(_scope(), receive, send)
        sent.clear()
        best = min(best, (time.process_time() - started) / calls * 1e6)
    return best, status


def _child(target: str, calls: int, batches: int) -> None:
    module, attribute = target.split(":")
    app = getattr(importlib.import_module(module), attribute)
    us, status = asyncio.run(_measure(app, calls, batches))
    print(json.dumps({"us_per_call": round(us, 2), "status": status}))


def run(calls: int, rounds: int) -> list[dict[str, Any]]:
    env = server_env(None, None)
    best: dict[str, dict[str, Any]] = {}
    for _ in range(rounds):
        for app in APPS:
            proc = subprocess.run([sys.executable, "-m", "bench.floor_inprocess", "--child", app.target,
                                   "--calls", str(calls)], cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=600, check=True)
            figure = json.loads(proc.stdout.strip().splitlines()[-1])
            if figure["status"] != 200:
                raise SystemExit(f"{app.target}: GET {PATH} answered {figure['status']}")
            kept = best.get(app.key)
            if kept is None or figure["us_per_call"] < kept["us_per_call"]:
                best[app.key] = {"key": app.key, "label": app.label, "app": app.target, **figure}
    hello = best[HELLO]["us_per_call"]
    rows = [best[app.key] for app in APPS]
    for row in rows:
        row["over_hello_us"] = round(row["us_per_call"] - hello, 2)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000, help="calls per batch (default 5000)")
    parser.add_argument("--rounds", type=int, default=3, help="processes per app, in turns (default 3)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.calls, batches=3)
        return
    rows = run(args.calls, args.rounds)
    print(f"framework floor in process: GET {PATH}, CPU us per ASGI call (least of {args.rounds} processes "
          f"x 3 batches x {args.calls} calls), production settings, no server")
    print(f"{'app':<40} {'us/call':>8} {'over hello':>10}")
    for row in rows:
        print(f"{row['label']:<40} {row['us_per_call']:>8.1f} {row['over_hello_us']:>10.1f}")


if __name__ == "__main__":
    main()
