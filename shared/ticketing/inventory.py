"""Taking tickets out of an event's pool: the rules every granting path obeys, and why not.

Every condition for granting tickets is written once here, in one of three tables or two
named checks, and a refused request is told the first that fails, in this order:

1. the event's rules, :data:`RULES` (:class:`Rule`, on the event's row): it exists
   (``event_not_found``), is active (``event_cancelled``), has not ended (``event_ended``:
   at ``end_time``, or ``start_time`` without one, never without either), and the order's
   total is within its per-booking maximum (``quantity_too_large``): :data:`GATE_RULES`;
2. the order's access code, if it names one, is usable (``access_code_invalid``, one answer
   whatever is wrong): judged before any line, so every guess counts as one;
3. each line's rules, :data:`LINE_RULES` (:class:`LineRule`, on the line's type; rule by
   rule, line by line): the type is the event's and visible or unlocked by the code
   (``ticket_type_not_found``), the line within its type's per-order maximum and minimum
   (``quantity_too_large``, ``quantity_below_minimum``), the type active
   (``ticket_type_inactive``), its sales started or opened by the code
   (``sales_not_started``) and not ended (``sales_ended``);
4. the code's uses (``access_code_exhausted``: CHECK ``access_codes_within_max_uses``), only
   when some line's type is one it unlocks (:data:`_CODE_NEEDED`);
5. room in every quota of every line's type (:data:`TICKETS_LEFT` of :data:`RULES`:
   ``sold_out``, ``insufficient_tickets``, naming the quota);
6. the customer's booked plus live held tickets of the event within its per-customer limit
   (:data:`WITHIN_CUSTOMER_LIMIT` of :data:`RULES`, ``customer_limit_exceeded``: CHECK
   ``customer_tickets_within_limit``), then of each line's type within the type's
   (``type_limit_exceeded``, :func:`type_limit`: CHECK ``customer_type_tickets_within_limit``).

A rule is a SQL predicate, a check in Python on what the rules read, and the refusal it maps
to. Every path uses the same tables:

* one statement (a booking, a hold): the event's predicates are the WHERE of ``gate``, the
  line rules' the WHERE of ``lines`` (:func:`grant_ctes`), room the guarded decrement of
  one stock row per quota; the code's uses and the limits are CHECKs on the rows the same
  statement writes (:data:`CODE_USED_CTE`, :func:`count_ctes`), so concurrent requests
  cannot pass them together. A refused statement returns no row (or raises a CHECK,
  :func:`is_limit_check`) and is explained by walking the checks in the order above
  (:func:`grant`, :func:`judge`);
* under the lock of every stock row (the exact path, a coalesced batch, the confirmation of
  an expired hold): the same predicates on each quota's summed rows
  (:data:`GRANT_EXACT_CTE`), or the checks decide (:func:`judge`);
* a live hold's tickets were granted when it was made: confirming it re-checks only the
  event's own rules (:data:`EVENT_RULES`, :data:`OPEN_SQL`).

Quotas and stock rows. An event sells ticket types; a quota is a capacity over some of them
(the event quota, ``is_event``, lists every type: its size is ``events.total_tickets``). A
ticket of a type takes one unit of every quota the type belongs to. A quota's available
units are spread over ``quotas.shards`` rows of ``quota_stock`` (fixed at creation,
:func:`shards_for`); the available count is their sum in one snapshot
(:data:`QUOTA_AVAILABLE_SQL`; the event's :data:`AVAILABLE_SQL` is its event quota's), and no
other copy exists. A grant takes, in each quota it needs, one row that has enough, chosen
without waiting (``FOR UPDATE SKIP LOCKED``, starting at a random row so clients spread);
when every such row is locked it waits for its random row; if a quota's row cannot serve it
either, the exact path locks every row of the event's quotas in (quota_id, shard) order and
takes across rows if each quota's sum suffices, else refuses with the exact sum. So a
request is refused for lack of tickets only when a quota's total is short, decided under
the lock of every row. A quota with one row is the one-row design: the statement waits on it.

Staleness. Grants do not lock the event row; they compare ``gate_seq`` of the stock row they
write with the event's. Every writer of what the rules read on the event (cancellation,
times, limits, capacity) locks every stock row and bumps both (:func:`touch_gate`) before it
changes anything, so a grant re-checked by PostgreSQL (READ COMMITTED) against a stock row
that writer committed, but still holding the old event row, matches nothing and goes to the
exact path, which locks and re-reads.

Lock order everywhere: the event row (only writers other than grants take it), then stock
rows in (quota_id, shard) order (a grant takes one per quota), then access codes, holds,
bookings, customer counters (the event's, then the types' in type id order). A grant locks
one stock row per quota and its counter rows, for one statement. Writers lock the event row
``FOR NO KEY UPDATE``, never ``FOR UPDATE``: a grant's inserts take ``FOR KEY SHARE`` on it
(their foreign keys) while it holds its stock row, and ``FOR UPDATE`` would wait for that.
The counter's ``limit_at_claim`` column keeps its first name: the limit at the last grant.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import psycopg

from shared.platform.db import Connection
from shared.platform.errors import AppError, BadRequest, Conflict, NotFound, ServiceUnavailable
from shared.platform.settings import get_settings

CUSTOMER_LIMIT_CONSTRAINT = "customer_tickets_within_limit"
TYPE_LIMIT_CONSTRAINT = "customer_type_tickets_within_limit"
# A type's per-customer limit when it has none (its counter's limit_at_claim).
NO_TYPE_LIMIT = 2147483647

# When sales close: the end, or the start of an event without an end; NULL: never.
SALES_END_SQL = "coalesce(end_time, start_time)"
# The event's per-booking maximum: its own, else the server's.
BOOKING_MAX_SQL = "coalesce(max_tickets_per_booking, %(default_max)s)"
# The event's per-customer limit: its own, else the default but never below the per-booking
# maximum in force (who allows 30 in one booking allows 30).
CUSTOMER_MAX_SQL = f"coalesce(max_tickets_per_customer, greatest(%(customer_max)s, {BOOKING_MAX_SQL}))"

# A quota's available tickets, exact: the sum of its stock rows (``{quota}``: a quotas alias).
QUOTA_AVAILABLE_SQL = """(SELECT coalesce(sum(st.available_tickets), 0) FROM quota_stock st
     WHERE st.quota_id = {quota}.id)::int"""

# An event's available tickets, exact: its event quota's (``{event}``: the events alias).
AVAILABLE_SQL = """(SELECT coalesce(sum(st.available_tickets), 0)
      FROM quotas q JOIN quota_stock st ON st.quota_id = q.id
     WHERE q.event_id = {event}.id AND q.is_event)::int"""

# What the rules read from an event row (a diagnosis, a batch, a hold confirmation).
GATE_COLUMNS = f"""status, {AVAILABLE_SQL.format(event="events")} AS available_tickets, {SALES_END_SQL} AS sales_end,
       {BOOKING_MAX_SQL} AS max_quantity,
       {CUSTOMER_MAX_SQL} AS customer_max"""

# A gate row (GATE_COLUMNS); a missing event reads as an empty one.
Gate = Mapping[str, Any]


@dataclass(frozen=True)
class Ask:
    """A request as the rules judge it, with what it may count on."""

    event_id: int
    quantity: int
    now: datetime
    available: int | None = None  # free tickets it may take; None: the row's available_tickets
    booked: int = 0  # the customer's booked tickets of the event
    held: int = 0  # and actively held ones

    @classmethod
    def of(cls, params: Mapping[str, Any]) -> Ask:
        """The request of a granting statement's parameters (:func:`rule_params`)."""
        return cls(params["event_id"], params["quantity"], params["now"])

    def free(self, event: Gate) -> int:
        return event["available_tickets"] if self.available is None else self.available


