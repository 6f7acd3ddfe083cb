"""Coalescing concurrent bookings of one event into one transaction (long-running servers).

During an on-sale rush every booking updates the same event row, so transactions queue
on its row lock and each pays its own commit. Here a server process keeps at most one
transaction per event in flight: bookings that arrive while it runs wait in the event's
lane (cheap, in memory) and go together in the next one, which locks the row once,
inserts every booking with its outbox row and idempotent answer in one statement, and
commits once (:func:`shared.bookings.book_batch`). An idle lane starts at once, so a
lone booking waits for nothing.

Each request still gets its own booking and its own answer. A request the batch does not
grant (not enough tickets left for it, an event that is missing or cancelled, a database
error) runs the ordinary one-request path, which decides it exactly and says why; so
sold-out stays exact and every refusal reads as before.

Lanes live on the server's event loop; the batch runs on a worker thread. Under Lambda
(one request per environment) nothing is coalesced.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool

from shared import bookings, metrics
from shared.errors import ServiceUnavailable
from shared.idempotency import Claim
from shared.settings import get_settings, running_in_lambda

log = logging.getLogger("shared.coalescing")


def enabled() -> bool:
    return get_settings().booking_coalesce and not running_in_lambda()


@dataclass
class _Lane:
    """Bookings of one event waiting for the next transaction; ``busy`` while one runs."""

    waiting: list[tuple[bookings.BatchItem, asyncio.Future[dict[str, Any] | None]]] = field(default_factory=list)
    busy: bool = False


class Coalescer:
    """The lanes of one event loop, one per event with bookings in flight."""

    def __init__(self) -> None:
        self._lanes: dict[int, _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def book(
        self, *, user_id: int, event_id: int, quantity: int, default_max: int, idempotency: Claim | None = None
    ) -> dict[str, Any]:
        """Book like :func:`shared.bookings.book`, sharing a transaction with concurrent bookings."""
        item = bookings.BatchItem(user_id=user_id, quantity=quantity, idempotency=idempotency)
        done: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
        lane = self._lanes.setdefault(event_id, _Lane())
        lane.waiting.append((item, done))
        if not lane.busy:
            lane.busy = True
            task = asyncio.create_task(self._drain(event_id, lane, default_max))
            self._tasks.add(task)  # a task nobody references may be collected mid-run
            task.add_done_callback(self._tasks.discard)
        row = await done
        if row is None:  # not granted in a batch: the one-request path decides
            row = await run_in_threadpool(
                bookings.book,
                user_id=user_id,
                event_id=event_id,
                quantity=quantity,
                default_max=default_max,
                idempotency=idempotency,
            )
        return row

    async def _drain(self, event_id: int, lane: _Lane, default_max: int) -> None:
        """Run the lane's transactions one after another until nobody is waiting."""
        batch: list[tuple[bookings.BatchItem, asyncio.Future[dict[str, Any] | None]]] = []
        try:
            while lane.waiting:
                limit = get_settings().booking_batch_max
                batch, lane.waiting = lane.waiting[:limit], lane.waiting[limit:]
                if len(batch) == 1:  # alone: the one-statement path is cheaper than a batch
                    await self._book_alone(event_id, default_max, *batch[0])
                    batch = []
                    continue
                items = [item for item, _ in batch]
                try:
                    rows = await run_in_threadpool(
                        bookings.book_batch, event_id=event_id, items=items, default_max=default_max
                    )
                except Exception:
                    # Nothing was written; each request retries alone and meets the error itself.
                    log.warning("coalesced booking batch failed; booking one by one", exc_info=True)
                    rows = [None] * len(batch)
                metrics.booking_batch(len(batch))
                for (_, done), row in zip(batch, rows, strict=True):
                    if not done.done():
                        done.set_result(row)
                batch = []
        finally:
            # Only when cancelled (the loop shutting down). The batch in flight may have
            # committed: its requests hear 503 (a keyed retry replays the answer); those
            # still waiting never reached the database and go the one-request way.
            for _, done in batch:
                if not done.done():
                    done.set_exception(
                        ServiceUnavailable("shutting_down", "The server stopped while booking; retry")
                    )
            for _, done in lane.waiting:
                if not done.done():
                    done.set_result(None)
            lane.waiting = []
            lane.busy = False
            if self._lanes.get(event_id) is lane:
                del self._lanes[event_id]


    @staticmethod
    async def _book_alone(
        event_id: int, default_max: int, item: bookings.BatchItem, done: asyncio.Future[dict[str, Any] | None]
    ) -> None:
        try:
            row = await run_in_threadpool(
                bookings.book,
                user_id=item.user_id,
                event_id=event_id,
                quantity=item.quantity,
                default_max=default_max,
                idempotency=item.idempotency,
            )
        except Exception as exc:  # the request's own answer (sold_out, 503...), raised where it waits
            if not done.done():
                done.set_exception(exc)
        else:
            if not done.done():
                done.set_result(row)


_coalescers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Coalescer] = weakref.WeakKeyDictionary()


def coalescer() -> Coalescer:
    """The running event loop's coalescer (each loop has its own lanes)."""
    loop = asyncio.get_running_loop()
    found = _coalescers.get(loop)
    if found is None:
        found = _coalescers[loop] = Coalescer()
    return found
