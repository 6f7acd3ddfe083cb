"""Routes of the booking function: customers hold, book and cancel tickets."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from shared.platform import metrics
from shared.platform.settings import get_settings
from shared.ticketing import bookings, coalescing, holds, idempotency
from shared.web.app import COMMON_ERRORS, RATE_LIMITED
from shared.web.deps import (
    BookingId,
    CurrentUser,
    Customer,
    EventId,
    HoldId,
    IdempotencyKey,
    Limit,
    Offset,
    Organizer,
    UserId,
    require_self,
)
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
    page_of,
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


def _fingerprint(request: Request, key: str | None, body: BaseModel | None) -> str:
    # Only a keyed request needs its fingerprint: the unkeyed hot path skips the hashing.
    if key is None:
        return ""
    return idempotency.fingerprint(request.method, request.url.path, body.model_dump(mode="json") if body else None)


def _keyed(request: Request, response: Response, user_id: int, key: str | None, body: BaseModel | None) -> Any:
    """What idempotency.run / run_async need besides the action."""
    return {
        "user_id": user_id,
        "key": key,
        "request_fingerprint": _fingerprint(request, key, body),
        "success_status": lambda: response.status_code or 201,
    }


@contextmanager
def _replays_counted() -> Iterator[None]:
    """A stored refusal replays as an exception: count it like any other replay."""
    try:
        yield
    except idempotency.Replayed:
        metrics.idempotent_replay()
        raise


def _mark_replay(response: Response, replayed_status: int | None) -> None:
    if replayed_status is not None:
        metrics.idempotent_replay()
        response.status_code = replayed_status
        response.headers[idempotency.REPLAY_HEADER] = "true"


def _idempotent(
    request: Request,
    response: Response,
    user_id: int,
    key: str | None,
    body: BaseModel | None,
    action: Callable[[idempotency.KeyLease | None], dict[str, Any]],
) -> dict[str, Any]:
    """Run a creating action once per Idempotency-Key; mark replays in a header."""
    with _replays_counted():
        result, replayed_status = idempotency.run(action=action, **_keyed(request, response, user_id, key, body))
    _mark_replay(response, replayed_status)
    return result


async def _book(
    request: Request, response: Response, user_id: int, body: BookingCreate, key: str | None
) -> dict[str, Any]:
    """Book through the event's coalescing lane (servers) or the one-request path (Lambda).

    Async, so an unkeyed booking in a lane costs no thread-pool hop and a keyed one holds
    no thread while it waits for its transaction.
    """
    lanes = coalescing.coalescer() if coalescing.enabled(request.scope) else None
    what: dict[str, Any] = {
        "user_id": user_id,
        "event_id": body.event_id,
        "quantity": body.quantity,
        "default_max": get_settings().max_tickets_per_booking,
    }

    async def action(lease: idempotency.KeyLease | None) -> dict[str, Any]:
        with metrics.counting_booking(body.quantity):
            if lanes is None:
                return await run_in_threadpool(functools.partial(bookings.book, **what, idempotency=lease))
            return await lanes.book(**what, idempotency=lease)

    with _replays_counted():
        result, replayed_status = await idempotency.run_async(
            action=action, **_keyed(request, response, user_id, key, body)
        )
    _mark_replay(response, replayed_status)
    return result


@router.post(
    "/bookings", status_code=201, response_model=BookingOut, responses=_CLAIM_ERRORS
)
async def create_booking(
    body: BookingCreate,
    customer: BookingCustomer,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    """Book tickets as the calling customer."""
    return await _book(request, response, customer.user_id, body, idempotency_key)


@router.post(
    "/book/{user_id}",
    status_code=201,
    response_model=BookingOut,
    responses=_CLAIM_ERRORS,
)
async def book_for(
    user_id: UserId,
    body: BookingCreate,
    customer: BookingCustomer,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    """Book tickets; the path names the customer, who must be the caller."""
    require_self(customer, user_id)
    return await _book(request, response, user_id, body, idempotency_key)


@router.get("/bookings", response_model=BookingPage, responses=_AUTH)
def my_bookings(principal: CurrentUser, limit: Limit = 20, offset: Offset = 0) -> BookingPage:
    """The caller's bookings, newest first."""
    rows = bookings.list_bookings(user_id=principal.user_id, limit=limit + 1, offset=offset)
    return BookingPage(**page_of(BookingOut, rows, limit, offset))


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
    rows = bookings.list_event_bookings(
        event_id=event_id, organizer_id=organizer.user_id, limit=limit + 1, offset=offset
    )
    return BookingPage(**page_of(BookingOut, rows, limit, offset))


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
    event_id: EventId,
    customer: BookingCustomer,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
    body: HoldCreate | None = None,
) -> dict[str, Any]:
    """Set tickets aside for the caller until `expires_at`; confirm or release them before then.

    The hold lasts `ttl_seconds` (default `HOLD_TTL_SECONDS`), at most the event's
    `max_hold_seconds` (default `HOLD_TTL_MAX_SECONDS`) and never past the close of the
    event's sales (its end, else its start): `expires_at` in the answer is the real end.
    Held tickets count against the customer's per-event limit until the hold ends.
    """
    body = body or HoldCreate()
    settings = get_settings()
    return _idempotent(
        request,
        response,
        customer.user_id,
        idempotency_key,
        body,
        lambda lease: holds.create_hold(
            user_id=customer.user_id,
            event_id=event_id,
            quantity=body.quantity,
            ttl_seconds=body.ttl_seconds,
            default_max=settings.max_tickets_per_booking,
            idempotency=lease,
        ),
    )


@router.get("/holds", response_model=HoldPage, responses=_AUTH)
def my_holds(customer: Customer, limit: Limit = 20, offset: Offset = 0) -> HoldPage:
    """The caller's holds, newest first; `status` is `expired` as soon as time is up."""
    rows = holds.list_holds(user_id=customer.user_id, limit=limit + 1, offset=offset)
    return HoldPage(**page_of(HoldOut, rows, limit, offset))


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
def confirm_hold(
    hold_id: HoldId,
    customer: BookingCustomer,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    """Turn a hold into a booking. A hold past its expiry still confirms if its tickets are free."""

    def action(lease: idempotency.KeyLease | None) -> dict[str, Any]:
        booking, created = holds.confirm_hold(
            hold_id=hold_id,
            user_id=customer.user_id,
            default_max=get_settings().max_tickets_per_booking,
            idempotency=lease,
        )
        if created:
            metrics.booking_made(booking["quantity"])
        else:
            response.status_code = 200
        return booking

    return _idempotent(request, response, customer.user_id, idempotency_key, None, action)


@router.delete(
    "/holds/{hold_id}",
    response_model=HoldOut,
    responses={**_AUTH, 404: {"model": ErrorOut, "description": "`hold_not_found`"}},
)
def release_hold(hold_id: HoldId, customer: Customer) -> dict[str, Any]:
    """Give a hold's tickets back now. Releasing twice, or after it expired, is harmless."""
    return holds.release_hold(hold_id=hold_id, user_id=customer.user_id)