@dataclass(frozen=True)
class Rule:
    """One condition for granting tickets, and the refusal when it fails."""

    name: str
    # Its predicate on ``events`` (with rule_params) in the granting statement's ``gate``;
    # None: the statement enforces it otherwise (room: per quota, by the stock rows it
    # takes; the customer limit: CUSTOMER_LIMIT_CONSTRAINT on the counter).
    sql: str | None
    passes: Callable[[Gate, Ask], bool]
    refusal: Callable[[Gate, Ask], AppError]
    codes: tuple[str, ...]  # every code ``refusal`` may give


def tickets(n: int) -> str:
    """``n`` tickets in words: "1 ticket", "3 tickets"."""
    return f"{n} {'ticket' if n == 1 else 'tickets'}"


def _ended(event: Gate, ask: Ask) -> AppError:
    return Conflict("event_ended", f"Event {ask.event_id} has ended", ended_at=_json_time(event["sales_end"]))


def _too_large(event: Gate, ask: Ask) -> AppError:
    return BadRequest(
        "quantity_too_large",
        f"At most {tickets(event['max_quantity'])} can be booked at once for this event",
        max_quantity=event["max_quantity"],
    )


def _shortage(event: Gate, ask: Ask) -> AppError:
    available = ask.free(event)
    if available == 0:
        return BadRequest("sold_out", f"Event {ask.event_id} is sold out", available=0)
    return BadRequest(
        "insufficient_tickets",
        f"Only {tickets(available)} left for event {ask.event_id}",
        available=available,
        requested=ask.quantity,
    )


def _over_limit(event: Gate, ask: Ask) -> AppError:
    return BadRequest(
        "customer_limit_exceeded",
        f"One customer may have at most {tickets(event['customer_max'])} of event {ask.event_id} "
        f"(booked and held); you have {ask.booked + ask.held}",
        limit=event["customer_max"],
        booked=ask.booked,
        held=ask.held,
        requested=ask.quantity,
    )


EVENT_EXISTS = Rule(
    "the event exists",
    "id = %(event_id)s",
    lambda event, ask: bool(event),
    lambda event, ask: NotFound("event_not_found", f"Event {ask.event_id} does not exist"),
    ("event_not_found",),
)
EVENT_ACTIVE = Rule(
    "the event is active",
    "status = 'active'",
    lambda event, ask: event["status"] == "active",
    lambda event, ask: Conflict("event_cancelled", f"Event {ask.event_id} is cancelled"),
    ("event_cancelled",),
)
EVENT_NOT_ENDED = Rule(
    "its sales have not closed",
    f"coalesce({SALES_END_SQL}, 'infinity') > %(now)s",
    lambda event, ask: event["sales_end"] is None or event["sales_end"] > ask.now,
    _ended,
    ("event_ended",),
)
WITHIN_BOOKING_MAX = Rule(
    "at most the event's per-booking maximum",
    f"%(quantity)s <= {BOOKING_MAX_SQL}",
    lambda event, ask: ask.quantity <= event["max_quantity"],
    _too_large,
    ("quantity_too_large",),
)
TICKETS_LEFT = Rule(
    "enough tickets left",
    None,  # per quota: the stock row taken has enough (``pick``), or the quota's sum (exact)
    lambda event, ask: ask.quantity <= ask.free(event),
    _shortage,
    ("sold_out", "insufficient_tickets"),
)
WITHIN_CUSTOMER_LIMIT = Rule(
    "the customer stays within the event's per-customer limit",
    None,  # the counter's CHECK, in the same statement, after the decrement
    lambda event, ask: ask.booked + ask.held + ask.quantity <= event["customer_max"],
    _over_limit,
    ("customer_limit_exceeded",),
)

# Whether the event can grant anything now: all a live hold's confirmation re-checks.
EVENT_RULES = (EVENT_EXISTS, EVENT_ACTIVE, EVENT_NOT_ENDED)
# The rules the event's row decides alone, before any stock is read.
GATE_RULES = (*EVENT_RULES, WITHIN_BOOKING_MAX)
# The rules the event's row and its stock decide: a refused statement returns no row.
ROW_RULES = (*GATE_RULES, TICKETS_LEFT)
# Every rule, in the order refusals name them. The limit comes last, as in the statement:
# its CHECK runs on the counter written from the decrement's row.
RULES = (*ROW_RULES, WITHIN_CUSTOMER_LIMIT)


@dataclass(frozen=True)
class Line:
    """One line of an order: how many tickets of which type."""

    ticket_type_id: int
    quantity: int


# A ticket type's row as the line rules read it (:data:`TYPE_COLUMNS`); None: no such type
# of the event.
TicketType = Mapping[str, Any]
TYPE_COLUMNS = """id, name, hidden, active, sales_start, sales_end, min_per_order, max_per_order,
       max_per_customer, price_minor"""


@dataclass(frozen=True)
class LineRule:
    """One condition a line of an order must meet, and the refusal when it fails."""

    name: str
    # Its predicate on the type ``t``, the line ``r`` and the order's ``code`` (``{unlocked}``:
    # the code unlocks ``t``), at %(now)s, in the granting statement's ``lines``.
    sql: str
    # Whether the line passes on the type's row (None: not of this event), at ``now``, with
    # the types the order's code unlocks.
    passes: Callable[[TicketType | None, Line, datetime, frozenset[int]], bool]
    refusal: Callable[[TicketType | None, Line], AppError]
    codes: tuple[str, ...]


def _line_too_large(t: TicketType | None, line: Line) -> AppError:
    assert t is not None
    return BadRequest(
        "quantity_too_large",
        f"At most {tickets(t['max_per_order'])} of {t['name']!r} can be ordered at once",
        ticket_type_id=line.ticket_type_id,
        max_quantity=t["max_per_order"],
    )


def _line_too_small(t: TicketType | None, line: Line) -> AppError:
    assert t is not None
    return BadRequest(
        "quantity_below_minimum",
        f"At least {tickets(t['min_per_order'])} of {t['name']!r} must be ordered at once",
        ticket_type_id=line.ticket_type_id,
        min_quantity=t["min_per_order"],
    )


def _inactive(t: TicketType | None, line: Line) -> AppError:
    assert t is not None
    return Conflict("ticket_type_inactive", f"Ticket type {t['name']!r} is no longer sold",
                    ticket_type_id=line.ticket_type_id)


def _not_started(t: TicketType | None, line: Line) -> AppError:
    assert t is not None
    return Conflict(
        "sales_not_started",
        f"Sales of {t['name']!r} start at {_json_time(t['sales_start'])}",
        ticket_type_id=line.ticket_type_id,
        sales_start=_json_time(t["sales_start"]),
    )


def _sales_ended(t: TicketType | None, line: Line) -> AppError:
    assert t is not None
    return Conflict(
        "sales_ended",
        f"Sales of {t['name']!r} ended at {_json_time(t['sales_end'])}",
        ticket_type_id=line.ticket_type_id,
        sales_end=_json_time(t["sales_end"]),
    )


