"""One table of scenarios, every granting path: the same rules give the same answers.

Tickets are granted by a one-statement booking (``bookings.book``), a coalesced batch
(``bookings.book_batch``, alone or among other requests, and end to end through an event's
lane), a hold, and the confirmation of a hold (live or expired). The rules are written once
(``shared/ticketing/inventory.py``); this table drives every scenario, each refusal code and
grants, through every path and requires the same outcome, code and details everywhere.
The differences are the rules' own: a batch leaves what it does not grant to the
one-request path (``None``), a live hold's tickets were granted when it was made (its
confirmation re-checks only the event), and an expired hold says ``hold_expired`` where a
booking would hear ``sold_out`` or ``insufficient_tickets``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import shared.platform.clock
from shared.platform import metrics
from shared.platform.errors import AppError
from shared.ticketing import bookings, coalescing, events, holds
from shared.ticketing.inventory import EVENT_RULES, REFUSAL_CODES, RULES, TICKETS_LEFT
from tests.support.clients import HttpClient
from tests.support.clock import FakeClock
from tests.support.event_loop import run_on_new_loop
from tests.support.factories import account
from tests.support.tickets import customer_counter, customer_taken, pool_adds_up, ticket_pool

TOTAL = 20
DEFAULT_MAX = 10  # the server's per-booking maximum, as the routes pass it
MISSING_EVENT = 10**12
TOO_MANY = 10_000  # a companion request no rule lets through; it changes nothing
EVENT_QUOTA = "Event capacity"  # the name of every event's event quota


NOW = datetime.now(UTC).replace(microsecond=0)  # where every run's clock starts
SALES_END = NOW + timedelta(hours=2)  # the events' start; they have no end


@dataclass
class World:
    """One run: a fresh event, its organizer, the customer who asks and a rival customer."""

    clock: FakeClock
    organizer: int
    me: int
    rival: int
    event_id: int = 0
    hold_id: int = 0  # the hold a confirmation path confirms
    also_taken: int = 0  # tickets a path granted to other requests than the scenario's


def _nothing(world: World) -> None:
    pass


def _missing(world: World) -> None:
    world.event_id = MISSING_EVENT


def _cancel(world: World) -> None:
    events.cancel_event(event_id=world.event_id, organizer_id=world.organizer)


def _end(world: World) -> None:
    world.clock.advance(3 * 3600)


def _set(**changes: Any) -> Callable[[World], None]:
    def change(world: World) -> None:
        events.update_event(event_id=world.event_id, organizer_id=world.organizer, changes=changes)

    return change


def _free(world: World) -> int:
    """What a reader sees as available (expired holds count as free)."""
    return int(events.get_event(world.event_id)["available_tickets"])


def _leave(n: int) -> Callable[[World], None]:
    """The rival books every free ticket but ``n``."""

    def change(world: World) -> None:
        bookings.book(user_id=world.rival, event_id=world.event_id, quantity=_free(world) - n, default_max=1000)

    return change


def _rival_holds_all_then_they_expire(world: World) -> None:
    holds.create_hold(user_id=world.rival, event_id=world.event_id, quantity=_free(world), ttl_seconds=60,
                      default_max=1000)
    world.clock.advance(61)


def _my_hold_expired(quantity: int) -> Callable[[World], None]:
    def before(world: World) -> None:
        holds.create_hold(user_id=world.me, event_id=world.event_id, quantity=quantity, ttl_seconds=60)
        world.clock.advance(61)

    return before


def _i_booked_and_hold(booked: int, held: int) -> Callable[[World], None]:
    def before(world: World) -> None:
        bookings.book(user_id=world.me, event_id=world.event_id, quantity=booked, default_max=DEFAULT_MAX)
        holds.create_hold(user_id=world.me, event_id=world.event_id, quantity=held, ttl_seconds=3600)

    return before


@dataclass(frozen=True)
class Scenario:
    """A request of ``quantity`` tickets by one customer, and what every path must answer.

    ``before`` happens first (on hold paths: before the hold is made), ``change`` after the
    hold is made (on other paths: right before the request). ``code`` None: granted;
    ``reclaims``: granted once expired holds in the way are reclaimed.
    """

    name: str
    quantity: int
    code: str | None
    details: dict[str, Any] = field(default_factory=dict)
    event: dict[str, Any] = field(default_factory=dict)
    before: Callable[[World], None] = _nothing
    change: Callable[[World], None] = _nothing
    reclaims: bool = False


SCENARIOS = [
    Scenario("granted", 2, None),
    Scenario("the last tickets", 3, None, change=_leave(3)),
    Scenario("the per-booking maximum", 3, None, event={"max_tickets_per_booking": 3}),
    Scenario("others' expired holds give their tickets back", 3, None, change=_rival_holds_all_then_they_expire,
             reclaims=True),
    Scenario("my expired hold stops counting against my limit", 3, None,
             event={"max_tickets_per_customer": 4}, before=_my_hold_expired(2), reclaims=True),
    Scenario("event missing", 3, "event_not_found", change=_missing),
    Scenario("event cancelled", 3, "event_cancelled", change=_cancel),
    Scenario("event ended", 3, "event_ended", {"ended_at": SALES_END.isoformat().replace("+00:00", "Z")},
             change=_end),
    Scenario("above the per-booking maximum", 3, "quantity_too_large", {"max_quantity": 2},
             change=_set(max_tickets_per_booking=2)),
    Scenario("sold out", 3, "sold_out", {"available": 0, "quota": EVENT_QUOTA}, change=_leave(0)),
    Scenario("not enough left", 3, "insufficient_tickets", {"available": 2, "requested": 3, "quota": EVENT_QUOTA},
             change=_leave(2)),
    Scenario("above the customer limit", 3, "customer_limit_exceeded",
             {"limit": 6, "booked": 2, "held": 2, "requested": 3},
             event={"max_tickets_per_customer": 10}, before=_i_booked_and_hold(2, 2),
             change=_set(max_tickets_per_customer=6)),
]

# -- the paths ---------------------------------------------------------------------------------

# An outcome: ("granted", tickets) or ("left", None) from a batch, else (code, details).
Outcome = tuple[str, Any]
# Ids differ from run to run: a refusal's details are compared without them.
_RUN_IDS = ("quota_id", "ticket_type_id")


def _refused(err: AppError) -> Outcome:
    return err.code, {k: v for k, v in err.details.items() if k not in _RUN_IDS}


def _outcome(call: Callable[[], Any]) -> Outcome:
    try:
        row = call()
    except AppError as err:
        return _refused(err)
    return ("left", None) if row is None else ("granted", row["quantity"])


def _book(world: World, scenario: Scenario) -> Outcome:
    return _outcome(lambda: bookings.book(user_id=world.me, event_id=world.event_id, quantity=scenario.quantity,
                                          default_max=DEFAULT_MAX))


def _batch_alone(world: World, scenario: Scenario) -> Outcome:
    item = bookings.BatchItem(user_id=world.me, quantity=scenario.quantity)
    return _outcome(lambda: bookings.book_batch(event_id=world.event_id, items=[item], default_max=DEFAULT_MAX)[0])


def _batch_among_others(world: World, scenario: Scenario) -> Outcome:
    """After a request that is not granted (it takes nothing), before one that may be."""
    items = [bookings.BatchItem(user_id=world.rival, quantity=TOO_MANY),
             bookings.BatchItem(user_id=world.me, quantity=scenario.quantity),
             bookings.BatchItem(user_id=world.rival, quantity=1)]
    first, mine, last = bookings.book_batch(event_id=world.event_id, items=items, default_max=DEFAULT_MAX)
    assert first is None
    world.also_taken = 0 if last is None else 1
    return _outcome(lambda: mine)


def _batches() -> tuple[float, float]:
    count = metrics.REGISTRY.get_sample_value("ticketing_booking_batch_size_count") or 0.0
    total = metrics.REGISTRY.get_sample_value("ticketing_booking_batch_size_sum") or 0.0
    return count, total


def _lane(world: World, scenario: Scenario) -> Outcome:
    """End to end through an event's lane: the request shares a batch with a companion, and
    goes down the one-request path if the batch leaves it."""
    lanes = coalescing.Coalescer()

    async def both() -> list[Any]:
        return await asyncio.gather(
            lanes.book(user_id=world.me, event_id=world.event_id, quantity=scenario.quantity,
                       default_max=DEFAULT_MAX),
            lanes.book(user_id=world.rival, event_id=world.event_id, quantity=TOO_MANY, default_max=DEFAULT_MAX),
            return_exceptions=True,
        )

    before = _batches()
    mine, companion = run_on_new_loop(both())
    count, total = _batches()
    assert (count - before[0], total - before[1]) == (1, 2), "the two requests did not share one batch"
    assert isinstance(companion, AppError)  # refused, whatever the scenario: it took nothing
    if isinstance(mine, AppError):
        return _refused(mine)
    assert not isinstance(mine, BaseException), mine
    return "granted", mine["quantity"]


def _hold(world: World, scenario: Scenario) -> Outcome:
    return _outcome(lambda: holds.create_hold(user_id=world.me, event_id=world.event_id,
                                              quantity=scenario.quantity, ttl_seconds=None,
                                              default_max=DEFAULT_MAX))


def _confirm(world: World, scenario: Scenario) -> Outcome:
    return _outcome(lambda: holds.confirm_hold(hold_id=world.hold_id, user_id=world.me, default_max=DEFAULT_MAX)[0])


@dataclass(frozen=True)
class GrantPath:
    name: str
    ask: Callable[[World, Scenario], Outcome]
    expect: Callable[[Scenario], Outcome]
    takes: bool = True  # a grant takes the tickets from the pool (a live hold's were taken)
    hold_ttl: int | None = None  # confirmation paths: the lifetime of the hold made first (0: default)
    expire_hold: bool = False


def _answer(scenario: Scenario) -> Outcome:
    return ("granted", scenario.quantity) if scenario.code is None else (scenario.code, scenario.details)


def _batch_answer(scenario: Scenario) -> Outcome:
    """A batch grants what the one-request path would, and leaves the rest to it (expired
    holds in the way too: that path reclaims them)."""
    return ("granted", scenario.quantity) if scenario.code is None and not scenario.reclaims else ("left", None)


def _live_hold_answer(scenario: Scenario) -> Outcome:
    """The hold's tickets were granted when it was made: only the event's rules refuse."""
    event_codes = {code for rule in EVENT_RULES for code in rule.codes}
    return _answer(scenario) if scenario.code in event_codes else ("granted", scenario.quantity)


def _expired_hold_answer(scenario: Scenario) -> Outcome:
    """Its tickets are granted again under every rule; a shortage reads ``hold_expired``."""
    if scenario.code in TICKETS_LEFT.codes:
        return "hold_expired", {"available": scenario.details["available"], "requested": scenario.quantity,
                                "quota": EVENT_QUOTA}
    return _answer(scenario)


PATHS = [
    GrantPath("book", _book, _answer),
    GrantPath("batch alone", _batch_alone, _batch_answer),
    GrantPath("batch among others", _batch_among_others, _batch_answer),
    GrantPath("lane", _lane, _answer),
    GrantPath("hold", _hold, _answer),
    GrantPath("confirm live hold", _confirm, _live_hold_answer, takes=False, hold_ttl=0),
    GrantPath("confirm expired hold", _confirm, _expired_hold_answer, hold_ttl=60, expire_hold=True),
]


# -- the run -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def people(http_client: HttpClient) -> dict[str, int]:
    return {role: account(http_client, "organizer" if role == "organizer" else "customer")[0]["id"]
            for role in ("organizer", "me", "rival")}


def _counters_agree(sql: Any, event_id: int, user_id: int) -> None:
    """The customer's counter is their booked plus active held tickets; the pool adds up."""
    assert (customer_counter(sql, event_id, user_id) or 0) == customer_taken(sql, event_id, user_id)
    pool = ticket_pool(sql, event_id)
    assert pool["total"] == TOTAL and pool_adds_up(pool), pool


