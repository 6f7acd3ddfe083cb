"""CPU time and thread-pool hops per booking request, in process (issue 13, "async end to end").

    DATABASE_URL=... REDIS_URL=... python -m bench.booking_cpu [--requests 4000] [--concurrency 32]

Drives the local router (``local.app``) with raw ASGI calls from ``--concurrency`` tasks on
one event loop, as uvicorn would hand them over, under production settings (``APP_ENV``
unset, a generated ``JWT_SECRET``, rate limiting on, ``LOG_LEVEL=INFO``), posting
``/bookings`` with bearer tokens on one hot event. Then the Lambda path: the booking
function's Mangum handler called with API Gateway v2 events one after another.

Reports process CPU time (``time.process_time``: the loop, worker threads, libpq) per
request and calls into ``anyio.to_thread.run_sync`` (every thread-pool hop: Starlette's
``run_in_threadpool`` and ``shared.platform.threads.in_thread`` both go through it) per
request, each scenario with and without an ``Idempotency-Key``. The figures go to stderr; the
app's own log lines (INFO: one per request, part of the cost) go to stdout (``>/dev/null``).
Figures compare only within one run on one machine (other load shifts them): run the trees
to compare one after the other, e.g. ``PYTHONPATH=/tmp/base python -m bench.booking_cpu``.

DATABASE_URL should name a scratch database: it is migrated and gets users and an event.
Every request must answer 201 (the users are many, so the per-user limit never refuses).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

Headers = list[tuple[bytes, bytes]]


class HopCounter:
    """Counts calls into anyio's thread pool (patched at the module attribute every caller reads)."""

    def __init__(self) -> None:
        import anyio.to_thread

        self.count = 0
        self._module = anyio.to_thread
        self._original = anyio.to_thread.run_sync

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await self._original(*args, **kwargs)

        anyio.to_thread.run_sync = counted  # type: ignore[assignment]


async def _post(app: Any, path: str, body: bytes, headers: Headers, ip: str) -> int:
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": headers, "client": (ip, 40000), "server": ("127.0.0.1", 8000),
        "state": {},
    }
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)  # a disconnect never comes while the request runs
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


