"""Confirming a hold as the booking routes do it: counted in the booking metrics.

A confirmation that makes a booking counts as one, like :func:`shared.ticketing.coalescing.book`
(a repeated confirm hands back the same booking and counts nothing), and a refusal for lack of
tickets counts under the same rule (:func:`shared.platform.metrics.counting_refusals`; an expired
hold whose tickets are gone says ``hold_expired``, which is not one of those codes). The counting
lives here, not in :mod:`shared.ticketing.holds`, because the relay imports holds (its tidy) and
its package carries no metrics client.
"""

from __future__ import annotations

from typing import Any

from shared.platform import metrics
from shared.ticketing import holds
from shared.ticketing.idempotency import KeyLease


def confirm_hold(
    *, hold_id: int, user_id: int, idempotency: KeyLease | None = None
) -> tuple[dict[str, Any], bool]:
    """:func:`shared.ticketing.holds.confirm_hold`, counted; returns (booking, created)."""
    with metrics.counting_refusals():
        booking, created = holds.confirm_hold(hold_id=hold_id, user_id=user_id, idempotency=idempotency)
    if created:
        metrics.booking_made(booking["quantity"])
    return booking, created
