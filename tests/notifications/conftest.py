"""The real notify worker, one per test module that asks for it (``notify``, ``log``).

The worker runs in-process (``start_worker``, thread pool of 4, so fan-out chunks really
run in parallel) against the session's Redis and PostgreSQL, with retry delays shrunk.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from shared.platform.settings import get_settings
from tests.support.notify import WORKER_ENV, LogLines, Tracker, captured_notify_log


@pytest.fixture(scope="module")
def notify(database: str) -> Iterator[dict[str, Any]]:
    from celery.contrib.testing.worker import start_worker
    from celery.signals import task_postrun, task_prerun

    from functions.notify.celery_app import configure
    from functions.notify.channels import use_channel
    from functions.notify.worker import app
    from shared.notifications import outbox
    with pytest.MonkeyPatch.context() as mp:
        for key, value in WORKER_ENV.items():
            mp.setenv(key, value)
        get_settings.cache_clear()
        outbox.reset()
        settings = get_settings()
        configure(app, settings)
        redis = outbox.redis_client()
        redis.delete(settings.notify_queue)  # bookings of earlier test modules, never consumed
        tracker = Tracker()
        task_prerun.connect(tracker.started, weak=False)
        task_postrun.connect(tracker.done, weak=False)
        try:
            with captured_notify_log() as log, start_worker(
                app, pool="threads", concurrency=4, perform_ping_check=False, shutdown_timeout=20
            ):
                yield {
                    "app": app,
                    "log": log,
                    "tracker": tracker,
                    "queue_length": lambda: redis.llen(settings.notify_queue),
                }
        finally:
            task_prerun.disconnect(tracker.started)
            task_postrun.disconnect(tracker.done)
            use_channel(None)
    get_settings.cache_clear()
    outbox.reset()


@pytest.fixture
def log(notify: dict[str, Any]) -> LogLines:
    return notify["log"]
