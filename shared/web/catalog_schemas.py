"""Bodies of the organizer's catalog: ticket types, quotas, access codes, inventory.

Request bodies refuse unknown fields (422 ``validation_error``): a field the server does
not change must not look accepted. PATCH bodies: fields not sent stay as they are. Fields
that may be omitted but never null say so in the schema (a default of None without
``| None``): read ``model_fields_set``. Rules across fields (a sales window, per-order
bounds) are checked by the services on the merged values, so a PATCH of one end is
checked against the stored other end.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, GetJsonSchemaHandler

from shared.web.schemas import JSON_INTEGER, MAX_TICKETS_PER_EVENT, NON_BLANK_PATTERN, Id, Text, Timestamp

PRICE_MAX = 100_000_000_000  # the column's CHECK: a billion in major units
POSITION_MAX = 1_000_000
LIST_MAX = 100  # ids in one body



def _stripped(value: str) -> str:
    """Stored trimmed; all blanks is no name (the pattern states it, so a client knows)."""
    value = value.strip()
    if not value:
        raise ValueError("must not be blank")
    return value


class _StatesNonBlank:
    """The schema's pattern for :func:`_stripped`, at the type level (a field's own
    ``json_schema_extra`` adds to it): Text's characters, one of them not a blank."""

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        schema = handler(core_schema)
        schema["pattern"] = NON_BLANK_PATTERN
        return schema


# Names and labels: trimmed, then at least one character (not just blanks).
Name = Annotated[Text, Field(max_length=200), AfterValidator(_stripped), _StatesNonBlank()]
Description = Annotated[Text, Field(max_length=2000)]
Label = Name
PriceMinor = Annotated[int, Field(strict=True, ge=0, le=PRICE_MAX), JSON_INTEGER]
PerOrder = Annotated[int, Field(strict=True, ge=1, le=MAX_TICKETS_PER_EVENT), JSON_INTEGER]
Position = Annotated[int, Field(strict=True, ge=-POSITION_MAX, le=POSITION_MAX), JSON_INTEGER]
Size = Annotated[int, Field(strict=True, ge=0, le=MAX_TICKETS_PER_EVENT), JSON_INTEGER]
Uses = Annotated[int, Field(strict=True, ge=1, le=1_000_000), JSON_INTEGER]
IdSet = Annotated[list[Id], Field(max_length=LIST_MAX)]
# A chosen access code: letters, digits, '-' and '_'; compared case-insensitively.
CODE_PATTERN = "^[A-Za-z0-9_-]{8,64}$"
Code = Annotated[str, Field(pattern=CODE_PATTERN)]


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)  # "not sent" is not a value a client could send


_SALES_START = "null: on sale from publication"
_SALES_END = "null: until the event's sales close (its end, else its start)"
_MAX_PER_ORDER = "null: the event's per-booking maximum"
_MAX_PER_CUSTOMER = "per customer across their orders and active holds; null: only the event's limit"


class TicketTypeCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"name": "VIP", "price_minor": 9900, "max_per_order": 4, "quota_ids": [2]}]})

    name: Name
    description: Description | None = None
    price_minor: PriceMinor = Field(default=0, description="in minor units of the event's currency; 0 is free")
    sales_start: Timestamp | None = Field(default=None, description=_SALES_START)
    sales_end: Timestamp | None = Field(default=None, description=_SALES_END)
    min_per_order: PerOrder = 1
    max_per_order: PerOrder | None = Field(default=None, description=_MAX_PER_ORDER)
    max_per_customer: PerOrder | None = Field(default=None, description=_MAX_PER_CUSTOMER)
    hidden: bool = Field(default=False, description="listed only with an access code that unlocks it")
    position: Position | None = Field(default=None, description="display order; null: after the others")
    quota_ids: IdSet = Field(default=[], description="quotas besides the event quota (which every type is in)")


