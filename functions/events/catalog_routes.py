"""Routes of the organizer's catalog: ticket types, quotas, access codes and inventory."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response

from shared.ticketing import access_codes, quotas, ticket_types
from shared.web.catalog_schemas import (
    AccessCodeCreate,
    AccessCodeCreated,
    AccessCodeList,
    AccessCodeOut,
    AccessCodeUpdate,
    InventoryOut,
    QuotaCreate,
    QuotaList,
    QuotaOut,
    QuotaUpdate,
    TicketTypeCreate,
    TicketTypeList,
    TicketTypeOrder,
    TicketTypeOut,
    TicketTypeUpdate,
)
from shared.web.deps import Decimal, EventId, Organizer
from shared.web.error_docs import errors
from shared.web.schemas import ID_MAX

router = APIRouter(tags=["catalog"])

TicketTypeId = Annotated[int, Path(ge=1, le=ID_MAX, description="Ticket type id"), Decimal]
QuotaId = Annotated[int, Path(ge=1, le=ID_MAX, description="Quota id"), Decimal]
AccessCodeId = Annotated[int, Path(ge=1, le=ID_MAX, description="Access code id"), Decimal]

# Every catalog route: the event's organizer only, while the event exists.
_OWNING = ("organizer_only", "not_event_owner", "event_not_found")
# Changing what grants read: not on a cancelled event.
_CHANGING = (*_OWNING, "event_cancelled")
_TYPE_RULES = ("invalid_sales_window", "invalid_order_bounds")


# -- ticket types ------------------------------------------------------------------------------


@router.post(
    "/events/{event_id}/ticket-types",
    status_code=201,
    response_model=TicketTypeOut,
    responses=errors(*_CHANGING, "quota_not_found", *_TYPE_RULES),
)
def create_ticket_type(event_id: EventId, body: TicketTypeCreate, organizer: Organizer) -> dict[str, Any]:
    """Add a ticket type: it joins the event quota and the quotas in `quota_ids`."""
    fields = body.model_dump(exclude={"quota_ids"})
    return ticket_types.create_type(
        event_id=event_id, organizer_id=organizer.user_id, fields=fields, quota_ids=body.quota_ids
    )


@router.get("/events/{event_id}/ticket-types", response_model=TicketTypeList, responses=errors(*_OWNING))
def list_ticket_types(event_id: EventId, organizer: Organizer) -> dict[str, Any]:
    """Every type of the event (hidden and inactive too) with sold, held and available."""
    return {"items": ticket_types.list_types(event_id=event_id, organizer_id=organizer.user_id)}


@router.patch(
    "/events/{event_id}/ticket-types/{ticket_type_id}",
    response_model=TicketTypeOut,
    responses=errors(*_CHANGING, "ticket_type_not_found", "quota_not_found", "quota_membership_locked", *_TYPE_RULES),
)
def update_ticket_type(
    event_id: EventId, ticket_type_id: TicketTypeId, body: TicketTypeUpdate, organizer: Organizer
) -> dict[str, Any]:
    """Change a type; fields not sent stay. Deactivate with `{"active": false}`.

    Window and order bounds are checked against the stored values of fields not sent.
    Concurrent orders see the change at once. `quota_ids` replaces its quotas besides the
    event quota, only while the type has nothing sold or held.
    """
    return ticket_types.update_type(
        event_id=event_id,
        organizer_id=organizer.user_id,
        type_id=ticket_type_id,
        changes=body.model_dump(include=body.model_fields_set),
    )


@router.delete(
    "/events/{event_id}/ticket-types/{ticket_type_id}",
    status_code=204,
    response_class=Response,
    responses=errors(*_CHANGING, "ticket_type_not_found", "ticket_type_has_sales", "default_ticket_type"),
)
def delete_ticket_type(event_id: EventId, ticket_type_id: TicketTypeId, organizer: Organizer) -> Response:
    """Delete a type never ordered nor held (else deactivate it); the default type stays."""
    ticket_types.delete_type(event_id=event_id, organizer_id=organizer.user_id, type_id=ticket_type_id)
    return Response(status_code=204)


# Not /ticket-types/order: that path would also match /ticket-types/{ticket_type_id}, so a
# PATCH or DELETE there would answer 422 for a bad id instead of 405.
@router.put(
    "/events/{event_id}/ticket-type-order",
    response_model=TicketTypeList,
    responses=errors(*_CHANGING, "ticket_type_not_found", "duplicate_ticket_type"),
)
def reorder_ticket_types(event_id: EventId, body: TicketTypeOrder, organizer: Organizer) -> dict[str, Any]:
    """Set the display order: the listed types first, as listed; the others after, as they were."""
    return {
        "items": ticket_types.reorder(
            event_id=event_id, organizer_id=organizer.user_id, type_ids=body.ticket_type_ids
        )
    }


# -- quotas ------------------------------------------------------------------------------------


@router.post(
    "/events/{event_id}/quotas",
    status_code=201,
    response_model=QuotaOut,
    responses=errors(*_CHANGING, "ticket_type_not_found", "quota_membership_locked"),
)
def create_quota(event_id: EventId, body: QuotaCreate, organizer: Organizer) -> dict[str, Any]:
    """Add a capacity shared by `ticket_type_ids` (types without sales yet)."""
    return quotas.create_quota(
        event_id=event_id, organizer_id=organizer.user_id, name=body.name, size=body.size,
        ticket_type_ids=body.ticket_type_ids,
    )


@router.get("/events/{event_id}/quotas", response_model=QuotaList, responses=errors(*_OWNING))
def list_quotas(event_id: EventId, organizer: Organizer) -> dict[str, Any]:
    """The event's quotas, the event quota first, with sold, held and free."""
    return {"items": quotas.list_quotas(event_id=event_id, organizer_id=organizer.user_id)}


