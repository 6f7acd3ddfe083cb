"""What an order holds, written once for every module that reads or changes orders.

Its own module (it imports nothing) so that bookings, events and quotas can share it
without importing each other.
"""

from __future__ import annotations

# Orders whose lines hold their units (pending payment will, once payment exists): counted as
# sold, and cancelled with their event.
SOLD_STATUSES = "('confirmed', 'pending_payment')"

# What an order (``{booking}``: a bookings alias) costs now: its lines' remaining tickets at the
# unit price they were granted at (0 once cancelled in full). Read it after its lines' update.
REMAINING_TOTAL_SQL = """(SELECT coalesce(sum(bl.quantity * bl.unit_price_minor), 0) FROM booking_lines bl
     WHERE bl.booking_id = {booking}.id)"""


def code_uses_back_sql(codes: str) -> str:
    """Orders cancelled in full give their code's use back: ``codes`` is a query of one row
    (column ``id``) per such order naming its access code. Lock the codes' rows first, after
    the stock rows (the lock order)."""
    return f"""UPDATE access_codes a SET uses = a.uses - x.n
  FROM (SELECT u.id, count(*)::int AS n FROM ({codes}) AS u GROUP BY u.id) AS x
 WHERE a.id = x.id"""
