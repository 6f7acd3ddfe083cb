"""Entry point of the notify worker: ``celery -A functions.notify.worker worker --beat``.

Importing this module registers every task on :data:`app`. The HTTP functions never
import it: they publish by task name through :mod:`shared.outbox`.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_init, worker_process_init

from functions.notify import tasks
from functions.notify.celery_app import app
from shared import db, metrics, outbox
from shared.logging import configure_logging
from shared.settings import get_settings, require_safe_worker_start

__all__ = ["app", "tasks"]

log = logging.getLogger("functions.notify")


@worker_init.connect
def _refuse_an_undeliverable_channel(**_: Any) -> None:
    """Before consuming: NOTIFY_CHANNEL=ses needs a real sender, or exit 2 with one line."""
    require_safe_worker_start()


@worker_init.connect
def _observability(**_: Any) -> None:
    """JSON logs like the API's, and the worker's counters on WORKER_METRICS_ADDR:PORT."""
    configure_logging()
    # Celery's "received" / "succeeded" line per task would bury the notification lines
    # (the relay alone runs every few seconds); failures still log at ERROR.
    for name in ("celery.worker.strategy", "celery.app.trace"):
        logging.getLogger(name).setLevel(logging.WARNING)
    settings = get_settings()
    port, addr = settings.worker_metrics_port, settings.worker_metrics_addr
    if port:
        try:
            metrics.serve_worker_metrics(port, addr)
        except OSError as exc:  # a second worker on the same host: run without metrics
            log.warning("worker metrics not served on %s:%d: %s", addr, port, exc)


@worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    """A forked pool child (if the pool is switched to prefork) must not share sockets."""
    db.close_pool()
    outbox.reset()
