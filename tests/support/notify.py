"""Helpers for the notification tests: the test worker's settings, tracking its tasks, waiting
on PostgreSQL, capturing worker log lines."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg

T = TypeVar("T")


def wait_for(check: Callable[[], T], *, timeout: float = 20, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def outbox_of_booking(sql: psycopg.Connection, booking_id: int) -> dict[str, Any]:
    row = sql.execute(
        "SELECT * FROM outbox WHERE task = 'booking_confirmation' AND payload->>'booking_id' = %s",
        (str(booking_id),),
    ).fetchone()
    assert row is not None
    return row  # type: ignore[return-value]


def deliveries(sql: psycopg.Connection, outbox_id: int) -> list[dict[str, Any]]:
    return sql.execute(  # type: ignore[return-value]
        "SELECT * FROM notification_deliveries WHERE outbox_id = %s ORDER BY user_id",
        (outbox_id,),
    ).fetchall()


# The test worker's settings: retries and fan-out chunks shrunk so the tests see them happen.
WORKER_ENV = {
    "NOTIFY_RETRY_BASE": "0.05",
    "NOTIFY_RETRY_MAX": "0.2",
    "NOTIFY_MAX_ATTEMPTS": "3",
    "NOTIFY_FANOUT_CHUNK": "3",
    "NOTIFY_FANOUT_PAGE": "2",
    "NOTIFY_CHANNEL": "console",
    "OUTBOX_RELAY_GRACE": "0",
    # Delivery mechanics, with unverified users; verification: tests/notifications/test_verification.py
    "REQUIRE_VERIFIED_EMAIL": "false",
}


class Tracker:
    """Which task ids the worker finished, and how many tasks are running right now."""

    def __init__(self) -> None:
        self.finished: set[str] = set()
        self.names: Counter[str] = Counter()
        self.running = 0
        self.lock = threading.Lock()

    def started(self, task_id: str | None = None, **_: Any) -> None:
        with self.lock:
            self.running += 1

    def done(self, task_id: str | None = None, sender: Any = None, **_: Any) -> None:
        with self.lock:
            self.running -= 1
            self.names[getattr(sender, "name", "?")] += 1
            if task_id:
                self.finished.add(task_id)

    def wait_idle(self, queue_length: Any, *, settle: float = 0.3) -> None:
        """Until the queue is empty and nothing runs for ``settle`` seconds (retries settle too)."""
        quiet_since = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.running == 0 and queue_length() == 0:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= settle:
                    return
            else:
                quiet_since = None
            time.sleep(0.02)
        raise AssertionError("worker did not become idle")


class LogLines(logging.Handler):
    """Every message logged under ``functions.notify``, from any thread."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self._lock_lines = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock_lines:
            self.lines.append(record.getMessage())

    def matching(self, text: str) -> list[str]:
        with self._lock_lines:
            return [line for line in self.lines if text in line]


@contextmanager
def captured_notify_log() -> Iterator[LogLines]:
    logger = logging.getLogger("functions.notify")
    handler = LogLines()
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


class FlakyChannel:
    """A channel that fails while ``healthy`` is False, counting every attempt."""

    name = "flaky"

    def __init__(self) -> None:
        self.healthy = False
        self.attempts: list[str] = []

    def send(self, email: Any) -> None:
        self.attempts.append(email.recipient)
        if not self.healthy:
            raise ConnectionError("mail server unreachable")


class CaptureChannel:
    """A channel that keeps every email it is given (a test's mailbox)."""

    name = "capture"
    sends_per_commit = 100

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self._lock_sent = threading.Lock()

    def send(self, email: Any) -> None:
        with self._lock_sent:
            self.sent.append(email)

    def to(self, recipient: str, subject: str = "") -> list[Any]:
        with self._lock_sent:
            return [e for e in self.sent if e.recipient == recipient and subject in e.subject]


def token_of(email: Any) -> str:
    """The verification code in a verification email (the indented line after 'code')."""
    import re

    match = re.search(r"Verification code[^\n]*\n\n    (\S+)\n", email.body)
    assert match, email.body
    return match.group(1)
