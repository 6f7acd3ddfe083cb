"""Request and response bodies: the API contract, validated before any SQL runs."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from shared.settings import get_settings

BIGINT_MAX = 2**63 - 1
MAX_TICKETS_PER_EVENT = 1_000_000
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL; refuse it here rather than fail in SQL.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _email(value: str) -> str:
    value = value.strip()
    if not _EMAIL.match(value):
        raise ValueError("is not a valid email address")
    return value


def _password(value: str) -> str:
    minimum = get_settings().password_min_length
    if len(value) < minimum:
        raise ValueError(f"must be at least {minimum} characters")
    return value


Id = Annotated[int, Field(strict=True, ge=1, le=BIGINT_MAX)]
Text = Annotated[str, AfterValidator(_no_nul)]
Title = Annotated[Text, Field(min_length=1, max_length=200)]
Venue = Annotated[Text, Field(max_length=200)]
TicketCount = Annotated[int, Field(strict=True, ge=1, le=MAX_TICKETS_PER_EVENT)]
Email = Annotated[Text, Field(max_length=320), AfterValidator(_email)]
Password = Annotated[Text, Field(max_length=256), AfterValidator(_password)]
Role = Literal["organizer", "customer"]


class UserCreate(BaseModel):
    email: Email = Field(examples=["organizer@test.com"])
    password: Password = Field(examples=["123"])
    role: Role
    name: Annotated[Text, Field(max_length=200)] | None = None


class UserOut(BaseModel):
    id: int
    email: str
    name: str | None
    role: Role
    created_at: datetime


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int
    user_id: int
    role: Role


class _EventTimes(BaseModel):
    @model_validator(mode="after")
    def _end_not_before_start(self) -> Any:
        start, end = getattr(self, "start_time", None), getattr(self, "end_time", None)
        if start is not None and end is not None and end < start:
            raise ValueError("end_time must not be before start_time")
        return self


PerBookingMax = Annotated[int, Field(strict=True, ge=1, le=MAX_TICKETS_PER_EVENT)]
PerCustomerMax = Annotated[int, Field(strict=True, ge=1, le=MAX_TICKETS_PER_EVENT)]
HOLD_SECONDS_MAX = 86_400
HoldSeconds = Annotated[int, Field(strict=True, ge=1, le=HOLD_SECONDS_MAX)]
_PER_CUSTOMER = (
    "booked plus actively held tickets one customer may have of this event; null: the server default "
    "(MAX_TICKETS_PER_CUSTOMER, never below max_tickets_per_booking). Lowering it keeps what customers "
    "have and refuses what would pass it"
)
_HOLD_SECONDS = "longest hold lifetime for this event; null: the server default (HOLD_TTL_MAX_SECONDS)"


class EventCreate(_EventTimes):
    title: Title = Field(examples=["Music Concert"])
    total_tickets: TicketCount = Field(examples=[50])
    venue: Venue | None = None
    start_time: AwareDatetime | None = Field(default=None, description="ISO 8601 with offset")
    end_time: AwareDatetime | None = None
    max_tickets_per_booking: PerBookingMax | None = Field(
        default=None, description="tickets one booking or hold may take; null: the server default"
    )
    max_tickets_per_customer: PerCustomerMax | None = Field(default=None, description=_PER_CUSTOMER)
    max_hold_seconds: HoldSeconds | None = Field(default=None, description=_HOLD_SECONDS)


class EventUpdate(_EventTimes):
    """Fields not sent stay as they are; venue and times may be cleared with null."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"title": "Music Concert (late show)"}]})

    title: Title | None = None
    total_tickets: TicketCount | None = None
    venue: Venue | None = None
    start_time: AwareDatetime | None = None
    end_time: AwareDatetime | None = None
    max_tickets_per_booking: PerBookingMax | None = None
    max_tickets_per_customer: PerCustomerMax | None = Field(default=None, description=_PER_CUSTOMER)
    max_hold_seconds: HoldSeconds | None = Field(default=None, description=_HOLD_SECONDS)

    @model_validator(mode="after")
    def _required_fields_not_null(self) -> EventUpdate:
        for name in ("title", "total_tickets"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self


class EventOut(BaseModel):
    id: int
    organizer_id: int
    title: str
    venue: str | None
    start_time: datetime | None
    end_time: datetime | None
    total_tickets: int
    available_tickets: int = Field(description="exact: expired holds already count as free")
    max_tickets_per_booking: int | None
    max_tickets_per_customer: int | None = Field(description="null: the server default")
    max_hold_seconds: int | None = Field(description="null: the server default")
    status: Literal["active", "cancelled"]
    created_at: datetime
    updated_at: datetime


def page_of(model: type[BaseModel], rows: list[dict[str, Any]], limit: int, offset: int) -> dict[str, Any]:
    """A page's fields from ``limit + 1`` fetched rows: the extra row says another page exists."""
    return {
        "items": [model.model_validate(r) for r in rows[:limit]],
        "limit": limit,
        "offset": offset,
        "next_offset": offset + limit if len(rows) > limit else None,
    }


class EventPage(BaseModel):
    items: list[EventOut]
    limit: int
    offset: int
    next_offset: int | None = Field(description="offset of the next page, null on the last")


Quantity = Annotated[int, Field(strict=True, ge=1, le=MAX_TICKETS_PER_EVENT)]


class BookingCreate(BaseModel):
    event_id: Id = Field(examples=[1])
    quantity: Quantity = 1


class BookingCancel(BaseModel):
    quantity: Quantity | None = Field(default=None, description="tickets to give back; null or absent: all")


class BookingOut(BaseModel):
    id: int
    event_id: int
    user_id: int
    quantity: int = Field(description="tickets the booking holds now")
    cancelled_quantity: int = 0
    status: Literal["confirmed", "cancelled"]
    hold_id: int | None = None
    created_at: datetime
    cancelled_at: datetime | None = None


class HoldCreate(BaseModel):
    quantity: Quantity = 1
    ttl_seconds: HoldSeconds | None = Field(
        default=None,
        description="how long to hold; absent: HOLD_TTL_SECONDS. Capped by the event's max_hold_seconds "
        "(else HOLD_TTL_MAX_SECONDS) and by the close of its sales (its end, else its start): "
        "the answer's expires_at says when the hold really ends",
    )


class HoldOut(BaseModel):
    id: int
    event_id: int
    user_id: int
    quantity: int
    status: Literal["active", "confirmed", "released", "expired"]
    expires_at: datetime
    created_at: datetime
    closed_at: datetime | None = None


class HoldPage(BaseModel):
    items: list[HoldOut]
    limit: int
    offset: int
    next_offset: int | None


class BookingPage(BaseModel):
    items: list[BookingOut]
    limit: int
    offset: int
    next_offset: int | None


class ErrorOut(BaseModel):
    """Every error body: a stable ``code`` to branch on and a message for people."""

    code: str = Field(examples=["sold_out"])
    message: str
    detail: str = Field(description="same as message, for clients that read FastAPI's field")
    details: dict[str, Any] | None = None
