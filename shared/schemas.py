"""Request and response bodies: the API contract, validated before any SQL runs."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from shared.settings import get_settings

BIGINT_MAX = 2**63 - 1
# Ids and counts a client sends are JSON-safe integers (2**53 - 1, what JavaScript and every
# float64 JSON parser keep exact): above it a schema bound compared as a double says "valid"
# to one side and "too large" to the other. A bigserial id never gets near it.
ID_MAX = 2**53 - 1


def _integral(value: Any) -> Any:
    # JSON has one number type: 50.0 is the integer 50 (JSON Schema agrees); 1.5, "50" and
    # true stay refused by the strict check after this.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# On every integer field of a body, after its bounds (so they stay `minimum`/`maximum` in the
# JSON Schema): a JSON number with no fractional part, never a string or a boolean.
JSON_INTEGER = BeforeValidator(_integral)

# Every timestamp a client sends: an RFC 3339 date-time string with an offset, years
# 1900-2999 as written. Checked as written, not after conversion to UTC, so the JSON Schema
# states exactly what is accepted (the pattern below); with an offset of at most 23:59 the
# UTC value stays between 1899-12-31 and 3000-01-02, which migration 0006 enforces in the
# database and Python reads back in any time zone. Integers (Unix times), dates without a
# time, leap seconds and other spellings are refused: the schema says `date-time` string.
TIMESTAMP_PATTERN = (
    r"^(19|2[0-9])[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]+)?"
    r"([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
_TIMESTAMP = re.compile(TIMESTAMP_PATTERN)
TIMESTAMP_RULE = "an RFC 3339 date-time with an offset, years 1900 to 2999 (e.g. 2030-06-01T20:00:00+02:00)"


def _timestamp_text(value: Any) -> Any:
    text = value.isoformat() if isinstance(value, datetime) else value  # Python callers
    if not isinstance(text, str) or not _TIMESTAMP.match(text):
        raise PydanticCustomError("timestamp", "must be {rule}", {"rule": TIMESTAMP_RULE})
    return value


Timestamp = Annotated[
    AwareDatetime,
    BeforeValidator(_timestamp_text),
    WithJsonSchema(
        {"type": "string", "format": "date-time", "pattern": TIMESTAMP_PATTERN, "description": TIMESTAMP_RULE}
    ),
]

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


Id = Annotated[int, Field(strict=True, ge=1, le=ID_MAX), JSON_INTEGER]
Text = Annotated[str, AfterValidator(_no_nul)]
Title = Annotated[Text, Field(min_length=1, max_length=200)]
Venue = Annotated[Text, Field(max_length=200)]
TicketCount = Annotated[int, Field(strict=True, ge=1, le=MAX_TICKETS_PER_EVENT), JSON_INTEGER]
Email = Annotated[Text, Field(max_length=320), AfterValidator(_email)]
Password = Annotated[Text, Field(max_length=256), AfterValidator(_password)]
Role = Literal["organizer", "customer"]


# The JSON Schema states what the email and password validators check, so clients and the
# contract fuzzer (tests/test_contract.py) know it. Python's whitespace (str.strip, \s) spelled
# out, as JSON Schema regexes (ECMA 262) have a different \s.
_SPACE = "\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_EMAIL_CHARS = f"[^@{_SPACE}]+"


def _email_schema(schema: dict[str, Any]) -> None:
    if _EMAIL.pattern == r"^[^@\s]+@[^@\s]+\.[^@\s]+$":  # the rule _email applies after strip()
        schema["pattern"] = f"^[{_SPACE}]*{_EMAIL_CHARS}@{_EMAIL_CHARS}\\.{_EMAIL_CHARS}[{_SPACE}]*$"


def _password_schema(schema: dict[str, Any]) -> None:
    schema["minLength"] = get_settings().password_min_length


class UserCreate(BaseModel):
    email: Email = Field(examples=["organizer@test.com"], json_schema_extra=_email_schema)
    password: Password = Field(examples=["123"], json_schema_extra=_password_schema)
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


# Rules across fields that a JSON Schema cannot state: each answers 422 with its own code
# (shared/web.py), the code the services use for the same rule.
RULE_CODES = frozenset({"invalid_time_range"})


class _EventTimes(BaseModel):
    @model_validator(mode="after")
    def _end_not_before_start(self) -> Any:
        start, end = getattr(self, "start_time", None), getattr(self, "end_time", None)
        if start is not None and end is not None and end < start:
            raise PydanticCustomError("invalid_time_range", "end_time must not be before start_time")
        return self


PerBookingMax = Annotated[int, Field(strict=True, ge=1, le=MAX_TICKETS_PER_EVENT), JSON_INTEGER]


class EventCreate(_EventTimes):
    title: Title = Field(examples=["Music Concert"])
    total_tickets: TicketCount = Field(examples=[50])
    venue: Venue | None = None
    start_time: Timestamp | None = None
    end_time: Timestamp | None = None
    max_tickets_per_booking: PerBookingMax | None = Field(
        default=None, description="tickets one booking or hold may take; null: the server default"
    )


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)  # "not sent" is not a value a client could send


class EventUpdate(_EventTimes):
    """Fields not sent stay as they are; venue and times may be cleared with null.

    ``title`` and ``total_tickets`` may be omitted but never null, and the schema says so
    (a default of None without ``| None``): read only the fields in ``model_fields_set``.
    """

    model_config = ConfigDict(json_schema_extra={"examples": [{"title": "Music Concert (late show)"}]})

    title: Title = Field(default=None, json_schema_extra=_no_default)  # type: ignore[assignment]
    total_tickets: TicketCount = Field(default=None, json_schema_extra=_no_default)  # type: ignore[assignment]
    venue: Venue | None = None
    start_time: Timestamp | None = None
    end_time: Timestamp | None = None
    max_tickets_per_booking: PerBookingMax | None = None


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


Quantity = Annotated[int, Field(strict=True, ge=1, le=MAX_TICKETS_PER_EVENT), JSON_INTEGER]


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
    ttl_seconds: Annotated[int, Field(strict=True, ge=1, le=86_400), JSON_INTEGER] | None = Field(
        default=None, description="how long to hold; absent: the server default, capped by its maximum"
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
