"""Routes of the booking function: customers hold, book and cancel tickets."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from fastapi import APIRouter, Request

from shared.ticketing import bookings, coalescing, confirmations, holds
from shared.web.deps import (
    BookingId,
    CurrentUser,
    Customer,
    EventId,
    HoldId,
    Limit,
    Offset,
    Organizer,
    UserId,
    require_self,
)
from shared.web.error_docs import GRANT_REFUSALS, KEYED, ORDER_REFUSALS, errors
from shared.web.granting import Grant, Granting
from shared.web.ratelimit import access_code_guesses
from shared.web.schemas import (
    BookingCancel,
    BookingCreate,
    BookingOut,
    BookingPage,
    HoldCreate,
    HoldOut,
    HoldPage,
)

router = APIRouter(tags=["booking"])

_CUSTOMERS = ("customer_only", "not_your_account")
# Ticket-granting routes take ``grant: Granting``: the caller rate limited, and an Idempotency-Key.
_GRANTING = errors(*_CUSTOMERS, *ORDER_REFUSALS, *KEYED, "rate_limited")


async def _book(request: Request, body: BookingCreate, grant: Grant, user_id: int) -> dict[str, Any]:
    def call() -> Awaitable[dict[str, Any]]:
        return grant.once.run_async(
            body, coalescing.book, user_id=user_id, event_id=body.event_id, quantity=body.quantity,
            lines=body.order_lines(), access_code=body.access_code, lanes=grant.lanes, offload=grant.offload,
        )

    if body.access_code is None:
        return await call()
    with access_code_guesses(request, user_id):
        return await call()


@router.post("/bookings", status_code=201, response_model=BookingOut, responses=_GRANTING)
async def create_booking(request: Request, body: BookingCreate, grant: Granting) -> dict[str, Any]:
    """Book an order as the calling customer: `quantity` tickets of the event's default type,
    or `lines` of its ticket types (all or nothing; each ticket takes one unit of every quota
    of its type), with an `access_code` for hidden types or a presale. Free orders are
    confirmed at once; `total_minor` is computed from the types' prices."""
    return await _book(request, body, grant, grant.customer.user_id)


@router.post("/book/{user_id}", status_code=201, response_model=BookingOut, responses=_GRANTING)
async def book_for(request: Request, user_id: UserId, body: BookingCreate, grant: Granting) -> dict[str, Any]:
    """Book tickets; the path names the customer, who must be the caller."""
    require_self(grant.customer, user_id)
    return await _book(request, body, grant, user_id)


@router.get("/bookings", response_model=BookingPage, responses=errors(*_CUSTOMERS))
def my_bookings(principal: CurrentUser, limit: Limit = 20, offset: Offset = 0) -> BookingPage:
    """The caller's bookings, newest first."""
    return BookingPage.of(
        bookings.list_bookings(user_id=principal.user_id, limit=limit + 1, offset=offset), limit, offset
    )


@router.get(
    "/events/{event_id}/bookings",
    response_model=BookingPage,
    responses=errors("organizer_only", "not_event_owner", "event_not_found"),
)
def event_bookings(event_id: EventId, organizer: Organizer, limit: Limit = 20, offset: Offset = 0) -> BookingPage:
    """An event's bookings (cancelled ones too), newest first: for its organizer."""
    return BookingPage.of(
        bookings.list_event_bookings(event_id=event_id, organizer_id=organizer.user_id, limit=limit + 1, offset=offset),
        limit,
        offset,
    )


@router.get("/bookings/{booking_id}", response_model=BookingOut, responses=errors(*_CUSTOMERS, "booking_not_found"))
def get_booking(booking_id: BookingId, principal: CurrentUser) -> dict[str, Any]:
    """One booking, visible to its customer and to the event's organizer."""
    return bookings.get_booking(booking_id=booking_id, user_id=principal.user_id)


@router.post(
    "/bookings/{booking_id}/cancel",
    response_model=BookingOut,
    responses=errors(*_CUSTOMERS, "booking_not_found", "cancel_exceeds_booking", "line_required",
                     "booking_line_not_found"),
)
def cancel_booking(booking_id: BookingId, customer: Customer, body: BookingCancel | None = None) -> dict[str, Any]:
    """Give back all tickets of a booking, or `quantity` of them (of its line `line_id`; a
    line's tickets go back to every quota of its type). Cancelling twice is harmless."""
    body = body or BookingCancel()
    return bookings.cancel_booking(
        booking_id=booking_id, user_id=customer.user_id, quantity=body.quantity, line_id=body.line_id
    )


@router.post("/events/{event_id}/holds", status_code=201, response_model=HoldOut, responses=_GRANTING)
def create_hold(request: Request, event_id: EventId, grant: Granting, body: HoldCreate | None = None) -> dict[str, Any]:
    """Set tickets aside for the caller until `expires_at`; confirm or release them before then.

    The hold lasts `ttl_seconds` (default `HOLD_TTL_SECONDS`), at most the event's
    `max_hold_seconds` (default `HOLD_TTL_MAX_SECONDS`) and never past the close of the
    event's sales (its end, else its start): `expires_at` in the answer is the real end.
    Held tickets count against the customer's per-event and per-type limits until the hold
    ends. A hold takes `quantity` of the default type or `lines` (a cart), with an `access_code`
    whose use is given back if the hold is released or expires unconfirmed.
    """
    body = body or HoldCreate()
    order = body

    def call() -> dict[str, Any]:
        return grant.once.run(
            order, holds.create_hold, user_id=grant.customer.user_id, event_id=event_id, quantity=order.quantity,
            lines=order.order_lines(), access_code=order.access_code, ttl_seconds=order.ttl_seconds,
        )

    if body.access_code is None:
        return call()
    with access_code_guesses(request, grant.customer.user_id):
        return call()


@router.get("/holds", response_model=HoldPage, responses=errors(*_CUSTOMERS))
def my_holds(customer: Customer, limit: Limit = 20, offset: Offset = 0) -> HoldPage:
    """The caller's holds, newest first; `status` is `expired` as soon as time is up."""
    return HoldPage.of(
        holds.list_holds(user_id=customer.user_id, limit=limit + 1, offset=offset), limit, offset
    )


@router.get("/holds/{hold_id}", response_model=HoldOut, responses=errors(*_CUSTOMERS, "hold_not_found"))
def get_hold(hold_id: HoldId, customer: Customer) -> dict[str, Any]:
    """One of the caller's holds."""
    return holds.get_hold(hold_id=hold_id, user_id=customer.user_id)


@router.post(
    "/holds/{hold_id}/confirm",
    status_code=201,
    response_model=BookingOut,
    responses={
        **errors(*_CUSTOMERS, *GRANT_REFUSALS, "hold_not_found", "hold_expired", "hold_released", *KEYED,
                 "rate_limited"),
        200: {"model": BookingOut, "description": "Already confirmed: the same booking"},
    },
)
def confirm_hold(hold_id: HoldId, grant: Granting) -> dict[str, Any]:
    """Turn a hold into a booking. A hold past its expiry still confirms if its tickets are free."""
    return grant.once.run(None, confirmations.confirm_hold, hold_id=hold_id, user_id=grant.customer.user_id)


@router.delete("/holds/{hold_id}", response_model=HoldOut, responses=errors(*_CUSTOMERS, "hold_not_found"))
def release_hold(hold_id: HoldId, customer: Customer) -> dict[str, Any]:
    """Give a hold's tickets back now. Releasing twice, or after it expired, is harmless."""
    return holds.release_hold(hold_id=hold_id, user_id=customer.user_id)
