"""One scheduled round: publish the outbox rows the request path could not, then tidy.

The two deployments schedule it differently (the relay's Lambda on EventBridge, the notify
worker's beat in the container stack) and run this one function, so they do the same work.
"""

from __future__ import annotations

import logging

from shared.jobs.tidy import tidy
from shared.notifications.outbox import relay_pending

log = logging.getLogger(__name__)


def relay_and_tidy() -> dict[str, int]:
    """Relay pending outbox rows, then tidy; ``published`` and the tidy's counts."""
    published = relay_pending()
    if published:
        log.info("relayed %d outbox rows", published)
    tidied = tidy()
    if any(tidied.values()):
        log.info("tidied %s", tidied)
    return {"published": published, **tidied}
