"""Entry point of the notify worker: ``celery -A functions.notify.worker worker --beat``.

Importing this module registers every task on :data:`app` and the worker's start checks;
the app's ``include`` imports it for a worker started from any other module of the
package. The HTTP functions never import it: they publish contracts of
:mod:`shared.notifications.contracts` through :mod:`shared.notifications.outbox`.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_init, worker_process_init

from functions.notify import tasks
from functions.notify.celery_app import app
from shared.notifications import outbox
from shared.platform import db, metrics
from shared.platform.logging import configure_logging
from shared.platform.settings import get_settings, require_safe_worker_start

__all__ = ["app", "tasks"]

log = logging.getLogger(__name__)


@worker_init.connect
def _refuse_an_undeliverable_channel(**_: Any) -> None:
    """Before consuming: NOTIFY_CHANNEL=ses needs a real sender, or exit 2 with one line."""
    require_safe_worker_start()


@worker_init.connect
def _observability(**_: Any) -> None:
    """JSON logs like the API's, and the worker's counters on WORKER_METRICS_ADDR:PORT."""
    # Also pins Celery's per-task "received" / "succeeded" lines (they would bury the
    # notification lines and carry task arguments) and boto's request dumps at WARNING.
    configure_logging()
    warn_if_mail_cannot_arrive()
    settings = get_settings()
    port, addr = settings.worker_metrics_port, settings.worker_metrics_addr
    if port:
        try:
            metrics.serve_worker_metrics(port, addr)
        except OSError as exc:  # a second worker on the same host: run without metrics
            log.warning("worker metrics not served on %s:%d: %s", addr, port, exc)


def warn_if_mail_cannot_arrive() -> None:
    """Say loudly at start when no verification mail can reach anyone.

    Outside development the console channel logs no mail body (it would put usable tokens
    in the logs), so with verification required nobody can verify and every booking mail
    is held for ever: compose's defaults (APP_ENV=production, NOTIFY_CHANNEL=console).
    """
    settings = get_settings()
    if (settings.notify_channel == "console" and settings.verified_email_required
            and settings.app_env != "development"):
        log.warning(
            "NOTIFY_CHANNEL=console with APP_ENV=%s and verified email required: verification "
            "mails are not delivered (the console prints no body outside development), so no "
            "address can be verified and every booking mail is held. Set NOTIFY_CHANNEL=ses "
            "(with SES_SENDER) to mail for real, or APP_ENV=development for a local demo that "
            "prints the mails, or REQUIRE_VERIFIED_EMAIL=false to send booking mail unverified.",
            settings.app_env,
        )


@worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    """A forked pool child (if the pool is switched to prefork) must not share sockets."""
    db.close_pool()
    outbox.reset()
