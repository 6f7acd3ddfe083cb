"""Coalescing concurrent bookings of one event into one transaction (long-running servers).

During an on-sale rush every booking updates one of the event's few stock rows, so
transactions contend for them and each pays its own commit. Here a server process keeps at most one
transaction per event in flight: bookings that arrive while it runs wait in the event's
lane (cheap, in memory) and go together in the next one, which locks the stock rows once,
inserts every booking with its outbox row and idempotent answer in one statement, and
commits once (:func:`shared.ticketing.bookings.book_batch`). An idle lane starts at once, so a
lone booking waits for nothing.

Each request still gets its own booking and its own answer. A request the batch does not
grant (not enough tickets left for it, an event that is missing or cancelled, a database
error before COMMIT) runs the ordinary one-request path, which decides it exactly and
says why; so sold-out stays exact and every refusal reads as before. A failure AT commit
is never retried (the bookings may exist): those requests hear 503, and a keyed retry
learns the outcome. A request whose client went away before its turn is dropped unbooked;
one that waited ``BOOKING_LANE_WAIT_SECONDS`` hears 503 ``contention``, unbooked, at that
deadline even while the lane's transaction is stuck (a timer per waiter). A transaction
cut off by the database deadline (:mod:`shared.platform.db`) ends the lane's turn: before COMMIT
its requests hear 503 unbooked (never retried one by one against a database that just
failed to answer), at COMMIT the unknown-outcome 503 (its key stays leased).

Lanes live on the server's event loop; the batch runs on a worker thread. Under Lambda
(one request per environment) nothing is coalesced, and the booking runs where the request's
``offload`` says (on Mangum's loop itself: :mod:`shared.platform.threads`). :func:`book` is
the entry that chooses.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.platform import metrics
from shared.platform.db import OutcomeUnknown
from shared.platform.errors import ServiceUnavailable
from shared.platform.settings import get_settings, running_in_lambda
from shared.platform.threads import Offload, in_thread, serves_one_request
from shared.ticketing import bookings
from shared.ticketing.idempotency import KeyLease, release, settle_failure
from shared.ticketing.inventory import TICKETS_LEFT, contention

log = logging.getLogger(__name__)

# Bookings refused for lack of tickets are counted by code; metrics cannot import the rules,
# so they are declared here, in the module every booking API imports (bookings itself is
# also imported by the relay, whose package carries no metrics client).
metrics.count_booking_refusals(TICKETS_LEFT.codes)


def enabled(scope: Mapping[str, Any] | None = None) -> bool:
    """Coalesce in long-running servers; never for a request that came as a Lambda event.

    Mangum puts the event in the ASGI scope, so the emulator and the handler tests take
    the Lambda path too, even where ``AWS_LAMBDA_FUNCTION_NAME`` is not set.
    """
    if not get_settings().booking_coalesce or running_in_lambda():
        return False
    return not serves_one_request(scope)


async def book(
    *,
    user_id: int,
    event_id: int,
    quantity: int,
    lanes: bool,
    lines: Sequence[tuple[int, int]] | None = None,
    access_code: str | None = None,
    offload: Offload = in_thread,
    idempotency: KeyLease | None = None,
) -> dict[str, Any]:
    """Book through the event's lane (``lanes``: see :func:`enabled`) or alone through ``offload``
    (a worker thread; under Mangum the loop itself, :func:`shared.platform.threads.offload_for`).

    The entry of every booking request, counted in the booking metrics. Async, so a booking
    in a lane costs no thread-pool hop and a keyed one holds no thread while it waits.
    """
    tickets = quantity if lines is None else sum(n for _, n in lines)
    with metrics.counting_booking(tickets):
        # An order with a code goes alone: its code's use and its guesses are the statement's.
        if lanes and access_code is None:
            return await coalescer().book(
                user_id=user_id, event_id=event_id, quantity=quantity, lines=lines, idempotency=idempotency
            )
        return await offload(
            bookings.book, user_id=user_id, event_id=event_id, quantity=quantity, lines=lines,
            access_code=access_code, idempotency=idempotency,
        )


class _Waiter:
    """A booking in a lane: what it asks, where its answer goes, the timer that ends its wait."""

    __slots__ = ("deadline", "done", "expired", "item", "timer")

    def __init__(self, item: bookings.BatchItem, done: asyncio.Future[dict[str, Any] | None], deadline: float) -> None:
        self.item = item
        self.done = done
        self.deadline = deadline
        self.timer: asyncio.TimerHandle | None = None
        self.expired = False

    def expire(self) -> None:
        """At its deadline, still not taken into a transaction: 503 ``contention``, unbooked."""
        if not self.done.done():
            self.expired = True
            self.done.set_exception(contention())


@dataclass
class _Lane:
    """Bookings of one event waiting for the next transaction; ``busy`` while one runs."""

    waiting: list[_Waiter] = field(default_factory=list)
    busy: bool = False


def _outcome_unknown() -> OutcomeUnknown:
    return OutcomeUnknown(
        "database_unavailable",
        "The database failed while committing; the booking may have been made (see GET /bookings). "
        "A retry with the same Idempotency-Key replays it if so",
        retry_after=2,
    )


def _not_booked() -> ServiceUnavailable:
    return ServiceUnavailable("database_unavailable", "The database did not answer in time; nothing was booked")


class _Unknown:
    """The outcome of a batch that failed at COMMIT (or was cut off): its bookings may exist."""


_UNKNOWN = _Unknown()
_Outcome = dict[str, Any] | None | BaseException | _Unknown


class Coalescer:
    """The lanes of one event loop, one per event with bookings in flight."""

    def __init__(self) -> None:
        self._lanes: dict[int, _Lane] = {}
        self._tasks: set[asyncio.Future[Any]] = set()  # referenced until done

    async def book(
        self,
        *,
        user_id: int,
        event_id: int,
        quantity: int,
        default_max: int | None = None,
        idempotency: KeyLease | None = None,
        lines: Sequence[tuple[int, int]] | None = None,
    ) -> dict[str, Any]:
        """Book like :func:`shared.ticketing.bookings.book`, sharing a transaction with concurrent bookings.

        ``default_max`` (None: the setting) applies to the lane's whole turn it starts."""
        loop = asyncio.get_running_loop()
        item = bookings.BatchItem(user_id=user_id, quantity=quantity, idempotency=idempotency, lines=lines)
        done: asyncio.Future[dict[str, Any] | None] = loop.create_future()
        lane = self._lanes.setdefault(event_id, _Lane())
        waiter = _Waiter(item, done, loop.time() + get_settings().booking_lane_wait_seconds)
        waiter.timer = loop.call_at(waiter.deadline, waiter.expire)
        lane.waiting.append(waiter)
        if not lane.busy:
            lane.busy = True
            task = asyncio.create_task(self._drain(event_id, lane, default_max))
            self._tasks.add(task)  # a task nobody references may be collected mid-run
            task.add_done_callback(self._tasks.discard)
        row = await done
        if row is not None:
            return row
        # Not granted in a batch: the one-request path decides. Shielded, so a request
        # that goes away meanwhile still gets its key settled when the booking ends.
        work = self._start(
            _book_alone(item, event_id, default_max),
            _retrieved,  # its outcome (a refusal too) is this request's, raised below
        )
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            if not work.done():
                work.add_done_callback(functools.partial(self._settle_abandoned, item))
            raise

    async def _drain(self, event_id: int, lane: _Lane, default_max: int | None) -> None:
        """Run the lane's transactions one after another until nobody is waiting."""
        loop = asyncio.get_running_loop()
        try:
            while lane.waiting:
                limit = get_settings().booking_batch_max
                taken, lane.waiting = lane.waiting[:limit], lane.waiting[limit:]
                now = loop.time()
                batch = [(w.item, w.done) for w in taken if self._still_waiting(w, now)]
                if not batch:
                    continue
                if len(batch) == 1:  # alone: the one-statement path is cheaper than a batch
                    item, done = batch[0]
                    work = self._start(
                        _book_alone(item, event_id, default_max), functools.partial(self._answer_alone, item, done)
                    )
                else:
                    call = functools.partial(
                        bookings.book_batch, event_id=event_id, items=[i for i, _ in batch], default_max=default_max
                    )
                    work = self._start(call, functools.partial(self._answer_batch, batch))
                    metrics.booking_batch(len(batch))
                # The callbacks answer even if this task is cancelled meanwhile: a thread
                # that commits bookings must not leave their requesters without an answer.
                await asyncio.wait([work])
        finally:
            # Only reached with bookings still waiting when cancelled (the loop shutting
            # down): they never reached the database and go the one-request way.
            for waiter in lane.waiting:
                if waiter.timer is not None:
                    waiter.timer.cancel()
                if not waiter.expired:
                    self._deliver(waiter.item, waiter.done, None)
            lane.waiting = []
            lane.busy = False
            if self._lanes.get(event_id) is lane:
                del self._lanes[event_id]

    def _start(
        self, call: Callable[[], Any], answer: Callable[[asyncio.Future[Any]], None] | None = None
    ) -> asyncio.Future[Any]:
        """Run ``call`` on a worker thread; ``answer`` hands out its outcome when it ends."""
        work = asyncio.ensure_future(in_thread(call))
        self._tasks.add(work)
        work.add_done_callback(self._tasks.discard)
        work.add_done_callback(answer or _consume)
        return work

    def _still_waiting(self, waiter: _Waiter, now: float) -> bool:
        """Drop requests that went away; refuse, unbooked, those that waited too long."""
        if waiter.timer is not None:
            waiter.timer.cancel()  # taken: its wait is over either way
        if waiter.expired:  # already answered 503 contention by its timer
            return False
        if waiter.done.done():  # cancelled: the client went away or the server is stopping
            self._deliver(waiter.item, waiter.done, None)  # never reached the database: frees its key
            return False
        if now > waiter.deadline:  # due, its timer not run yet
            waiter.expire()
            return False
        return True

    def _answer_alone(
        self, item: bookings.BatchItem, done: asyncio.Future[dict[str, Any] | None], work: asyncio.Future[Any]
    ) -> None:
        if work.cancelled():  # the loop is stopping; the thread may still book
            done.cancel()
        else:
            self._deliver(item, done, work.exception() or work.result())

    def _answer_batch(
        self, batch: list[tuple[bookings.BatchItem, asyncio.Future[dict[str, Any] | None]]], work: asyncio.Future[Any]
    ) -> None:
        if work.cancelled():  # the loop is stopping; the thread may still commit
            for _, done in batch:
                done.cancel()
            return
        exc = work.exception()
        outcomes: list[_Outcome]
        if isinstance(exc, bookings.BatchNotWritten) and isinstance(exc.__cause__, ServiceUnavailable):
            # The database did not answer (deadline, pool timeout) before COMMIT: nothing was
            # written, and one by one would only wait for it again. 503 unbooked, keys freed.
            log.error("coalesced booking batch failed before commit, nothing written: %s", exc.__cause__.code)
            outcomes = [_not_booked() for _ in batch]
        elif isinstance(exc, bookings.BatchNotWritten):
            # Nothing was written; each request tries alone and meets the error itself.
            log.warning("coalesced booking batch failed before commit; booking one by one", exc_info=exc)
            outcomes = [None] * len(batch)
        elif exc is not None:
            log.error("coalesced booking batch failed at commit; outcome unknown", exc_info=exc)
            outcomes = [_UNKNOWN] * len(batch)
        else:
            outcomes = list(work.result())
        for (item, done), outcome in zip(batch, outcomes, strict=True):
            self._deliver(item, done, outcome)

    def _deliver(
        self, item: bookings.BatchItem, done: asyncio.Future[dict[str, Any] | None], outcome: _Outcome
    ) -> None:
        """Hand a request its outcome; if it went away, settle its key in its place."""
        if done.done():
            self._settle_for_gone(item, outcome)
        elif isinstance(outcome, _Unknown):
            done.set_exception(_outcome_unknown())
        elif isinstance(outcome, BaseException):
            done.set_exception(outcome)
        else:
            done.set_result(outcome)

    def _settle_for_gone(self, item: bookings.BatchItem, outcome: _Outcome) -> None:
        """Do for a request that went away what it would have done with its outcome's key."""
        lease = item.idempotency
        if lease is None or isinstance(outcome, _Unknown | dict):
            return  # no key; or the statement that booked it completed the key (or may have)
        if outcome is None:  # never booked: the key is free for a retry
            self._start(functools.partial(release, lease))
        else:  # the refusal (stored) or failure (key freed) it would have heard
            self._start(functools.partial(settle_failure, lease, outcome))

    def _settle_abandoned(self, item: bookings.BatchItem, work: asyncio.Future[Any]) -> None:
        """The one-request path ended after its requester went away."""
        if not work.cancelled() and (exc := work.exception()) is not None:
            self._settle_for_gone(item, exc)


def _book_alone(item: bookings.BatchItem, event_id: int, default_max: int | None) -> Callable[[], dict[str, Any]]:
    """The one-request path (one statement, exact refusals) for one lane item."""
    return functools.partial(
        bookings.book,
        user_id=item.user_id,
        event_id=event_id,
        quantity=item.quantity,
        lines=item.lines,
        default_max=default_max,
        idempotency=item.idempotency,
    )


def _retrieved(work: asyncio.Future[Any]) -> None:
    if not work.cancelled():
        work.exception()  # marks it retrieved: asyncio would warn about an unawaited failure


def _consume(work: asyncio.Future[Any]) -> None:
    """Log a background step's failure (freeing or settling a key) instead of losing it."""
    if not work.cancelled() and work.exception() is not None:
        log.error("settling an idempotency key in the background failed", exc_info=work.exception())


_coalescers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Coalescer] = weakref.WeakKeyDictionary()


def coalescer() -> Coalescer:
    """The running event loop's coalescer (each loop has its own lanes)."""
    loop = asyncio.get_running_loop()
    found = _coalescers.get(loop)
    if found is None:
        found = _coalescers[loop] = Coalescer()
    return found
