"""A channel for crash tests: slow enough to kill a worker mid-fan-out, and it keeps a ledger.

Selected with ``NOTIFY_CHANNEL=tests.support.slow_channel:channel`` in a worker subprocess; every
completed send appends the recipient to ``SLOW_CHANNEL_LOG``, so the test can count who
was notified and how often across worker processes.
"""

from __future__ import annotations

import os
import time

from functions.notify.channels import Email


class SlowChannel:
    name = "slow"
    sends_per_commit = 1

    def send(self, email: Email) -> None:
        time.sleep(float(os.environ.get("SLOW_CHANNEL_DELAY", "0.05")))
        with open(os.environ["SLOW_CHANNEL_LOG"], "a") as ledger:
            ledger.write(email.recipient + "\n")


channel = SlowChannel()
