"""Routes of the booking function: customers hold, book and cancel tickets."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from shared.ticketing import bookings, coalescing, holds
from shared.web.app import COMMON_ERRORS, RATE_LIMITED
from shared.web.deps import (
    BookingId,
    CurrentUser,
    Customer,
    EventId,
    HoldId,
    Lanes,
    Limit,
    Offset,
    Organizer,
    UserId,
    require_self,
)
from shared.web.idempotent import Idempotent
from shared.web.ratelimit import BookingCustomer
from shared.web.schemas import (
    BookingCancel,
    BookingCreate,
    BookingOut,
    BookingPage,
    ErrorOut,
    HoldCreate,
    HoldOut,
    HoldPage,
)

router = APIRouter(tags=["booking"], responses=COMMON_ERRORS)

_AUTH: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "Missing, invalid or expired token"},
    403: {"model": ErrorOut, "description": "`customer_only`, `not_your_account`"},
}
_CLAIM_ERRORS: dict[int | str, dict[str, Any]] = {
    **_AUTH,
    400: {
        "model": ErrorOut,
        "description": "`sold_out`, `insufficient_tickets` (details say how many remain), "
        "`quantity_too_large` (details give the event's maximum), "
        "`customer_limit_exceeded` (this customer's booked plus actively held tickets of the event would "
        "pass its per-customer limit; details: `limit`, `booked`, `held`, `requested`)",
    },
    404: {"model": ErrorOut, "description": "`event_not_found`"},
    409: {
        "model": ErrorOut,
        "description": "`event_cancelled`; `event_ended` (its end, or its start when it has no end, has "
        "passed; details: `ended_at`); `request_in_progress` (same Idempotency-Key still running)",
    },
    422: {
        "model": ErrorOut,
        "description": "`validation_error`; `idempotency_key_reused` (same key, different request)",
    },
    429: RATE_LIMITED,
    503: {
        "model": ErrorOut,
        "description": "`contention` (lost every race for free tickets or waited its turn too long: retry "
        "after `Retry-After`, nothing was booked); `database_unavailable`",
    },
}


@router.post(
    "/bookings", status_code=201, response_model=BookingOut, responses=_CLAIM_ERRORS
)
async def create_booking(
    body: BookingCreate, customer: BookingCustomer, lanes: Lanes, once: Idempotent
) -> dict[str, Any]:
    """Book tickets as the calling customer."""
    return await once.run_async(
        body, coalescing.book, user_id=customer.user_id, event_id=body.event_id, quantity=body.quantity, lanes=lanes
    )


@router.post(
    "/book/{user_id}",
    status_code=201,
    response_model=BookingOut,
    responses=_CLAIM_ERRORS,
)
async def book_for(
    user_id: UserId, body: BookingCreate, customer: BookingCustomer, lanes: Lanes, once: Idempotent
) -> dict[str, Any]:
    """Book tickets; the path names the customer, who must be the caller."""
    require_self(customer, user_id)
    return await once.run_async(
        body, coalescing.book, user_id=user_id, event_id=body.event_id, quantity=body.quantity, lanes=lanes
    )


@router.get("/bookings", response_model=BookingPage, responses=_AUTH)
def my_bookings(principal: CurrentUser, limit: Limit = 20, offset: Offset = 0) -> BookingPage:
    """The caller's bookings, newest first."""
    return BookingPage.of(
        bookings.list_bookings(user_id=principal.user_id, limit=limit + 1, offset=offset), limit, offset
    )


@router.get(
    "/events/{event_id}/bookings",
    response_model=BookingPage,
    responses={
        **_AUTH,
        403: {"model": ErrorOut, "description": "`organizer_only`, `not_event_owner`"},
        404: {"model": ErrorOut, "description": "`event_not_found`"},
    },
)
def event_bookings(event_id: EventId, organizer: Organizer, limit: Limit = 20, offset: Offset = 0) -> BookingPage:
    """An event's bookings (cancelled ones too), newest first: for its organizer."""
    return BookingPage.of(
        bookings.list_event_bookings(event_id=event_id, organizer_id=organizer.user_id, limit=limit + 1, offset=offset),
        limit,
        offset,
    )


