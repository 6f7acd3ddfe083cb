"""A worker killed in the middle of a fan-out: after a restart nobody is missed.

The worker is a real ``celery`` subprocess, SIGKILLed while it sends; its unacknowledged
chunk tasks come back from Redis after the visibility timeout and the new worker finishes
them. Delivery keys make the effects exactly-once except for what was in flight at the
instant of the kill (at most one send per worker thread, since this channel commits each
send), which is the documented at-least-once window.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from shared.accounts import users
from shared.notifications import outbox
from shared.notifications.contracts import EventUpdate
from shared.platform.settings import get_settings
from shared.ticketing import bookings, events
from tests.support.notify import wait_for

ROOT = Path(__file__).resolve().parents[2]
USERS = 60
THREADS = 2


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "functions.notify.worker",
                "worker",
                "--loglevel=INFO",
                "--without-mingle",
                "--without-gossip",
                f"--concurrency={THREADS}",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _ledger(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_worker_killed_mid_fanout_misses_nobody_after_restart(
    tmp_path: Path, sql: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN 60 customers booked on one event, and a worker of our own on its own queue
    queue = f"notify-crash-{uuid.uuid4().hex[:8]}"
    ledger = tmp_path / "sent.txt"
    worker_env = {
        **os.environ,
        "NOTIFY_QUEUE": queue,
        "NOTIFY_CHANNEL": "tests.support.slow_channel:channel",
        "SLOW_CHANNEL_LOG": str(ledger),
        "SLOW_CHANNEL_DELAY": "0.1",
        "NOTIFY_FANOUT_CHUNK": "20",
        "NOTIFY_FANOUT_PAGE": "10",
        "NOTIFY_VISIBILITY_TIMEOUT": "2",
        "NOTIFY_RESTORE_INTERVAL": "1",
        "WORKER_METRICS_PORT": "0",
        "PYTHONPATH": str(ROOT),
    }
    organizer = users.create_user(
        email=f"org-{uuid.uuid4().hex[:8]}@test.com", password="123", role="organizer", name=None
    )
    event = events.create_event(
        organizer_id=organizer["id"],
        fields={"title": "Crash test", "venue": None, "start_time": None, "end_time": None, "total_tickets": USERS},
    )
    emails = []
    for _ in range(USERS):
        customer = users.create_user(
            email=f"c-{uuid.uuid4().hex[:10]}@test.com", password="123", role="customer", name=None
        )
        bookings.book(user_id=customer["id"], event_id=event["id"], quantity=1, default_max=10)
        emails.append(customer["email"])
    # Verified addresses: the mail REQUIRE_VERIFIED_EMAIL (on outside development) lets through.
    sql.execute("UPDATE users SET email_verified_at = now() WHERE email = ANY(%s)", (emails,))
    first = _start_worker(worker_env, tmp_path / "worker-1.log")
    second: subprocess.Popen[bytes] | None = None
    try:
        wait_for(
            lambda: " ready." in (tmp_path / "worker-1.log").read_text(errors="replace"),
            timeout=60,
            what="first worker ready",
        )

        # WHEN the event changes (published straight to our queue) ...
        monkeypatch.setenv("NOTIFY_QUEUE", queue)
        monkeypatch.setenv("OUTBOX_PUBLISH", "inline")
        get_settings.cache_clear()
        outbox.reset()
        events.update_event(event_id=event["id"], organizer_id=organizer["id"], changes={"venue": "Hall B"})
        # ... and the worker dies without warning a third of the way through
        wait_for(lambda: len(_ledger(ledger)) >= USERS // 3, timeout=60, what="a third of the sends")
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
        sent_before_kill = len(_ledger(ledger))
        assert sent_before_kill < USERS, "the fan-out finished before the kill: nothing was tested"

        # THEN a new worker picks the unfinished chunks up again and completes the fan-out
        second = _start_worker(worker_env, tmp_path / "worker-2.log")
        row = wait_for(
            lambda: sql.execute(
                "SELECT f.finished_at, f.notified FROM notification_fanouts f JOIN outbox o ON o.id = f.outbox_id "
                "WHERE o.task = %s AND (o.payload->>'event_id')::bigint = %s "
                "AND f.finished_at IS NOT NULL",
                (EventUpdate.published_as, event["id"]),
            ).fetchone(),
            timeout=90,
            what="the fan-out to finish after the restart",
        )
        assert row["notified"] == USERS
        sent = Counter(_ledger(ledger))
        assert set(sent) == set(emails)  # nobody missed
        twice = [email for email, n in sent.items() if n > 1]
        assert len(twice) <= THREADS, twice  # only sends in flight at the kill may repeat
        assert "Notified 60 users about event update" in (tmp_path / "worker-2.log").read_text(errors="replace")
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        get_settings.cache_clear()
        outbox.reset()