# In the order refusals name them. Visibility comes first: until the type is known to be
# the event's and visible or unlocked by the order's code, no refusal may name it or tell
# its bounds (a hidden type stays unknown to whoever has no code for it).
LINE_RULES = (
    LineRule(
        "the type is the event's, and visible or unlocked by the order's code",
        "(NOT t.hidden OR {unlocked})",
        lambda t, line, now, unlocked: t is not None and (not t["hidden"] or t["id"] in unlocked),
        lambda t, line: NotFound(
            "ticket_type_not_found", f"Ticket type {line.ticket_type_id} does not exist",
            ticket_type_id=line.ticket_type_id),
        ("ticket_type_not_found",),
    ),
    LineRule(
        "a line takes at most its type's per-order maximum",
        "(t.max_per_order IS NULL OR r.quantity <= t.max_per_order)",
        lambda t, line, now, unlocked: t is None or t["max_per_order"] is None or line.quantity <= t["max_per_order"],
        _line_too_large,
        ("quantity_too_large",),
    ),
    LineRule(
        "a line takes at least its type's per-order minimum",
        "r.quantity >= t.min_per_order",
        lambda t, line, now, unlocked: t is None or line.quantity >= t["min_per_order"],
        _line_too_small,
        ("quantity_below_minimum",),
    ),
    LineRule(
        "the type is on offer (active)",
        "t.active",
        lambda t, line, now, unlocked: t is not None and t["active"],
        _inactive,
        ("ticket_type_inactive",),
    ),
    LineRule(
        "its sales have started, or the order's code opens its presale",
        "(t.sales_start IS NULL OR t.sales_start <= %(now)s OR {unlocked})",
        lambda t, line, now, unlocked: t is not None and (
            t["sales_start"] is None or t["sales_start"] <= now or t["id"] in unlocked),
        _not_started,
        ("sales_not_started",),
    ),
    LineRule(
        "its sales have not ended",
        "(t.sales_end IS NULL OR t.sales_end > %(now)s)",
        lambda t, line, now, unlocked: t is not None and (t["sales_end"] is None or t["sales_end"] > now),
        _sales_ended,
        ("sales_ended",),
    ),
)

# The code's refusals: unknown, inactive or outside its window say one thing (guessing
# learns nothing), and are judged before any line (so every guess counts as one);
# ``access_code_exhausted`` after the lines, from its CHECK.
CODE_INVALID = "access_code_invalid"
CODE_EXHAUSTED = "access_code_exhausted"
CODE_USES_CONSTRAINT = "access_codes_within_max_uses"
TYPE_LIMIT = "type_limit_exceeded"


# ``{unlocked}`` in a statement with a ``code`` CTE; without one (the seed's request), nothing is.
_UNLOCKED_BY_CODE = "t.id = ANY(coalesce((SELECT unlocks FROM code), '{}'))"


def _line_where(unlocked: str = _UNLOCKED_BY_CODE) -> str:
    """Every line rule's predicate, ANDed, with ``unlocked`` for ``{unlocked}``."""
    return "\n       AND ".join(rule.sql.replace("{unlocked}", unlocked) for rule in LINE_RULES)


def line_refusal(
    types: Mapping[int, TicketType], lines: Sequence[Line], now: datetime, unlocked: frozenset[int]
) -> AppError | None:
    """The first line rule an order's lines fail, in rule order then line order, or None."""
    for rule in LINE_RULES:
        for line in lines:
            t = types.get(line.ticket_type_id)
            if not rule.passes(t, line, now, unlocked):
                return rule.refusal(t, line)
    return None


# Every error code a refused grant can give (for metrics, docs and tests).
REFUSAL_CODES = tuple(dict.fromkeys((
    *(code for rule in RULES for code in rule.codes),
    *(code for rule in LINE_RULES for code in rule.codes),
    CODE_INVALID, CODE_EXHAUSTED, TYPE_LIMIT,
)))


def _where(rules: Sequence[Rule]) -> str:
    return "\n       AND ".join(rule.sql for rule in rules if rule.sql is not None)


# The event %(event_id)s exists and can grant tickets at the application's time %(now)s.
OPEN_SQL = _where(EVENT_RULES)

# The event as a grant reads it, when its own rules pass: ``gate`` (one row or none).
_GATE_CTE = f"""gate AS MATERIALIZED (
    SELECT id, gate_seq, currency, {CUSTOMER_MAX_SQL} AS customer_max, {SALES_END_SQL} AS sales_end,
           max_hold_seconds
      FROM events
     WHERE {_where(GATE_RULES)}
)"""

# The order's lines (``lines``: ticket_type_id, quantity, price_minor, name, type_max): the seed's
# request, %(quantity)s of the event's default type, when it passes every line rule with no
# code (nothing unlocked: a hidden default type is not found without one); else no line.
# Cheap on the hot path: the same one-row read of the type, with its predicates.
_DEFAULT_LINES_CTE = f"""lines AS MATERIALIZED (
    SELECT t.id AS ticket_type_id, r.quantity, t.price_minor, t.name,
           coalesce(t.max_per_customer, {NO_TYPE_LIMIT}) AS type_max
      FROM gate JOIN ticket_types t ON t.event_id = gate.id AND t.is_default,
           (SELECT %(quantity)s::int AS quantity) AS r
     WHERE {_line_where("false")}
)"""

# The seed's request is granted only if its one line passed the line rules.
_DEFAULT_READY = """
       AND EXISTS (SELECT 1 FROM lines)"""

# What the order takes of each quota (``demand``): one unit per ticket of every type it lists.
_DEMAND_CTE = """demand AS MATERIALIZED (
    SELECT qt.quota_id, q.shards, sum(l.quantity)::int AS quantity
      FROM lines l
      JOIN quota_types qt ON qt.ticket_type_id = l.ticket_type_id
      JOIN quotas q ON q.id = qt.quota_id
     GROUP BY qt.quota_id, q.shards
     ORDER BY qt.quota_id
)"""

# The seed's request has one line: its demand needs no grouping (the hot path).
_DEFAULT_DEMAND_CTE = """demand AS MATERIALIZED (
    SELECT qt.quota_id, q.shards, l.quantity
      FROM lines l
      JOIN quota_types qt ON qt.ticket_type_id = l.ticket_type_id
      JOIN quotas q ON q.id = qt.quota_id
     ORDER BY qt.quota_id
)"""

# The granted order (``granted``): the event's row as the gate read it, with the order's
# ticket count and total. ``{when}``: the condition that every quota's take was made.
_GRANTED_CTE = """granted AS MATERIALIZED (
    SELECT gate.id, gate.customer_max, gate.sales_end, gate.max_hold_seconds, gate.currency, {{code_id}},
           (SELECT sum(quantity) FROM lines)::int AS quantity,
           (SELECT sum(quantity * price_minor) FROM lines)::bigint AS total_minor
      FROM gate
     WHERE {when}
)"""


def take_cte(demand: str, name: str = "taken") -> str:
    """A CTE ``name`` that takes, of every quota in ``demand`` (SQL rows: quota_id,
    quantity), that many tickets off its stock rows in shard order, several rows if need be.
    Only for a transaction that holds every row's lock (:func:`lock_stock`) and has checked
    each quota's sum suffices."""
    return f"""{name} AS (
    UPDATE quota_stock s SET available_tickets = s.available_tickets - t.take
      FROM (SELECT st.quota_id, st.shard,
                   least(st.available_tickets, greatest(0, d.quantity
                       - (sum(st.available_tickets) OVER (PARTITION BY st.quota_id ORDER BY st.shard)
                          - st.available_tickets)))::int AS take
              FROM quota_stock st JOIN ({demand}) AS d(quota_id, quantity) ON d.quota_id = st.quota_id) AS t
     WHERE s.quota_id = t.quota_id AND s.shard = t.shard AND t.take > 0
    RETURNING s.quota_id
)"""


