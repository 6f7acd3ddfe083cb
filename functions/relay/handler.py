"""The outbox relay: publish notification rows the request path could not publish.

Three ways to run the same function, :func:`shared.notifications.outbox.relay_pending`:
``python -m functions.relay.handler`` (once) or ``--loop`` (a long-running process), and, with
the tidy (:func:`shared.jobs.schedule.relay_and_tidy`), the notify worker's beat schedule
(container stack) and :func:`lambda_handler` on an EventBridge schedule (serverless).
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

from shared.jobs.schedule import relay_and_tidy
from shared.notifications.outbox import relay_pending
from shared.platform.errors import ServiceUnavailable
from shared.platform.settings import get_settings

log = logging.getLogger(__name__)


def lambda_handler(lambda_event: Any = None, context: Any = None) -> dict[str, int]:
    """Entry point for a scheduled Lambda (handler string ``functions.relay.handler.lambda_handler``).

    Also tidies expired holds and idempotency keys (correctness never waits for it).
    """
    return relay_and_tidy()


def run_loop(interval: float, *, stop_after: int | None = None) -> None:
    """Relay forever (or ``stop_after`` rounds); a database outage only delays a round."""
    rounds = 0
    while stop_after is None or rounds < stop_after:
        rounds += 1
        try:
            published = relay_pending()
            if published:
                log.info("relayed %d outbox rows", published)
        except ServiceUnavailable as exc:
            log.warning("relay round skipped: %s", exc.message)
        time.sleep(interval)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m functions.relay.handler", description=__doc__)
    parser.add_argument("--loop", action="store_true", help="keep relaying every --interval")
    parser.add_argument("--interval", type=float, default=None,
                        help="seconds between rounds (default RELAY_INTERVAL)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.loop:
        run_loop(args.interval or get_settings().relay_interval)
        return 0
    print(f"published {relay_pending()} outbox rows")
    return 0


if __name__ == "__main__":
    # Run the module under its import name, not this ``__main__`` copy, so its log lines
    # carry the logger name ``functions.relay.handler`` however it was started.
    from functions.relay.handler import main as _main

    raise SystemExit(_main())