class TicketTypeUpdate(BaseModel):
    """Fields not sent stay; deactivate with ``{"active": false}``."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"price_minor": 4900, "sales_end": None}]}
    )

    name: Name = Field(default=None, json_schema_extra=_no_default)  # type: ignore[assignment]
    description: Description | None = None
    price_minor: PriceMinor = Field(default=None, json_schema_extra=_no_default)  # type: ignore[assignment]
    sales_start: Timestamp | None = Field(default=None, description=_SALES_START)
    sales_end: Timestamp | None = Field(default=None, description=_SALES_END)
    min_per_order: PerOrder = Field(default=None, json_schema_extra=_no_default)  # type: ignore[assignment]
    max_per_order: PerOrder | None = Field(default=None, description=_MAX_PER_ORDER)
    max_per_customer: PerOrder | None = Field(default=None, description=_MAX_PER_CUSTOMER)
    hidden: bool = Field(default=None, json_schema_extra=_no_default)  # type: ignore[assignment]
    position: Position = Field(default=None, json_schema_extra=_no_default)  # type: ignore[assignment]
    active: bool = Field(default=None, json_schema_extra=_no_default)  # type: ignore[assignment]
    quota_ids: IdSet = Field(
        default=None,  # type: ignore[arg-type]
        description="the quotas besides the event quota, replacing the current ones",
        json_schema_extra=_no_default,
    )


class TicketTypeOrder(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ticket_type_ids: IdSet = Field(
        min_length=1, description="types in their new display order; types not listed keep theirs, after these"
    )


class TicketTypeOut(BaseModel):
    """A ticket type as its organizer sees it, with its counts."""

    id: int
    event_id: int
    name: str
    description: str | None
    price_minor: int
    currency: str
    sales_start: datetime | None
    sales_end: datetime | None
    min_per_order: int
    max_per_order: int | None
    max_per_customer: int | None
    hidden: bool
    position: int
    active: bool
    is_default: bool = Field(description="the type the seed's API (`{event_id, quantity}`) books")
    quota_ids: list[int] = Field(description="every quota it is in, the event quota first")
    sold: int = Field(description="tickets in confirmed orders")
    held: int = Field(description="tickets in live holds")
    available: int = Field(description="exact: the least room over its quotas")
    created_at: datetime
    updated_at: datetime


class QuotaCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"name": "VIP area", "size": 100, "ticket_type_ids": [2, 3]}]})

    name: Name
    size: Size
    ticket_type_ids: IdSet = Field(description="types it counts; none of them may have sales yet")


class QuotaUpdate(BaseModel):
    """Fields not sent stay. The event quota's size is the event's `total_tickets`: change it with
    `PUT /events/{event_id}`; its types are always every type."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"size": 120}]})

    name: Name = Field(default=None, json_schema_extra=_no_default)  # type: ignore[assignment]
    size: Size = Field(default=None, json_schema_extra=_no_default)  # type: ignore[assignment]
    ticket_type_ids: IdSet = Field(
        default=None,  # type: ignore[arg-type]
        description="replaces the set; a type with sales can neither join nor leave",
        json_schema_extra=_no_default,
    )


class QuotaOut(BaseModel):
    id: int
    event_id: int
    name: str
    size: int
    is_event: bool = Field(description="the event quota: size is total_tickets, lists every type")
    ticket_type_ids: list[int]
    sold: int = Field(description="tickets of its types in confirmed orders")
    held: int = Field(description="tickets of its types in live holds")
    free: int = Field(description="size - sold - held: exact, expired holds count as free")
    created_at: datetime
    updated_at: datetime


class QuotaList(BaseModel):
    items: list[QuotaOut]


class TicketTypeList(BaseModel):
    items: list[TicketTypeOut]


class TypeInventory(BaseModel):
    id: int
    name: str
    active: bool
    sold: int
    held: int
    available: int = Field(description="the least free over its quotas")


class QuotaInventory(BaseModel):
    id: int
    name: str
    is_event: bool
    size: int
    sold: int
    held: int
    free: int


class InventoryOut(BaseModel):
    """What is sold, held and free, per quota and per type (one snapshot)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "event_id": 1,
        "quotas": [{"id": 1, "name": "Event capacity", "is_event": True, "size": 500, "sold": 120, "held": 4,
                    "free": 376}],
        "ticket_types": [{"id": 1, "name": "General admission", "active": True, "sold": 120, "held": 4,
                          "available": 376}],
    }]})

    event_id: int
    quotas: list[QuotaInventory]
    ticket_types: list[TypeInventory]


class AccessCodeCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"label": "Fan club presale", "ticket_type_ids": [2], "max_uses": 100}]})

    code: Code | None = Field(
        default=None, description="case-insensitive; absent: 16 random base32 characters are generated"
    )
    label: Label | None = None
    ticket_type_ids: IdSet = Field(min_length=1, description="types it unlocks (hidden ones, presales)")
    max_uses: Uses
    valid_from: Timestamp | None = None
    valid_until: Timestamp | None = None


class AccessCodeUpdate(BaseModel):
    """Fields not sent stay. A code's types and the start of its window are fixed: make a new code."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"active": False}]})

    active: bool = Field(default=None, json_schema_extra=_no_default)  # type: ignore[assignment]
    max_uses: Uses = Field(  # type: ignore[assignment]
        default=None, description="never below its uses so far", json_schema_extra=_no_default
    )
    valid_until: Timestamp | None = None
    label: Label | None = None


class AccessCodeOut(BaseModel):
    """An access code without its clear text (only its digest is stored)."""

    id: int
    event_id: int
    label: str | None
    uses: int
    max_uses: int
    valid_from: datetime | None
    valid_until: datetime | None
    active: bool
    ticket_type_ids: list[int]
    created_at: datetime


class AccessCodeCreated(AccessCodeOut):
    code: str = Field(description="the code in clear: shown this once, never stored")


class AccessCodeList(BaseModel):
    items: list[AccessCodeOut]
