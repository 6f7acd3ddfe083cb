"""Helpers for the notification tests: waiting on PostgreSQL, capturing worker log lines."""

from __future__ import annotations

import logging
import threading
import time
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