# The one-statement take: per quota of the demand (in quota_id order), the first unlocked
# row with enough from a random start without waiting; none: the quota's random home row,
# waited for (its latest version read under the lock). Every quota's row is then written
# only if every one has enough and carries the event's gate sequence: all or nothing.
# ``pick`` read each row's latest version under its lock, so the new count is written from
# that (the UPDATE's own scan may meet an older version first, whose arithmetic PostgreSQL
# would check against the CHECK before following the row to its latest version).
_PICK_TAKE_CTES = f"""pick AS MATERIALIZED (
    SELECT d.quota_id, d.quantity, coalesce(f.shard, h.shard) AS shard,
           coalesce(f.available_tickets, h.available_tickets) AS available,
           coalesce(f.gate_seq, h.gate_seq) AS gate_seq
      FROM demand d
     CROSS JOIN LATERAL (SELECT floor(random() * d.shards)::int AS home) AS spread
      LEFT JOIN LATERAL (
           SELECT s.shard, s.available_tickets, s.gate_seq FROM quota_stock s
            WHERE s.quota_id = d.quota_id AND s.available_tickets >= d.quantity
            ORDER BY s.shard < spread.home, s.shard
            LIMIT 1
              FOR UPDATE OF s SKIP LOCKED) AS f ON true
      LEFT JOIN LATERAL (
           SELECT s.shard, s.available_tickets, s.gate_seq FROM quota_stock s
            WHERE f.shard IS NULL AND s.quota_id = d.quota_id AND s.shard = spread.home
              FOR UPDATE OF s) AS h ON true
), ready AS MATERIALIZED (
    SELECT gate.id FROM gate
     WHERE EXISTS (SELECT 1 FROM pick)
       AND NOT EXISTS (SELECT 1 FROM pick
                        WHERE pick.shard IS NULL OR pick.available < pick.quantity
                           OR pick.gate_seq <> gate.gate_seq){{ready}}
), taken AS (
    UPDATE quota_stock s SET available_tickets = p.available - p.quantity
      FROM pick p
     WHERE s.quota_id = p.quota_id AND s.shard = p.shard AND EXISTS (SELECT 1 FROM ready)
    RETURNING s.quota_id
), {_GRANTED_CTE.format(when="EXISTS (SELECT 1 FROM taken)")}"""

# The exact take, for a transaction that holds every stock row's lock: each quota's sum.
_EXACT_TAKE_CTES = f"""sums AS MATERIALIZED (
    SELECT d.quota_id, d.quantity,
           (SELECT coalesce(sum(s.available_tickets), 0) FROM quota_stock s WHERE s.quota_id = d.quota_id)::int
               AS available
      FROM demand d
), ready AS MATERIALIZED (
    SELECT gate.id FROM gate
     WHERE EXISTS (SELECT 1 FROM demand)
       AND NOT EXISTS (SELECT 1 FROM sums WHERE sums.available < sums.quantity){{ready}}
), {take_cte("SELECT quota_id, quantity FROM demand WHERE EXISTS (SELECT 1 FROM ready)")},
{_GRANTED_CTE.format(when="EXISTS (SELECT 1 FROM ready)")}"""


# An order's own lines (``req``): the request's types and quantities, or %(quantity)s of the
# default type when it names none (%(type_ids)s NULL).
_REQ_CTE = """req AS MATERIALIZED (
    SELECT r.ticket_type_id, r.quantity
      FROM unnest(%(type_ids)s::bigint[], %(quantities)s::int[]) AS r(ticket_type_id, quantity)
    UNION ALL
    SELECT t.id, %(quantity)s::int FROM ticket_types t
     WHERE %(type_ids)s::bigint[] IS NULL AND t.event_id = %(event_id)s AND t.is_default
)"""


@functools.cache
def _code_sql(extra: str = "") -> str:
    """The access code the order names, when usable at %(now)s (id, unlocks: the types it
    unlocks, then ``extra`` columns of ``a``): by digest (%(code_digest)s, a request) or id
    (%(code_id)s, an expired hold's code). The one lookup of an order's code, in the
    statement (:func:`_code_cte`) and in the diagnosis (:func:`read_order`)."""
    from shared.ticketing.access_codes import usable_sql  # access_codes imports quotas, which imports this

    return f"""SELECT a.id, array(SELECT act.ticket_type_id FROM access_code_types act
                        WHERE act.access_code_id = a.id) AS unlocks{extra}
      FROM access_codes a
     WHERE a.event_id = %(event_id)s AND (a.code_digest = %(code_digest)s OR a.id = %(code_id)s)
       AND {usable_sql("a")}"""


def _code_cte() -> str:
    """The order's code as ``code`` (id, unlocks) in a granting statement (:func:`_code_sql`)."""
    return f"""code AS MATERIALIZED (
    {_code_sql()}
)"""


def _order_lines_cte() -> str:
    """The order's lines that pass every line rule (:data:`LINE_RULES`) as ``lines``."""
    return f"""lines AS MATERIALIZED (
    SELECT t.id AS ticket_type_id, r.quantity, t.price_minor, t.name,
           coalesce(t.max_per_customer, {NO_TYPE_LIMIT}) AS type_max
      FROM gate JOIN req r ON true JOIN ticket_types t ON t.id = r.ticket_type_id AND t.event_id = gate.id
     WHERE {_line_where()}
)"""


# An order is granted only if every line it asked passed, and its code (if any) is usable.
_ORDER_READY = """
       AND (SELECT count(*) FROM lines) = (SELECT count(*) FROM req)
       AND (%(code_digest)s::bytea IS NULL AND %(code_id)s::bigint IS NULL OR EXISTS (SELECT 1 FROM code))"""

# The order's code when it is used: some line's type is among the types it unlocks. An
# order naming a valid code that unlocks none of its types is granted without using it (no
# use counted, none given back; the booking or hold records no code).
_CODE_NEEDED = """(SELECT code.id FROM code
        WHERE EXISTS (SELECT 1 FROM lines l WHERE l.ticket_type_id = ANY(code.unlocks))) AS access_code_id"""

# The code's use, counted after the stock rows are taken (the lock order), only when the
# order uses it (``granted.access_code_id``): past max_uses, the CHECK
# ``access_codes_within_max_uses`` aborts the statement.
CODE_USED_CTE = """code_used AS (
    UPDATE access_codes a SET uses = a.uses + 1 FROM granted WHERE a.id = granted.access_code_id
    RETURNING a.id
)"""


@functools.cache
def grant_ctes(*, exact: bool, order: bool = False) -> str:
    """The granting CTEs, shared by bookings and holds, ending in ``granted`` (one row when
    granted, none when refused), with the order's ``lines``.

    ``exact`` False: the one-statement take (:data:`_PICK_TAKE_CTES`); no row means a rule
    refused, or no single row of some quota could serve it, or the event changed
    meanwhile: :func:`grant` then takes the exact path, ``exact`` True, under every stock
    row's lock. ``order`` False: the seed's request (%(quantity)s of the default type, the
    hot path); True: any order (%(type_ids)s, %(quantities)s, a code), with its code's use
    (``code_used``)."""
    take = _EXACT_TAKE_CTES if exact else _PICK_TAKE_CTES
    if not order:
        return ",\n".join((_GATE_CTE, _DEFAULT_LINES_CTE, _DEFAULT_DEMAND_CTE,
                            take.format(ready=_DEFAULT_READY, code_id="NULL::bigint AS access_code_id")))
    return ",\n".join((
        _GATE_CTE, _REQ_CTE, _code_cte(), _order_lines_cte(), _DEMAND_CTE,
        take.format(ready=_ORDER_READY, code_id=_CODE_NEEDED), CODE_USED_CTE,
    ))


GRANT_CTE = grant_ctes(exact=False)
GRANT_EXACT_CTE = grant_ctes(exact=True)


_LOCK_STOCK_SQL = """SELECT s.quota_id, s.shard FROM quota_stock s
 WHERE s.quota_id IN (SELECT id FROM quotas WHERE event_id = %s)
 ORDER BY s.quota_id, s.shard
   FOR UPDATE OF s"""