@router.get(
    "/bookings/{booking_id}",
    response_model=BookingOut,
    responses={**_AUTH, 404: {"model": ErrorOut, "description": "`booking_not_found`"}},
)
def get_booking(booking_id: BookingId, principal: CurrentUser) -> dict[str, Any]:
    """One booking, visible to its customer and to the event's organizer."""
    return bookings.get_booking(booking_id=booking_id, user_id=principal.user_id)


@router.post(
    "/bookings/{booking_id}/cancel",
    response_model=BookingOut,
    responses={
        **_AUTH,
        404: {"model": ErrorOut, "description": "`booking_not_found`"},
        409: {"model": ErrorOut, "description": "`cancel_exceeds_booking`"},
    },
)
def cancel_booking(booking_id: BookingId, customer: Customer, body: BookingCancel | None = None) -> dict[str, Any]:
    """Give back all tickets of a booking, or `quantity` of them. Cancelling twice is harmless."""
    return bookings.cancel_booking(
        booking_id=booking_id, user_id=customer.user_id, quantity=body.quantity if body else None
    )


@router.post(
    "/events/{event_id}/holds",
    status_code=201,
    response_model=HoldOut,
    responses=_CLAIM_ERRORS,
)
def create_hold(
    event_id: EventId, customer: BookingCustomer, once: Idempotent, body: HoldCreate | None = None
) -> dict[str, Any]:
    """Set tickets aside for the caller until `expires_at`; confirm or release them before then.

    The hold lasts `ttl_seconds` (default `HOLD_TTL_SECONDS`), at most the event's
    `max_hold_seconds` (default `HOLD_TTL_MAX_SECONDS`) and never past the close of the
    event's sales (its end, else its start): `expires_at` in the answer is the real end.
    Held tickets count against the customer's per-event limit until the hold ends.
    """
    body = body or HoldCreate()
    return once.run(
        body,
        holds.create_hold,
        user_id=customer.user_id,
        event_id=event_id,
        quantity=body.quantity,
        ttl_seconds=body.ttl_seconds,
    )


@router.get("/holds", response_model=HoldPage, responses=_AUTH)
def my_holds(customer: Customer, limit: Limit = 20, offset: Offset = 0) -> HoldPage:
    """The caller's holds, newest first; `status` is `expired` as soon as time is up."""
    return HoldPage.of(
        holds.list_holds(user_id=customer.user_id, limit=limit + 1, offset=offset), limit, offset
    )


@router.get(
    "/holds/{hold_id}",
    response_model=HoldOut,
    responses={**_AUTH, 404: {"model": ErrorOut, "description": "`hold_not_found`"}},
)
def get_hold(hold_id: HoldId, customer: Customer) -> dict[str, Any]:
    """One of the caller's holds."""
    return holds.get_hold(hold_id=hold_id, user_id=customer.user_id)


@router.post(
    "/holds/{hold_id}/confirm",
    status_code=201,
    response_model=BookingOut,
    responses={
        **_CLAIM_ERRORS,
        200: {"model": BookingOut, "description": "Already confirmed: the same booking"},
        404: {"model": ErrorOut, "description": "`hold_not_found`"},
        409: {
            "model": ErrorOut,
            "description": "`hold_expired` (its tickets are gone; details say how many are left), "
            "`hold_released`, `event_cancelled`, `event_ended`, `request_in_progress`",
        },
    },
)
def confirm_hold(hold_id: HoldId, customer: BookingCustomer, once: Idempotent) -> dict[str, Any]:
    """Turn a hold into a booking. A hold past its expiry still confirms if its tickets are free."""
    return once.run(None, holds.confirm_hold, hold_id=hold_id, user_id=customer.user_id)


@router.delete(
    "/holds/{hold_id}",
    response_model=HoldOut,
    responses={**_AUTH, 404: {"model": ErrorOut, "description": "`hold_not_found`"}},
)
def release_hold(hold_id: HoldId, customer: Customer) -> dict[str, Any]:
    """Give a hold's tickets back now. Releasing twice, or after it expired, is harmless."""
    return holds.release_hold(hold_id=hold_id, user_id=customer.user_id)