def _booking_headers(token: str, body: bytes, key: str | None) -> Headers:
    headers = [(b"host", b"bench"), (b"authorization", f"Bearer {token}".encode()),
               (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if key is not None:
        headers.append((b"idempotency-key", key.encode()))
    return headers


async def _asgi_round(app: Any, tokens: list[str], event_id: int, requests: int, concurrency: int,
                      keyed: bool) -> list[int]:
    body = json.dumps({"event_id": event_id, "quantity": 1}).encode()
    statuses: list[int] = []
    counter = iter(range(requests))

    async def worker() -> None:
        for i in counter:
            key = uuid.uuid4().hex if keyed else None
            ip = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
            statuses.append(await _post(app, "/bookings", body, _booking_headers(tokens[i % len(tokens)], body, key),
                                        ip))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def _measure(label: str, hops: HopCounter, requests: int, run: Callable[[], list[int]]) -> dict[str, Any]:
    before_hops, cpu, wall = hops.count, time.process_time(), time.perf_counter()
    statuses = run()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    bad = {s: statuses.count(s) for s in set(statuses) if s != 201}
    row = {"scenario": label, "requests": requests, "cpu_us_per_request": round(cpu / requests * 1e6, 1),
           "hops_per_request": round((hops.count - before_hops) / requests, 3),
           "wall_s": round(wall, 2), "non_201": bad}
    print(f"{label:<36} {row['cpu_us_per_request']:>7.1f} us CPU/request  "
          f"{row['hops_per_request']:>6.3f} hops/request  wall {wall:6.2f}s  non-201 {bad or 0}",
          file=sys.stderr, flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.booking_cpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4000, help="requests per scenario")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent ASGI requests")
    parser.add_argument("--lambda-requests", type=int, default=1000, help="Mangum invocations per scenario")
    args = parser.parse_args(argv)
    if not (os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL")):
        print("set DATABASE_URL (a scratch database) and REDIS_URL", file=sys.stderr)
        return 2
    os.environ.pop("APP_ENV", None)  # production
    os.environ["JWT_SECRET"] = secrets.token_urlsafe(48)
    os.environ["RATE_LIMIT_ENABLED"] = "true"
    os.environ["LOG_LEVEL"] = "INFO"
    os.environ["RATE_LIMIT_KEY_PREFIX"] = f"rl-bench-{uuid.uuid4().hex[:8]}"  # a fresh budget per run
    os.environ.setdefault("EMAIL_VERIFICATION_URL", "https://bench.example/verify#token={token}")

    import psycopg

    from bench.stock import bench_event
    from shared.accounts.tokens import issue_token
    from shared.platform import migrate
    from shared.platform.settings import get_settings
    from shared.ticketing.inventory import shards_for

    migrate.main([])
    settings = get_settings()
    users = max(64, (args.requests + args.lambda_requests) * 2 // 10)  # each books under its 20/60 budget
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        tag = uuid.uuid4().hex[:8]
        organizer = conn.execute(
            "INSERT INTO users (email, password_hash, role) VALUES (%s, 'x', 'organizer') RETURNING id",
            (f"org-{tag}@bench.example",),
        ).fetchone()[0]  # type: ignore[index]
        ids = [row[0] for row in conn.execute(
            "INSERT INTO users (email, password_hash, role) SELECT 'c-' || %s || '-' || g || '@bench.example', 'x', "
            "'customer' FROM generate_series(1, %s) g RETURNING id", (tag, users)).fetchall()]
        event_id = bench_event(conn, organizer, "bench", 100_000_000, shards_for(100_000_000), 1_000_000)
    tokens = [issue_token(user_id, "customer", session_id=str(uuid.uuid4()))[0] for user_id in ids]
    print(f"production settings: app_env={settings.app_env} rate_limit_enabled={settings.rate_limit_enabled} "
          f"log_level={settings.log_level} coalesce={settings.booking_coalesce}; {len(tokens)} customers",
          file=sys.stderr)

    from local.app import app

    hops = HopCounter()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    results = []
    warm = min(500, args.requests)
    per_round = args.requests // 2  # tokens rotate: each customer stays under its limit across rounds
    loop.run_until_complete(_asgi_round(app, tokens, event_id, warm, args.concurrency, False))
    for keyed in (False, True):
        label = f"server, {args.concurrency} concurrent" + (", keyed" if keyed else "")
        results.append(_measure(label, hops, per_round, lambda k=keyed: loop.run_until_complete(  # type: ignore[misc]
            _asgi_round(app, tokens[::-1], event_id, per_round, args.concurrency, k))))

    from functions.booking.handler import handler
    from local.lambda_events import build_lambda_event

    body = json.dumps({"event_id": event_id, "quantity": 1})

    def invoke(n: int, keyed: bool, offset: int) -> list[int]:
        out = []
        for i in range(n):
            headers = {"authorization": f"Bearer {tokens[(offset + i) % len(tokens)]}",
                       "content-type": "application/json"}
            if keyed:
                headers["idempotency-key"] = uuid.uuid4().hex
            ip = f"10.200.{(offset + i) >> 8 & 255}.{(offset + i) & 255}"
            request = build_lambda_event("POST", "/bookings", headers=headers, body=body, source_ip=ip)
            out.append(handler(request, None)["statusCode"])
        return out

    n = args.lambda_requests // 2
    invoke(50, False, 7)
    for keyed in (False, True):
        label = "lambda (Mangum), sequential" + (", keyed" if keyed else "")
        results.append(_measure(label, hops, n, lambda k=keyed: invoke(n, k, 11 + n * k)))  # type: ignore[misc]
    print(json.dumps(results), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