@router.patch(
    "/events/{event_id}/quotas/{quota_id}",
    response_model=QuotaOut,
    responses=errors(
        *_CHANGING, "quota_not_found", "ticket_type_not_found", "capacity_below_sold", "quota_membership_locked",
        "event_quota",
    ),
)
def update_quota(event_id: EventId, quota_id: QuotaId, body: QuotaUpdate, organizer: Organizer) -> dict[str, Any]:
    """Rename, resize or change the types of a quota; fields not sent stay.

    A size below what is sold plus held is refused with the numbers. A type with sold or
    held tickets can neither join nor leave. The event quota's size is the event's
    `total_tickets` (change it with `PUT /events/{event_id}`) and it lists every type:
    only its name changes here.
    """
    return quotas.update_quota(
        event_id=event_id, organizer_id=organizer.user_id, quota_id=quota_id,
        changes=body.model_dump(include=body.model_fields_set),
    )


@router.delete(
    "/events/{event_id}/quotas/{quota_id}",
    status_code=204,
    response_class=Response,
    responses=errors(*_CHANGING, "quota_not_found", "event_quota"),
)
def delete_quota(event_id: EventId, quota_id: QuotaId, organizer: Organizer) -> Response:
    """Remove a quota (not the event quota); its types stay in their other quotas."""
    quotas.delete_quota(event_id=event_id, organizer_id=organizer.user_id, quota_id=quota_id)
    return Response(status_code=204)


@router.get("/events/{event_id}/inventory", response_model=InventoryOut, responses=errors(*_OWNING))
def inventory(event_id: EventId, organizer: Organizer) -> dict[str, Any]:
    """Sold, held and free per quota, and per type (available: the least free over its quotas)."""
    return quotas.inventory(event_id=event_id, organizer_id=organizer.user_id)


# -- access codes ------------------------------------------------------------------------------


@router.post(
    "/events/{event_id}/access-codes",
    status_code=201,
    response_model=AccessCodeCreated,
    responses=errors(*_CHANGING, "ticket_type_not_found", "access_code_taken", "invalid_validity_window"),
)
def create_access_code(event_id: EventId, body: AccessCodeCreate, organizer: Organizer) -> dict[str, Any]:
    """Create a code unlocking `ticket_type_ids` (hidden types, presales): the answer is the only
    time the code is shown; absent, one is generated."""
    return access_codes.create_code(event_id=event_id, organizer_id=organizer.user_id, fields=body.model_dump())


@router.get("/events/{event_id}/access-codes", response_model=AccessCodeList, responses=errors(*_OWNING))
def list_access_codes(event_id: EventId, organizer: Organizer) -> dict[str, Any]:
    """The event's codes with their uses (never the codes themselves)."""
    return {"items": access_codes.list_codes(event_id=event_id, organizer_id=organizer.user_id)}


@router.patch(
    "/events/{event_id}/access-codes/{access_code_id}",
    response_model=AccessCodeOut,
    responses=errors(*_CHANGING, "access_code_not_found", "max_uses_below_uses", "invalid_validity_window"),
)
def update_access_code(
    event_id: EventId, access_code_id: AccessCodeId, body: AccessCodeUpdate, organizer: Organizer
) -> dict[str, Any]:
    """Deactivate, relabel, end or extend a code, or change its max_uses (never below its uses)."""
    return access_codes.update_code(
        event_id=event_id, organizer_id=organizer.user_id, code_id=access_code_id,
        changes=body.model_dump(include=body.model_fields_set),
    )
