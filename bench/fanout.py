"""Notification fan-out: one event update reaching every booked user, end to end.

    python -m bench fanout [--users 100000] [--timeout 300]

Seeds ``users`` customers each holding a booking of one event (plain SQL: the setup is
not measured), starts the real notify worker (``celery -A functions.notify.worker worker``
with its default concurrency, console channel, INFO logs to a file), then updates the
event through ``shared.ticketing.events.update_event``, which writes the outbox row and publishes
it exactly as the API does. The clock runs from the outbox row's ``created_at`` to the
fan-out's ``finished_at`` (both PostgreSQL's clock); a delivery key per user must exist.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.environment import Environment
from local.processes import Child, spawn

GOAL_USERS_PER_S = 10_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--users", type=int, help="booked users to notify (default 100000; --quick 2000)")
    parser.add_argument("--fanout-timeout", type=float, default=300.0,
                        help="give up waiting for the fan-out after this many seconds")


def seed(database_url: str, users: int) -> tuple[int, int]:
    """An organizer, ``users`` customers and one event they all booked; returns (event, organizer)."""
    tag = f"fan{os.getpid()}x{time.time_ns()}"
    with psycopg.connect(database_url, autocommit=True) as conn, conn.transaction():
        organizer = conn.execute(
            "INSERT INTO users (email, password_hash, role) VALUES (%s, 'x', 'organizer') RETURNING id",
            (f"{tag}-org@bench.test",),
        ).fetchone()[0]  # type: ignore[index]
        event = conn.execute(
            """INSERT INTO events (organizer_id, title, venue, total_tickets)
               VALUES (%s, 'Fan-out benchmark', 'Main hall', %s) RETURNING id""",
            (organizer, users),
        ).fetchone()[0]  # type: ignore[index]
        # Sold out, as the API makes an event (shared/ticketing/events.py): one default type in
        # one event quota, whose one stock row holds no ticket; every fan holds one ticket of it.
        ticket_type = conn.execute(
            "INSERT INTO ticket_types (event_id, name, is_default) VALUES (%s, 'General admission', true) RETURNING id",
            (event,),
        ).fetchone()[0]  # type: ignore[index]
        quota = conn.execute(
            """INSERT INTO quotas (event_id, name, size, shards, is_event)
               VALUES (%s, 'Event capacity', %s, 1, true) RETURNING id""",
            (event, users),
        ).fetchone()[0]  # type: ignore[index]
        conn.execute("INSERT INTO quota_types (quota_id, ticket_type_id, event_id) VALUES (%s, %s, %s)",
                     (quota, ticket_type, event))
        conn.execute("INSERT INTO quota_stock (quota_id, shard, available_tickets) VALUES (%s, 0, 0)", (quota,))
        conn.execute(
            """WITH fans AS (
                   INSERT INTO users (email, name, password_hash, role, email_verified_at)
                   SELECT %(tag)s || '-' || g || '@bench.test', 'Fan ' || g, 'x', 'customer', now()
                     FROM generate_series(1, %(n)s) g
                   RETURNING id),
               booked AS (
                   INSERT INTO bookings (event_id, user_id, quantity) SELECT %(event)s, id, 1 FROM fans
                   RETURNING id, user_id),
               lines AS (
                   INSERT INTO booking_lines (booking_id, ticket_type_id, quantity, unit_price_minor)
                   SELECT id, %(type)s, 1, 0 FROM booked),
               -- what a booking through the API counts, so the bench database stays exact
               per_type AS (
                   INSERT INTO customer_type_tickets (ticket_type_id, user_id, tickets, limit_at_claim)
                   SELECT %(type)s, user_id, 1, 2147483647 FROM booked)
               INSERT INTO customer_tickets (event_id, user_id, tickets, limit_at_claim)
               SELECT %(event)s, user_id, 1, 1 FROM booked""",
            {"tag": tag, "n": users, "event": event, "type": ticket_type},
        )
        conn.execute("ANALYZE users")
        conn.execute("ANALYZE bookings")
    return int(event), int(organizer)


class Worker:
    """The notify worker as a child process group, logging to a file."""

    def __init__(self, env: Environment, queue: str, log_path: Path) -> None:
        self.log_path = log_path
        self.env = {**os.environ, "DATABASE_URL": env.database_url, "REDIS_URL": env.redis_url,
                    "NOTIFY_QUEUE": queue, "NOTIFY_CHANNEL": "console", "LOG_LEVEL": "INFO"}
        self.name = f"bench-fanout-{os.getpid()}"
        self.child: Child | None = None

    def start(self, timeout: float = 60) -> None:
        cmd = [sys.executable, "-m", "celery", "-A", "functions.notify.worker", "worker", "--loglevel=INFO",
               "-n", f"{self.name}@%h"]
        self.log_path.unlink(missing_ok=True)  # concurrency() reads this run's banner
        self.child = spawn("worker", cmd, self.env, self.log_path, follow=False)
        # Ready = it answers a control ping (its log format belongs to the worker's owners).
        from functions.notify.celery_app import app

        def answers() -> bool:
            replies = app.control.ping(timeout=0.5)
            return any(name.startswith(self.name + "@") for reply in replies for name in reply)

        self.child.wait_until(answers, timeout)

    def concurrency(self) -> str:
        match = re.search(r"concurrency:\s*(.+)", self.log_path.read_text(errors="replace"))
        return match.group(1).strip() if match else "unknown"

    def cpu_seconds(self) -> float | None:
        return self.child.cpu_seconds() if self.child else None

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(timeout=30)  # a warm shutdown first: the worker finishes its tasks


def run(env: Environment, users: int, out_dir: Path, timeout: float = 300.0) -> dict[str, Any]:
    """Seed, start the worker, update the event, wait for the fan-out; the report's ``fanout``."""
    queue = f"bench-notify-{os.getpid()}"
    os.environ.update(DATABASE_URL=env.database_url, REDIS_URL=env.redis_url, NOTIFY_QUEUE=queue)
    from shared.notifications import outbox
    from shared.notifications.contracts import EventUpdate
    from shared.platform import db
    from shared.platform.settings import get_settings
    from shared.ticketing import events

    get_settings.cache_clear()
    db.close_pool()
    outbox.reset()
    from functions.notify.celery_app import app, configure

    configure(app, get_settings())  # the control ping goes to this run's Redis
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    event_id, organizer_id = seed(env.database_url, users)
    print(f"fan-out: {users} booked users seeded in {time.monotonic() - t0:.1f}s", flush=True)
    worker = Worker(env, queue, out_dir / "worker-fanout.log")
    try:
        worker.start()
        cpu0, wall0 = worker.cpu_seconds(), time.monotonic()
        events.update_event(event_id=event_id, organizer_id=organizer_id, changes={"venue": "Bigger hall"})
        with psycopg.connect(env.database_url, autocommit=True) as conn:
            outbox_id, created_at = conn.execute(
                "SELECT id, created_at FROM outbox WHERE task = %s "
                "AND (payload->>'event_id')::bigint = %s ORDER BY id DESC LIMIT 1",
                (EventUpdate.published_as, event_id),
            ).fetchone()  # type: ignore[misc]
            finished = None
            deadline = time.monotonic() + timeout
            next_note = time.monotonic() + 10
            while time.monotonic() < deadline:
                row = conn.execute(
                    "SELECT finished_at, notified FROM notification_fanouts WHERE outbox_id = %s", (outbox_id,)
                ).fetchone()
                if row and row[0] is not None:
                    finished = row
                    break
                if time.monotonic() > next_note:
                    done = conn.execute("SELECT count(*) FROM notification_deliveries WHERE outbox_id = %s",
                                        (outbox_id,)).fetchone()[0]  # type: ignore[index]
                    print(f"  ... {done} of {users} notified", flush=True)
                    next_note += 10
                time.sleep(0.05)
            wall = time.monotonic() - wall0
            cpu1 = worker.cpu_seconds()
            keys, distinct, channels, last = conn.execute(
                """SELECT count(*), count(DISTINCT user_id), array_agg(DISTINCT channel), max(delivered_at)
                     FROM notification_deliveries WHERE outbox_id = %s""",
                (outbox_id,),
            ).fetchone()  # type: ignore[misc]
        end = finished[0] if finished else last
        seconds = (end - created_at).total_seconds() if end else wall
        report = {
            "users": users,
            "finished": finished is not None,
            "notified": int(finished[1]) if finished else int(keys),
            "delivery_keys": int(keys),
            "distinct_users": int(distinct),
            "channels": channels or [],
            "seconds": round(seconds, 2),
            "users_per_s": round(int(keys) / seconds, 1) if seconds > 0 else None,
            "goal_users_per_s": GOAL_USERS_PER_S,
            "worker_concurrency": worker.concurrency(),
            "worker_cpu_cores": round((cpu1 - cpu0) / wall, 2) if cpu0 is not None and cpu1 is not None else None,
            "chunk_size": get_settings().notify_fanout_chunk,
            "page_size": get_settings().notify_fanout_page,
        }
        report["ok"] = bool(report["finished"] and keys == users and distinct == users)
        print(f"  fan-out {users} users: {report['users_per_s']} users/s in {report['seconds']}s "
              f"(keys {keys}, worker {report['worker_concurrency']}) {'ok' if report['ok'] else 'INCOMPLETE'}",
              flush=True)
        return report
    finally:
        worker.stop()
        db.close_pool()
        with contextlib.suppress(Exception):
            outbox.redis_client().delete(queue)
        outbox.reset()


def table(report: dict[str, Any]) -> str:
    ratio = report["users_per_s"] / report["goal_users_per_s"] if report["users_per_s"] else 0
    return (f"fan-out: {report['users']} booked users notified of an event update (console channel, delivery keys)\n"
            f"  {report['users_per_s']} users/s end to end in {report['seconds']} s "
            f"= {ratio:.2f}x the {report['goal_users_per_s']}/s goal; worker concurrency "
            f"{report['worker_concurrency']}; keys {report['delivery_keys']}/{report['users']}"
            f"{'' if report['ok'] else '  INCOMPLETE'}")
