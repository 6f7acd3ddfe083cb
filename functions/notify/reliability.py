"""Retries with exponential backoff and jitter, bounded attempts, then a dead letter.

Celery's own ``retry_backoff`` counts in whole seconds; tests need fractions, and the
attempt bound must end in PostgreSQL (Redis has no dead-letter queue), so the policy
lives here and every notify task is registered through :func:`notify_task`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

from celery import Task
from celery.exceptions import Retry

from functions.notify.celery_app import app
from functions.notify.deliveries import PermanentFailure
from shared.notifications import deadletters
from shared.platform import metrics
from shared.platform.logging import bind_context
from shared.platform.settings import get_settings

log = logging.getLogger(__name__)


def backoff_seconds(retries: int) -> float:
    """Delay before retry ``retries + 1``: doubling from the base, capped, equal jitter."""
    settings = get_settings()
    delay = min(settings.notify_retry_max, settings.notify_retry_base * 2**retries)
    return delay / 2 + random.uniform(0, delay / 2)


def _dead_letter(task: Task, name: str, kwargs: dict[str, Any], exc: BaseException,
                 attempts: int) -> None:
    """Record the call under ``name`` (the current name, even if it came by an alias)."""
    try:
        letter = deadletters.record(task=name, kwargs=kwargs, task_id=task.request.id,
                                    attempts=attempts, error=f"{type(exc).__name__}: {exc}")
    except Exception as record_exc:
        # Not even PostgreSQL: keep the message alive rather than drop it.
        log.warning("cannot record dead letter for %s (%s); retrying", name, record_exc)
        raise task.retry(countdown=get_settings().notify_retry_max, exc=exc,
                         max_retries=None) from record_exc
    metrics.notification_dead_lettered(name)
    log.error("💀 %s[%s] dead-lettered as #%d after %d attempts: %s",
              name, task.request.id, letter, attempts, exc)


def notify_task(name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[Callable[..., Any]], Task]:
    """Register ``fn(**kwargs)`` as a Celery task with the retry and dead-letter policy.

    The task is also registered under each of ``aliases`` (names older producers used);
    logs, metrics and dead letters always say ``name``. Returns the task named ``name``.
    """

    def register(fn: Callable[..., Any]) -> Task:
        def run(self: Task, **kwargs: Any) -> Any:
            with bind_context(task=name, task_id=self.request.id, outbox_id=kwargs.get("outbox_id")):
                return attempt(self, kwargs)

        def attempt(self: Task, kwargs: dict[str, Any]) -> Any:
            attempts = self.request.retries + 1
            try:
                return fn(**kwargs)
            except Retry:
                raise
            except PermanentFailure as exc:
                _dead_letter(self, name, kwargs, exc, attempts)
            except Exception as exc:
                if attempts >= get_settings().notify_max_attempts:
                    _dead_letter(self, name, kwargs, exc, attempts)
                    return None
                countdown = backoff_seconds(self.request.retries)
                metrics.notification_retried(name)
                log.warning("%s[%s] attempt %d failed (%s); retrying in %.2fs",
                            name, self.request.id, attempts, exc, countdown)
                raise self.retry(exc=exc, countdown=countdown, max_retries=None) from exc
            return None

        run.__name__ = run.__qualname__ = fn.__name__
        run.__doc__ = fn.__doc__
        tasks: list[Task] = [
            app.task(name=task_name, bind=True, max_retries=None, acks_late=True,
                     reject_on_worker_lost=True)(run)
            for task_name in (name, *aliases)
        ]
        return tasks[0]

    return register
