"""A stand-in for the application clock that tests move forward instead of sleeping."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta


class FakeClock:
    """The application clock, moved by tests instead of sleeping.

    By default it runs with the wall clock plus what the test advanced. Given ``start`` it
    stands still there until advanced, so every run of a test sees the same instants.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._lock = threading.Lock()
        self._start = start
        self._offset = timedelta(0)

    def now(self) -> datetime:
        with self._lock:
            base = datetime.now(UTC) if self._start is None else self._start
            return base + self._offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += timedelta(seconds=seconds)