def lock_stock(conn: Connection, event_id: int) -> None:
    """Lock every stock row of every quota of the event, in (quota_id, shard) order (the
    lock order), until the transaction ends."""
    conn.execute(_LOCK_STOCK_SQL, (event_id,))


def touch_gate(conn: Connection, event_id: int) -> None:
    """Lock every stock row and bump the event's gate sequence on it and on the event: call it
    first in any transaction that changes what the rules read on the event, its types, quotas
    or codes (after the event row's lock), so no grant can act on them as they were (module
    docstring, Staleness)."""
    lock_stock(conn, event_id)
    conn.execute(
        """WITH e AS (UPDATE events SET gate_seq = gate_seq + 1 WHERE id = %(id)s RETURNING gate_seq)
           UPDATE quota_stock SET gate_seq = (SELECT gate_seq FROM e)
            WHERE quota_id IN (SELECT id FROM quotas WHERE event_id = %(id)s)""",
        {"id": event_id},
    )


def shards_for(total: int) -> int:
    """How many stock rows a new quota of ``total`` tickets gets (settings: INVENTORY_SHARDS,
    INVENTORY_SHARD_MIN_TICKETS): never a row below the minimum, at least one."""
    settings = get_settings()
    return max(1, min(settings.inventory_shards, total // settings.inventory_shard_min_tickets))


# ``n`` tickets spread evenly over the quota's rows: row s gets n / shards, the first n % shards one more.
_EVEN_SQL = "{n} / q.shards + (s.shard < {n} %% q.shards)::int"


def stock_quota(conn: Connection, quota_id: int) -> None:
    """A new quota's stock rows: ``quotas.shards`` of them sharing its ``size``, carrying
    the event's gate sequence."""
    conn.execute(
        f"""INSERT INTO quota_stock (quota_id, shard, available_tickets, gate_seq)
            SELECT q.id, s.shard, {_EVEN_SQL.format(n="q.size")}, e.gate_seq
              FROM quotas q JOIN events e ON e.id = q.event_id, generate_series(0, q.shards - 1) AS s(shard)
             WHERE q.id = %(id)s""",
        {"id": quota_id},
    )


def set_stock(conn: Connection, quota_id: int, available: int) -> None:
    """Make the quota's available tickets ``available``, spread evenly (every row locked)."""
    conn.execute(
        f"""UPDATE quota_stock s SET available_tickets = {_EVEN_SQL.format(n="%(n)s")}
              FROM quotas q WHERE q.id = %(id)s AND s.quota_id = q.id""",
        {"id": quota_id, "n": available},
    )


def shift_stock(conn: Connection, quota_id: int, delta: int) -> None:
    """Add ``delta`` tickets (spread evenly) or take ``-delta`` (in shard order; the caller
    checked there are enough), every row of the quota locked (a capacity change)."""
    if delta >= 0:
        conn.execute(
            f"""UPDATE quota_stock s SET available_tickets = s.available_tickets + {_EVEN_SQL.format(n="%(n)s")}
                  FROM quotas q WHERE q.id = %(id)s AND s.quota_id = q.id""",
            {"id": quota_id, "n": delta},
        )
    else:
        conn.execute(
            f"WITH {take_cte('SELECT %(id)s::bigint, %(n)s::int')} SELECT count(*) FROM taken",
            {"id": quota_id, "n": -delta},
        )


def lock_return_rows(conn: Connection, event_id: int, type_ids: Sequence[int] | None = None) -> dict[int, int]:
    """Lock, in each quota of the event (only those of ``type_ids`` when given), the stock
    row that gets tickets back: the emptiest, so a drained row refills. Quota id order (the
    lock order); returns {quota_id: shard}."""
    rows = conn.execute(
        """SELECT q.id AS quota_id, r.shard
             FROM (SELECT id FROM quotas
                    WHERE event_id = %(event_id)s
                      AND (%(types)s::bigint[] IS NULL OR id IN (
                           SELECT quota_id FROM quota_types WHERE ticket_type_id = ANY(%(types)s::bigint[])))
                    ORDER BY id) AS q
            CROSS JOIN LATERAL (
                  SELECT shard FROM quota_stock s WHERE s.quota_id = q.id
                   ORDER BY available_tickets, shard LIMIT 1
                     FOR UPDATE) AS r""",
        {"event_id": event_id, "types": None if type_ids is None else list(type_ids)},
    ).fetchall()
    return {row["quota_id"]: row["shard"] for row in rows}


def first_failed(event: Gate | None, ask: Ask, rules: Sequence[Rule] = RULES) -> Rule | None:
    """The first of ``rules`` the request fails on the event's gate row, or None."""
    gate = event or {}
    for rule in rules:
        if not rule.passes(gate, ask):
            return rule
    return None


def refusal(event: Gate | None, ask: Ask, rules: Sequence[Rule] = RULES) -> AppError | None:
    """Why ``rules`` refuse the request on the event's gate row, or None."""
    failed = first_failed(event, ask, rules)
    return None if failed is None else failed.refusal(event or {}, ask)


def count_cte(rows: str) -> str:
    """A CTE named ``counted`` that adds ``rows`` (event_id, user_id, tickets, limit) to
    customers' counters. Passing the limit violates CUSTOMER_LIMIT_CONSTRAINT and aborts
    the whole statement, whatever else it wrote."""
    return f"""counted AS (
    INSERT INTO customer_tickets AS ct (event_id, user_id, tickets, limit_at_claim)
    {rows}
    ON CONFLICT (event_id, user_id) DO UPDATE
       SET tickets = ct.tickets + excluded.tickets, limit_at_claim = excluded.limit_at_claim
    RETURNING event_id
)"""


def type_count_cte(rows: str) -> str:
    """A CTE named ``type_counted`` that adds ``rows`` (ticket_type_id, user_id, tickets,
    limit; in type id order, the lock order) to customers' per-type counters. Passing the
    limit violates TYPE_LIMIT_CONSTRAINT and aborts the whole statement."""
    return f"""type_counted AS (
    INSERT INTO customer_type_tickets AS ct (ticket_type_id, user_id, tickets, limit_at_claim)
    {rows}
    ON CONFLICT (ticket_type_id, user_id) DO UPDATE
       SET tickets = ct.tickets + excluded.tickets, limit_at_claim = excluded.limit_at_claim
    RETURNING ticket_type_id
)"""


# One request's counters, raised in the same statement as the grant and after it (the
# event's, then each type's, in type id order).
def count_ctes(*, order: bool = False) -> str:
    """One request's counters (``order``: after its code's use, :func:`grant_ctes`)."""
    after = ", (SELECT count(*) FROM code_used) AS after_code" if order else ""
    return ",\n".join((
        count_cte(f"SELECT id, %(user_id)s, quantity, customer_max FROM granted{after}"),
        type_count_cte("""SELECT l.ticket_type_id, %(user_id)s, l.quantity, l.type_max
      FROM lines l, counted ORDER BY l.ticket_type_id"""),
    ))


COUNT_CTE = count_ctes()

# Units going back to quotas (``returned``): per quota, the units of ``{lines}`` (rows:
# ticket_type_id, quantity) of every type in it, to the row locked for it (%(quota_ids)s,
# %(shards)s: :func:`lock_return_rows`). A cancelled line, a released or reclaimed hold.
_RETURNED_CTE = """returned AS (
    UPDATE quota_stock s SET available_tickets = s.available_tickets + d.n
      FROM (SELECT qt.quota_id, sum(x.quantity)::int AS n FROM {lines} x
              JOIN quota_types qt ON qt.ticket_type_id = x.ticket_type_id GROUP BY qt.quota_id) AS d,
           unnest(%(quota_ids)s::bigint[], %(shards)s::int[]) AS r(quota_id, shard)
     WHERE s.quota_id = d.quota_id AND r.quota_id = d.quota_id AND s.shard = r.shard
    RETURNING s.quota_id
)"""

# Tickets going back: to every quota of each line's type (:data:`_RETURNED_CTE`), then off
# the customer's counters.
_GIVE_BACK_SQL = f"""
WITH back AS (
    SELECT l.ticket_type_id, l.quantity FROM unnest(%(types)s::bigint[], %(ns)s::int[]) AS l(ticket_type_id, quantity)
), {_RETURNED_CTE.format(lines="back")}, uncounted AS (
    UPDATE customer_tickets SET tickets = tickets - (SELECT sum(quantity) FROM back)
     WHERE event_id = %(event_id)s AND user_id = %(user_id)s
    RETURNING event_id
)
UPDATE customer_type_tickets ct SET tickets = ct.tickets - back.quantity
  FROM back, (SELECT count(*) FROM uncounted) AS after_event
 WHERE ct.ticket_type_id = back.ticket_type_id AND ct.user_id = %(user_id)s
"""


def give_back(
    conn: Connection, event_id: int, rows: Mapping[int, int], user_id: int, lines: Sequence[tuple[int, int]]
) -> None:
    """Return a customer's ``lines`` ((ticket_type_id, n) each) to every quota of each type,
    to the rows ``rows`` ({quota_id: shard}, :func:`lock_return_rows`), and take them off the
    customer's counters (a cancelled booking, a released hold). Call it inside the
    transaction that holds the event row's lock and those rows' (taken before the booking's
    or hold's lock, the lock order)."""
    lines = [line for line in lines if line[1] > 0]
    if not lines:
        return
    conn.execute(_GIVE_BACK_SQL, {
        "event_id": event_id, "user_id": user_id,
        "types": [t for t, _ in lines], "ns": [n for _, n in lines],
        "quota_ids": list(rows), "shards": list(rows.values()),
    })


def live_hold_sql(alias: str) -> str:
    """The hold ``alias`` counts at %(now)s: active and not expired (:func:`is_live` in SQL)."""
    return f"{alias}.status = 'active' AND {alias}.expires_at > %(now)s"


def expired_hold_sql(alias: str) -> str:
    """The hold ``alias`` is still active but expired at %(now)s: it no longer counts,
    though its tickets sit in the counts until reclaimed (:func:`reclaim_expired_holds`)."""
    return f"{alias}.status = 'active' AND {alias}.expires_at <= %(now)s"


def is_live(hold: Mapping[str, Any], now: datetime) -> bool:
    """A hold counts while it is active and ``now`` is before its ``expires_at``."""
    return bool(hold["status"] == "active" and hold["expires_at"] > now)


# Active holds past their expiry no longer count: readers add them back (the event quota's
# share: every held ticket, the event quota lists every type).
EXPIRED_HELD_SQL = f"""coalesce((SELECT sum(h.quantity) FROM holds h
     WHERE h.event_id = {{event}}.id AND {expired_hold_sql("h")}), 0)::int"""


def quota_expired_held_sql(alias: str) -> str:
    """Tickets of active-but-expired holds (at %(now)s) whose lines' types are in the quota
    ``alias`` (a quotas alias): free for readers, in the quota's rows once reclaimed."""
    return f"""coalesce((SELECT sum(hl.quantity) FROM holds h
      JOIN hold_lines hl ON hl.hold_id = h.id
      JOIN quota_types qt ON qt.ticket_type_id = hl.ticket_type_id
     WHERE qt.quota_id = {alias}.id AND h.event_id = {alias}.event_id AND {expired_hold_sql("h")}), 0)::int"""


_RECLAIM_SQL = f"""
WITH expired AS (
    UPDATE holds SET status = 'expired', closed_at = %(now)s
     WHERE holds.event_id = %(event_id)s AND {expired_hold_sql("holds")}
    RETURNING id, user_id, quantity, access_code_id
), codes_back AS (
    UPDATE access_codes a SET uses = a.uses - x.n
      FROM (SELECT access_code_id, count(*)::int AS n FROM expired
             WHERE access_code_id IS NOT NULL GROUP BY access_code_id) AS x
     WHERE a.id = x.access_code_id
    RETURNING a.id
), expired_lines AS MATERIALIZED (
    SELECT e.user_id, hl.ticket_type_id, hl.quantity FROM expired e JOIN hold_lines hl ON hl.hold_id = e.id
), {_RETURNED_CTE.format(lines="expired_lines")}, uncounted AS (
    UPDATE customer_tickets ct SET tickets = ct.tickets - e.quantity
      FROM (SELECT user_id, sum(quantity)::int AS quantity FROM expired GROUP BY user_id) e
     WHERE ct.event_id = %(event_id)s AND ct.user_id = e.user_id
    RETURNING ct.user_id
), type_uncounted AS (
    UPDATE customer_type_tickets ct SET tickets = ct.tickets - x.quantity
      FROM (SELECT user_id, ticket_type_id, sum(quantity)::int AS quantity FROM expired_lines
             GROUP BY user_id, ticket_type_id) x, (SELECT count(*) FROM uncounted) AS after_event
     WHERE ct.ticket_type_id = x.ticket_type_id AND ct.user_id = x.user_id
    RETURNING ct.user_id
)
SELECT (SELECT coalesce(sum(quantity), 0) FROM expired)::int AS freed,
       (SELECT count(*) FROM returned) AS quotas, (SELECT count(*) FROM type_uncounted) AS counters
"""

# The codes of the event's expired holds, whose uses go back with their tickets, and
# %(code_id)s (NULL: none), in id order.
_LOCK_CODES_SQL = f"""SELECT id FROM access_codes
 WHERE id IN (SELECT access_code_id FROM holds WHERE holds.event_id = %(event_id)s AND {expired_hold_sql("holds")})
    OR id = %(code_id)s
 ORDER BY id FOR NO KEY UPDATE"""


def lock_codes(conn: Connection, event_id: int, now: datetime, code_id: int | None = None) -> None:
    """Lock the codes :func:`reclaim_expired_holds` gives uses back to, and ``code_id``
    (one a grant will use), before any hold: the lock order (codes, then holds)."""
    conn.execute(_LOCK_CODES_SQL, {"event_id": event_id, "now": now, "code_id": code_id})

_CUSTOMER_SQL = f"""
SELECT (SELECT coalesce(sum(quantity), 0) FROM bookings
         WHERE event_id = %(event_id)s AND user_id = %(user_id)s AND status = 'confirmed')::int AS booked,
       (SELECT coalesce(sum(quantity), 0) FROM holds
         WHERE event_id = %(event_id)s AND user_id = %(user_id)s AND {live_hold_sql("holds")})::int AS held,
       (SELECT coalesce(sum(quantity), 0) FROM holds
         WHERE event_id = %(event_id)s AND user_id = %(user_id)s AND {expired_hold_sql("holds")})::int AS expired_held
"""

_ATTEMPTS = 3
_RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)

# A path's own wording of a rule's refusal (an expired hold's confirmation says hold_expired).
Wording = Mapping[Rule, Callable[[Gate, Ask], AppError]]


def rule_params(
    *, event_id: int, quantity: int, default_max: int | None = None, now: datetime
) -> dict[str, Any]:
    """The parameters every granting statement and gate read share.

    The one place the per-booking default is resolved: ``default_max`` None means the
    setting (callers pass it only to override it, as tests do)."""
    settings = get_settings()
    return {
        "event_id": event_id,
        "quantity": quantity,
        "default_max": settings.max_tickets_per_booking if default_max is None else default_max,
        "customer_max": settings.max_tickets_per_customer,
        "now": now,
    }


def order_params(
    params: dict[str, Any], lines: Sequence[tuple[int, int]] | None, access_code: str | None = None,
    *, code_id: int | None = None,
) -> dict[str, Any]:
    """``params`` (:func:`rule_params`) for an order: its ``lines`` ((ticket_type_id,
    quantity) each; None: ``quantity`` of the default type) and its code (in clear, or a
    code's id), with ``order``: whether the statement must be the general one
    (:func:`grant_ctes`). A type listed twice is refused (``duplicate_ticket_type``)."""
    from shared.ticketing.access_codes import digest  # access_codes imports quotas, which imports this

    if lines is not None:
        ids = [t for t, _ in lines]
        if len(set(ids)) != len(ids):
            twice = sorted({t for t in ids if ids.count(t) > 1})
            raise BadRequest("duplicate_ticket_type", "An order lists each ticket type once", ticket_type_ids=twice)
        params["quantity"] = sum(n for _, n in lines)
    params.update(
        type_ids=None if lines is None else [t for t, _ in lines],
        quantities=None if lines is None else [n for _, n in lines],
        code_digest=None if access_code is None else digest(access_code),
        code_id=code_id,
        order=lines is not None or access_code is not None or code_id is not None,
    )
    return params


def read_gate(
    conn: Connection, params: Mapping[str, Any], lock: str = "", *, expired_held: bool = True
) -> dict[str, Any] | None:
    """The event's row as the rules read it (``lock``: e.g. ``FOR NO KEY UPDATE``), with the
    tickets of its expired holds not reclaimed yet unless ``expired_held`` is False."""
    expired = f", {EXPIRED_HELD_SQL.format(event='events')} AS expired_held" if expired_held else ""
    return conn.execute(
        f"SELECT {GATE_COLUMNS}{expired} FROM events WHERE id = %(event_id)s {lock}", params
    ).fetchone()


def is_limit_check(exc: BaseException) -> bool:
    """A CHECK that keeps a count within a limit (a customer's of the event or of a type, a
    code's uses) refused a grant: a refusal to explain, not a failure."""
    return (
        isinstance(exc, psycopg.errors.CheckViolation)
        and exc.diag.constraint_name in (CUSTOMER_LIMIT_CONSTRAINT, TYPE_LIMIT_CONSTRAINT, CODE_USES_CONSTRAINT)
    )


def reclaim_expired_holds(conn: Connection, event_id: int, now: datetime) -> int:
    """Mark the event's expired holds expired and return their tickets; returns how many."""
    with conn.transaction():
        if conn.execute("SELECT 1 FROM events WHERE id = %s FOR NO KEY UPDATE", (event_id,)).fetchone() is None:
            return 0
        rows = lock_return_rows(conn, event_id)
        lock_codes(conn, event_id, now)
        row = conn.execute(_RECLAIM_SQL, {
            "event_id": event_id, "now": now, "quota_ids": list(rows), "shards": list(rows.values())}).fetchone()
    return int(row["freed"]) if row else 0


def contention() -> ServiceUnavailable:
    """Every attempt lost a race (or a deadlock): not a refusal, a retry may pass."""
    return ServiceUnavailable("contention", "The event is too busy right now; retry", retry_after=1)


# A granting statement, run on the caller's connection.
Run = Callable[[], dict[str, Any] | None]


def grant(
    conn: Connection,
    run: Run,
    *,
    params: Mapping[str, Any],
    user_id: int,
    wording: Wording | None = None,
    exact: Run | None = None,
    locked: bool = False,
) -> dict[str, Any]:
    """Run a granting statement; on refusal, take the exact path, then raise why or retry.

    The one-row statement (:data:`GRANT_CTE`) is a single autocommit round trip. When it
    grants nothing, a refusal the stock does not decide (the event, the per-booking maximum)
    is raised from a plain read, as before; otherwise the exact path locks every stock row
    (shard order) and runs :data:`GRANT_EXACT_CTE` in a savepoint: it takes across rows if
    their sum suffices, else the rules say why under that lock. ``locked``: the caller's
    transaction already holds every stock row (and the event row): the exact path only.
    Only expired holds in the way pay for reclaiming them (after the locks are released).
    ``run``: the statement on :data:`GRANT_CTE`; ``exact``: the same on :data:`GRANT_EXACT_CTE`
    (None: ``run`` is that one, as with ``locked``).
    """
    exact = exact or run
    wording = wording or {}
    for _ in range(_ATTEMPTS):
        if not locked:
            try:
                row = _attempt(run)
            except _RETRYABLE:
                continue
            if row is not None:
                return row
            closed = _gate_refusal(conn, params, wording)
            if closed is not None:
                raise closed
        try:
            with conn.transaction():
                if not locked:
                    lock_stock(conn, params["event_id"])
                try:
                    row = _attempt(exact, conn)
                except _RETRYABLE:
                    row = None
                if row is not None:
                    return row
                refused, reclaim = _why_refused(conn, params, user_id, wording)
        except _RETRYABLE:
            # Chosen as a deadlock's victim while taking the rows' locks (the transaction is
            # rolled back, nothing was taken): try again, as the one-row statement does.
            if locked:
                raise
            continue
        if refused is not None:
            raise refused from None
        if reclaim:
            reclaim_expired_holds(conn, params["event_id"], params["now"])
    raise contention()


def _attempt(run: Run, savepoint: Connection | None = None) -> dict[str, Any] | None:
    """One granting statement; a refused limit CHECK (:func:`is_limit_check`) is a refusal (None).
    ``savepoint``: run it in one on that connection, so a refusal undoes only the statement."""
    try:
        if savepoint is None:
            return run()
        with savepoint.transaction():
            return run()
    except psycopg.errors.CheckViolation as exc:
        if not is_limit_check(exc):
            raise
        return None


def _gate_refusal(conn: Connection, params: Mapping[str, Any], wording: Wording) -> AppError | None:
    """Why the event refuses the request whatever its stock (missing, cancelled, ended, too many)."""
    event = read_gate(conn, params, expired_held=False)
    ask = Ask.of(params)
    failed = first_failed(event, ask, GATE_RULES)
    return None if failed is None else wording.get(failed, failed.refusal)(event or {}, ask)


def _why_refused(
    conn: Connection, params: Mapping[str, Any], user_id: int, wording: Wording
) -> tuple[AppError | None, bool]:
    """After the exact path refused, under the lock of every stock row: the rule's refusal,
    or None once a retry may pass, and whether expired holds must be reclaimed first.

    The rules are walked in order (:func:`judge`), the customer's tickets counted only once
    the event's, the lines' and the quotas' rules pass. Expired holds still sit in the
    quotas' and the counters' counts until reclaimed: when they alone stand in the way, say
    reclaim them (the whole event's, one transaction) and retry.
    """
    event = read_gate(conn, params)
    ask = Ask.of(params)
    failed = first_failed(event, ask, GATE_RULES)
    if failed is not None:
        return wording.get(failed, failed.refusal)(event or {}, ask), False
    assert event is not None
    order = read_order(conn, params, user_id)
    refused = judge(event, ask, order, wording)
    if refused is not None:
        return refused, False
    expired_in_the_way = any(
        q["available"] < order.demand(q) <= q["available"] + q["expired_held"] for q in order.quotas)
    code_in_the_way = order.uses_code and order.code is not None and order.code["uses"] >= order.code["max_uses"]
    return None, bool(order.expired_held or expired_in_the_way or code_in_the_way)


@dataclass
class Order:
    """An order as the rules judge it, read under the stock rows' locks (:func:`read_order`)."""

    lines: list[Line]
    types: dict[int, TicketType]  # the event's types the order names
    code: dict[str, Any] | None  # its usable code (id, uses, max_uses, unlocks), if it names one
    code_named: bool
    quotas: list[dict[str, Any]]  # id, name, is_event, available, expired_held, type_ids
    booked: int = 0  # the customer's tickets of the event in confirmed bookings
    held: int = 0  # in live holds
    expired_held: int = 0  # in active holds past their expiry (not reclaimed yet)
    per_type: dict[int, int] | None = None  # the customer's booked plus live held, per type

    @property
    def unlocked(self) -> frozenset[int]:
        return frozenset(self.code["unlocks"]) if self.code else frozenset()

    @property
    def uses_code(self) -> bool:
        """Whether the order uses its code: some line's type is one the code unlocks (:data:`_CODE_NEEDED`)."""
        return any(line.ticket_type_id in self.unlocked for line in self.lines)

    def demand(self, quota: Mapping[str, Any]) -> int:
        return sum(line.quantity for line in self.lines if line.ticket_type_id in quota["type_ids"])


_ORDER_TYPES_SQL = f"""SELECT {TYPE_COLUMNS}, is_default FROM ticket_types
 WHERE event_id = %(event_id)s
   AND (id = ANY(%(type_ids)s::bigint[]) OR (%(type_ids)s::bigint[] IS NULL AND is_default))"""

# The order's code as the diagnosis reads it: with its uses, and how many of them are
# expired holds' (they come back when those are reclaimed).
_ORDER_CODE_COLUMNS = f""", a.uses, a.max_uses,
       (SELECT count(*) FROM holds h WHERE h.access_code_id = a.id AND {expired_hold_sql("h")})::int AS expired_uses"""

_ORDER_QUOTAS_SQL = f"""SELECT q.id, q.name, q.is_event, {QUOTA_AVAILABLE_SQL.format(quota="q")} AS available,
       {quota_expired_held_sql("q")} AS expired_held, array_agg(qt.ticket_type_id) AS type_ids
  FROM quotas q JOIN quota_types qt ON qt.quota_id = q.id
 WHERE q.event_id = %(event_id)s
 GROUP BY q.id ORDER BY q.id"""

_CUSTOMER_TYPES_SQL = f"""SELECT t.id,
       (SELECT coalesce(sum(bl.quantity), 0) FROM booking_lines bl JOIN bookings b ON b.id = bl.booking_id
         WHERE bl.ticket_type_id = t.id AND b.user_id = %(user_id)s AND b.status = 'confirmed')::int
     + (SELECT coalesce(sum(hl.quantity), 0) FROM hold_lines hl JOIN holds h ON h.id = hl.hold_id
         WHERE hl.ticket_type_id = t.id AND h.user_id = %(user_id)s AND {live_hold_sql("h")})::int AS has
  FROM ticket_types t WHERE t.id = ANY(%(ids)s::bigint[])"""


def read_quotas(conn: Connection, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The event's quotas (``params["event_id"]``) with their free tickets and types, by id."""
    return [dict(q) for q in conn.execute(_ORDER_QUOTAS_SQL, params).fetchall()]


def read_order(conn: Connection, params: Mapping[str, Any], user_id: int | None) -> Order:
    """The order of a granting statement's parameters, with what the rules read for it:
    its types, its code, the event's quotas and (``user_id``) the customer's tickets."""
    p = {"type_ids": None, "quantities": None, "code_digest": None, "code_id": None, **params}
    types: dict[int, TicketType] = {t["id"]: t for t in conn.execute(_ORDER_TYPES_SQL, p).fetchall()}
    if p["type_ids"] is None:
        default = next((t for t in types.values() if t["is_default"]), None)
        lines = [] if default is None else [Line(default["id"], p["quantity"])]
    else:
        lines = [Line(t, n) for t, n in zip(p["type_ids"], p["quantities"], strict=True)]
    named = p["code_digest"] is not None or p["code_id"] is not None
    code = conn.execute(_code_sql(_ORDER_CODE_COLUMNS), p).fetchone() if named else None
    order = Order(lines, types, code, named, read_quotas(conn, p))
    if user_id is not None:
        mine = conn.execute(_CUSTOMER_SQL, {**p, "user_id": user_id}).fetchone()
        assert mine is not None
        order.booked, order.held, order.expired_held = mine["booked"], mine["held"], mine["expired_held"]
        ids = [line.ticket_type_id for line in lines]
        order.per_type = {r["id"]: r["has"] for r in conn.execute(_CUSTOMER_TYPES_SQL, {**p, "user_id": user_id,
                                                                                          "ids": ids}).fetchall()}
    return order


def judge(
    event: Gate, ask: Ask, order: Order, wording: Wording | None = None, *, limits: bool = True
) -> AppError | None:
    """Why the rules after the event's own refuse ``order``, in their order, or None: its
    code's validity, each line rule, the code's uses, each quota's room (its free tickets:
    ``available``, plus ``expired_held`` when the caller counts those as free), then the
    customer's limits (``limits``; read in ``order``)."""
    from shared.ticketing.access_codes import invalid  # access_codes imports quotas, which imports this

    wording = wording or {}
    if order.code_named and order.code is None:
        return invalid()
    refused = line_refusal(order.types, order.lines, ask.now, order.unlocked)
    if refused is not None:
        return refused
    # Expired holds' uses come back when they are reclaimed: they count as free, like their tickets.
    if (order.uses_code and order.code is not None
            and order.code["uses"] - order.code.get("expired_uses", 0) >= order.code["max_uses"]):
        return Conflict("access_code_exhausted", "This access code has been used as often as it may",
                        max_uses=order.code["max_uses"])
    for quota in order.quotas:
        demand = order.demand(quota)
        free = quota["available"] + quota["expired_held"]
        if demand > free:
            short = replace(ask, quantity=demand, available=free)
            shortage = wording.get(TICKETS_LEFT, _shortage)(event, short)
            shortage.details.update(
                quota_id=quota["id"], quota=quota["name"],
                ticket_type_id=next(line.ticket_type_id for line in order.lines
                                    if line.ticket_type_id in quota["type_ids"]))
            if not quota["is_event"]:
                shortage.message = shortage.message.replace(f"for event {ask.event_id}", f"in {quota['name']!r}")
            return shortage
    if not limits:
        return None
    mine = replace(ask, booked=order.booked, held=order.held)
    if not WITHIN_CUSTOMER_LIMIT.passes(event, mine):
        return wording.get(WITHIN_CUSTOMER_LIMIT, WITHIN_CUSTOMER_LIMIT.refusal)(event, mine)
    for line in order.lines:
        limit = order.types[line.ticket_type_id]["max_per_customer"]
        has = (order.per_type or {}).get(line.ticket_type_id, 0)
        if limit is not None and has + line.quantity > limit:
            return type_limit(order.types[line.ticket_type_id], line, limit, has)
    return None


def type_limit(t: TicketType, line: Line, limit: int, has: int) -> AppError:
    """A line past its type's per-customer limit (judged after the line rules: the type is
    visible or unlocked by the order's code, so its name may be told)."""
    return BadRequest(
        "type_limit_exceeded",
        f"One customer may have at most {tickets(limit)} of {t['name']!r} "
        f"(booked and held); you have {has}",
        ticket_type_id=line.ticket_type_id,
        limit=limit,
        has=has,
        requested=line.quantity,
    )


def _json_time(value: datetime) -> str:
    """A UTC time as the API writes every other one (``...Z``, like the response models)."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
