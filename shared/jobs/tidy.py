"""Periodic tidying that correctness never waits for: expired holds, keys and tokens.

Availability is exact without it (expired holds already count as free); this only keeps
tables small and counters current. Runs in every scheduled round (:mod:`shared.jobs.schedule`).
"""

from __future__ import annotations

from shared.accounts import email_verification
from shared.ticketing import holds, idempotency


def tidy() -> dict[str, int]:
    return {
        "hold_tickets_freed": holds.tidy_expired_holds(),
        "idempotency_keys_purged": idempotency.purge_expired(),
        "verification_tokens_purged": email_verification.purge_expired(),
    }