# Every scenario through every path, except a hold on an event that does not exist (none can).
CASES = [
    pytest.param(scenario, path, id=f"{scenario.name}-{path.name}")
    for scenario in SCENARIOS
    for path in PATHS
    if not (path.hold_ttl is not None and scenario.code == "event_not_found")
]


@pytest.mark.parametrize(("scenario", "path"), CASES)
def test_every_path_answers_each_scenario_alike(
    scenario: Scenario, path: GrantPath, people: dict[str, int], sql: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock(start=NOW)
    monkeypatch.setattr(shared.platform.clock, "now", clock.now)
    world = World(clock, people["organizer"], people["me"], people["rival"])
    fields = {"title": scenario.name, "total_tickets": TOTAL, "start_time": SALES_END, **scenario.event}
    world.event_id = events.create_event(organizer_id=world.organizer, fields=fields)["id"]

    # GIVEN the scenario's state (on hold paths, a hold of the request's size made before its change)
    scenario.before(world)
    if path.hold_ttl is not None:
        world.hold_id = holds.create_hold(user_id=world.me, event_id=world.event_id, quantity=scenario.quantity,
                                          ttl_seconds=path.hold_ttl or None)["id"]
        if path.expire_hold:
            clock.advance(path.hold_ttl + 1)
    scenario.change(world)
    exists = world.event_id != MISSING_EVENT
    free = _free(world) if exists else 0

    # WHEN the request takes this path
    outcome = path.ask(world, scenario)

    # THEN it gets the table's answer, and the pool gave exactly what was granted
    assert outcome == path.expect(scenario)
    if exists:
        granted = scenario.quantity if outcome[0] == "granted" and path.takes else 0
        assert free - _free(world) == granted + world.also_taken
        for user_id in (world.me, world.rival):
            _counters_agree(sql, world.event_id, user_id)


def test_the_table_covers_every_rule_and_refusal_code() -> None:
    # The orders' own codes (types, quotas, codes, type limits) have their table in test_order_lines.
    from tests.ticketing.test_order_lines import SCENARIOS as ORDER_SCENARIOS

    codes = {scenario.code for scenario in SCENARIOS} | {scenario.code for scenario in ORDER_SCENARIOS}
    assert set(REFUSAL_CODES) <= codes, set(REFUSAL_CODES) - codes
    event_codes = [code for rule in RULES for code in rule.codes]
    assert list(REFUSAL_CODES)[: len(event_codes)] == event_codes
    assert None in codes  # and grants


def test_every_refusal_code_is_documented(http_client: HttpClient) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    openapi = http_client.request("GET", "/openapi.json").json()
    for route in ("/bookings", "/events/{event_id}/holds"):
        described = " ".join(r.get("description", "") for r in openapi["paths"][route]["post"]["responses"].values())
        for code in REFUSAL_CODES:
            assert f"`{code}`" in described, (route, code)
            assert f"`{code}`" in readme, code
