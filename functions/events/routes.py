"""Routes of the events function: organizers publish and change events, anyone browses."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request

from functions.events import catalog_routes
from shared.ticketing import events, ticket_types
from shared.web.catalog_schemas import CODE_PATTERN
from shared.web.deps import Decimal, EventId, Limit, Offset, Organizer, require_self
from shared.web.error_docs import errors
from shared.web.ratelimit import access_code_guesses
from shared.web.schemas import ID_MAX, EventCreate, EventOut, EventPage, EventUpdate

router = APIRouter(tags=["events"])

# Publishing: times are checked against each other as well as one by one.
_PUBLISHING = errors("organizer_only", "not_your_account", "invalid_time_range")
# Changing an event: only its organizer, and only while it exists.
_OWNING = ("organizer_only", "not_event_owner", "event_not_found")


@router.post("/events", status_code=201, response_model=EventOut, responses=_PUBLISHING)
def create_event(body: EventCreate, organizer: Organizer) -> dict[str, Any]:
    """Publish an event as the calling organizer."""
    return ticket_types.attach_types(events.create_event(organizer_id=organizer.user_id, fields=body.model_dump()))


# One variable name per path position (OpenAPI treats /events/{a} and /events/{b} as the same
# path, and so does API Gateway): the seed's organizer id sits where GET and PUT have event_id.
SeedOrganizerId = Annotated[
    int,
    Path(
        alias="event_id",
        ge=1,
        le=ID_MAX,
        description="On this route, the seed's `POST /events/{organizer_id}`: the organizer's user id; "
        "must be the caller",
    ),
    Decimal,
]


@router.post("/events/{event_id}", status_code=201, response_model=EventOut, responses=_PUBLISHING)
def create_event_for(organizer_id: SeedOrganizerId, body: EventCreate, organizer: Organizer) -> dict[str, Any]:
    """Publish an event; the path names the organizer, who must be the caller."""
    require_self(organizer, organizer_id)
    return ticket_types.attach_types(events.create_event(organizer_id=organizer_id, fields=body.model_dump()))


@router.get("/events", response_model=EventPage)
def list_events(
    limit: Limit = 20,
    offset: Offset = 0,
    order: Annotated[
        Literal["newest", "upcoming"],
        Query(description="`newest` first, or `upcoming` (not started, soonest first)"),
    ] = "newest",
    organizer_id: Annotated[int | None, Query(ge=1, le=ID_MAX), Decimal] = None,
) -> EventPage:
    """Browse events, one page at a time."""
    return EventPage.of(
        events.list_events(limit=limit + 1, offset=offset, order=order, organizer_id=organizer_id), limit, offset
    )


@router.get(
    "/events/{event_id}",
    response_model=EventOut,
    responses=errors("event_not_found", "access_code_invalid", "rate_limited"),
)
def get_event(
    request: Request,
    event_id: EventId,
    access_code: Annotated[
        str | None,
        Query(
            pattern=CODE_PATTERN,
            description="shows the hidden ticket types this code unlocks (and opens their presale)",
        ),
    ] = None,
) -> dict[str, Any]:
    """One event with its exact availability and its ticket types on offer.

    An invalid `access_code` counts as a guess from the caller's address (`ACCESS_CODE_ATTEMPTS`
    per ten minutes, then 429).
    """
    if access_code is None:
        return ticket_types.event_for_customers(event_id)
    with access_code_guesses(request):
        return ticket_types.event_for_customers(event_id, access_code)


@router.put(
    "/events/{event_id}",
    response_model=EventOut,
    responses=errors(*_OWNING, "capacity_below_sold", "event_cancelled", "invalid_time_range", "invalid_order_bounds"),
)
def update_event(event_id: EventId, body: EventUpdate, organizer: Organizer) -> dict[str, Any]:
    """Change an event; fields not sent stay as they are. Booked customers are notified.

    Lowering `total_tickets` below what is sold plus held is refused with the numbers.
    Lowering `max_tickets_per_customer` below what a customer has keeps their bookings and
    holds and refuses them more until they are back under it; a maximum below an active ticket
    type's `min_per_order` is refused (`invalid_order_bounds`, naming the type); `max_hold_seconds` bounds
    holds made from now on. Sales close at `end_time` (or `start_time` without one).
    """
    return ticket_types.attach_types(events.update_event(
        event_id=event_id,
        organizer_id=organizer.user_id,
        changes=body.model_dump(include=body.model_fields_set),
    ))


@router.post(
    "/events/{event_id}/cancel",
    response_model=EventOut,
    responses=errors(*_OWNING),
)
def cancel_event(event_id: EventId, organizer: Organizer) -> dict[str, Any]:
    """Cancel an event: every booking is cancelled and every booked customer notified."""
    return ticket_types.attach_types(events.cancel_event(event_id=event_id, organizer_id=organizer.user_id))


# The catalog's routes are this function's own routes (not a lazily included router): API
# Gateway's route table, the Lambda routing and the template tests read ``router.routes``.
router.routes.extend(catalog_routes.router.routes)
