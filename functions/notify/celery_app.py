"""The notify function's Celery app, configured for at-least-once delivery.

Late acks plus reject-on-worker-lost mean a task is removed from Redis only after it
ran; a killed worker's task comes back after the visibility timeout. Retries, backoff
and dead letters are handled by :mod:`functions.notify.reliability`.

The tasks register themselves on :data:`app` from :mod:`functions.notify.tasks`, which
imports this module, so this module cannot import them. ``include`` has every worker and
beat started from this app import :mod:`functions.notify.worker` (the tasks and the start
checks) first: ``celery -A`` this module, the worker module, the tasks module or the
package all give the same worker.
"""

from __future__ import annotations

from celery import Celery

from shared.platform.settings import Settings, get_settings

RELAY_TASK = "relay_outbox"


def configure(app: Celery, settings: Settings) -> None:
    """(Re)apply settings: the worker module does it at import, tests after changing them."""
    app.conf.update(
        broker_url=settings.redis_url,
        broker_connection_retry_on_startup=True,
        # A killed worker's unacknowledged tasks return after the visibility timeout; the
        # sweep that returns them runs every NOTIFY_RESTORE_INTERVAL seconds.
        broker_transport_options={
            "visibility_timeout": settings.notify_visibility_timeout,
            "unacked_restore_interval": settings.notify_restore_interval,
            "unacked_restore_throttle": 1,
        },
        task_default_queue=settings.notify_queue,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One message reserved at a time: a long fan-out does not hide others behind it.
        worker_prefetch_multiplier=1,
        worker_pool="threads",
        worker_concurrency=settings.notify_worker_concurrency,
        worker_hijack_root_logger=False,
        # Our JSON handler writes to sys.stdout; Celery's redirect would feed it back into
        # logging and drop every line.
        worker_redirect_stdouts=False,
        beat_schedule={
            "relay-outbox": {
                "task": RELAY_TASK,
                "schedule": settings.relay_interval,
                # A stopped worker must not find a pile of stale relay calls on restart.
                "options": {"expires": settings.relay_interval},
            },
        },
    )


app = Celery("notify", include=["functions.notify.worker"])
configure(app, get_settings())
