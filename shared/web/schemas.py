"""Request and response bodies: the API contract, validated before any SQL runs."""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from fastapi import Form
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from shared.accounts.emails import normalize_email
from shared.accounts.passwords import is_common_password
from shared.platform.settings import get_settings

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
    if not isinstance(text, str) or not _TIMESTAMP.fullmatch(text):  # fullmatch: `$` passes a final \n
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


# Bidirectional embeddings, overrides and isolates, and the implicit direction marks: they
# reorder what a reader sees (an email shown reversed, a title hiding text).
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Control characters (NUL cannot even be stored), lone surrogates (cannot be encoded) and
# line or paragraph separators: no single-line field of this API holds them.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})


def unsafe_text(value: str) -> str | None:
    """Why ``value`` may not be stored as text, or None. One rule for every text field.

    Format characters other than the direction controls (zero-width joiners in emoji and
    in Indic or Persian names) stay allowed.
    """
    for ch in value:
        if ch in _BIDI_CONTROLS:
            return "must not contain bidirectional control characters"
        category = unicodedata.category(ch)
        if category in _REFUSED_CATEGORIES:
            return "must not contain surrogates" if category == "Cs" else "must not contain control characters"
    return None


def _text(value: str) -> str:
    problem = unsafe_text(value)
    if problem:
        raise ValueError(problem)
    return value


# unsafe_text()'s rule as a JSON Schema character class, so the document states it: the
# categories spelled as code points (Cc, Zl and Zp are fixed by Unicode's stability policy;
# tests/web/test_contract.py checks the equality) and the direction controls. Surrogates are
# left out: a JSON Schema regex cannot name them and no valid JSON string carries one.
_TEXT_REFUSED = "\x00-\x1f\x7f-\x9f\u2028\u2029" + "".join(sorted(_BIDI_CONTROLS))
TEXT_PATTERN = f"^[^{_TEXT_REFUSED}]*$"


class _StatesTextRule:
    """Puts TEXT_PATTERN in a Text field's JSON Schema at the type level, so a field's own
    ``json_schema_extra`` adds to it instead of replacing it."""

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        schema = handler(core_schema)
        schema.setdefault("pattern", TEXT_PATTERN)
        return schema


def _email(value: str) -> str:
    """Stored as typed (trimmed); found and kept unique by :func:`normalize_email`."""
    value = value.strip()
    if not _EMAIL.match(value):  # stated in the schema (UserCreate's pattern)
        raise ValueError("is not a valid email address")
    # From here on, rules a JSON Schema cannot state: their own error type says so.
    key = normalize_email(value)
    if not _EMAIL.match(key) or len(key) > 320:
        raise PydanticCustomError("email_not_allowed", "is not a valid email address once normalized")
    # Nothing invisible or blank (zero-width, soft hyphen, no-break spaces), no private-use
    # or unassigned code points: each would make a look-alike of another address.
    if any(unicodedata.category(ch)[0] in "CZ" for ch in value):
        raise PydanticCustomError("email_not_allowed", "must not contain invisible, blank or unassigned characters")
    return value


def _encodable(value: str) -> str:
    """Secrets may hold any character but a lone surrogate (it has no UTF-8 encoding)."""
    if any(unicodedata.category(ch) == "Cs" for ch in value):
        raise ValueError("must not contain surrogates")
    return value


def _password(value: str) -> str:
    """A new password: encodable, long enough, not a well-known one (``errors[].type`` says which)."""
    settings = get_settings()
    minimum = settings.password_min_length
    if len(_encodable(value)) < minimum:
        raise PydanticCustomError(
            "password_too_short", "must be at least {minimum} characters", {"minimum": minimum}
        )
    if settings.password_check_common and is_common_password(value):
        raise PydanticCustomError("password_too_common", "is one of the most common passwords; choose another")
    return value


Id = Annotated[int, Field(strict=True, ge=1, le=ID_MAX), JSON_INTEGER]
Text = Annotated[str, AfterValidator(_text), _StatesTextRule()]
Title = Annotated[Text, Field(min_length=1, max_length=200)]
Venue = Annotated[Text, Field(max_length=200)]
TicketCount = Annotated[int, Field(strict=True, ge=1, le=MAX_TICKETS_PER_EVENT), JSON_INTEGER]
Email = Annotated[Text, Field(max_length=320), AfterValidator(_email)]
Password = Annotated[str, Field(max_length=256), AfterValidator(_password)]
# What a login form may carry: checked like any text, but never against registration rules
# (an account predates a stricter rule; a wrong guess is a 401, not a 422).
LoginPassword = Annotated[str, Field(max_length=256), AfterValidator(_encodable)]
Role = Literal["organizer", "customer"]


# The JSON Schema states what the email and password validators check where it can, so
# clients and the contract fuzzer (tests/web/test_contract.py) know it; the rest raises a type
# listed in UNSTATED_RULES. Python's whitespace (str.strip, \s) spelled out, as JSON Schema
# regexes (ECMA 262) have a different \s.
UNSTATED_RULES = frozenset({"email_not_allowed", "password_too_common"})
_SPACE = "\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_EMAIL_CHARS = f"[^@{_SPACE}{_TEXT_REFUSED}]+"
_EMAIL_TRIM = " \xa0\u1680\u2000-\u200a\u202f\u205f\u3000"  # what strip() removes that Text allows
# Text with something besides blanks: what a name that is stripped, then must not be empty, takes.
NON_BLANK_PATTERN = f"^[^{_TEXT_REFUSED}]*[^{_SPACE}{_TEXT_REFUSED}][^{_TEXT_REFUSED}]*$"


def _email_schema(schema: dict[str, Any]) -> None:
    if _EMAIL.pattern == r"^[^@\s]+@[^@\s]+\.[^@\s]+$":  # the rule _email applies after strip()
        schema["pattern"] = f"^[{_EMAIL_TRIM}]*{_EMAIL_CHARS}@{_EMAIL_CHARS}\\.{_EMAIL_CHARS}[{_EMAIL_TRIM}]*$"


def _password_schema(schema: dict[str, Any]) -> None:
    schema["minLength"] = get_settings().password_min_length


class UserCreate(BaseModel):
    email: Email = Field(examples=["organizer@test.com"], json_schema_extra=_email_schema)
    password: Password = Field(examples=["123"], json_schema_extra=_password_schema)
    role: Role
    name: Annotated[Text, Field(max_length=200)] | None = None


class LoginForm(OAuth2PasswordRequestForm):
    """The OAuth2 password form, its fields checked by the same text rule as every body."""

    def __init__(
        self,
        *,
        username: Annotated[Annotated[Text, Field(max_length=320)], Form(description="the email")],
        password: Annotated[LoginPassword, Form(json_schema_extra={"format": "password"})],
        grant_type: Annotated[str | None, Form(pattern="^password$")] = None,
        scope: Annotated[Text, Form()] = "",
        client_id: Annotated[Text | None, Form()] = None,
        client_secret: Annotated[LoginPassword | None, Form(json_schema_extra={"format": "password"})] = None,
    ) -> None:
        super().__init__(
            grant_type=grant_type, username=username, password=password, scope=scope,
            client_id=client_id, client_secret=client_secret,
        )


class UserOut(BaseModel):
    id: int
    email: str
    name: str | None
    role: Role
    created_at: datetime
    email_verified_at: datetime | None = Field(default=None, description="null until the email is verified")


class EmailVerify(BaseModel):
    """The token from the verification email; anything else is `verification_invalid`."""

    token: Annotated[Text, Field(min_length=1, max_length=512)]


class VerificationQueued(BaseModel):
    status: Literal["queued"] = "queued"
    expires_in: int = Field(description="seconds the new token will be valid once mailed")


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="access token lifetime, seconds")
    user_id: int
    role: Role
    refresh_token: str = Field(description="single use: POST /auth/refresh returns its successor")
    refresh_expires_in: int = Field(description="refresh token lifetime, seconds")


class RefreshIn(BaseModel):
    refresh_token: Annotated[Text, Field(min_length=1, max_length=200)]


class PasswordChange(BaseModel):
    current_password: LoginPassword  # as at login: any password that signs in can be changed
    new_password: Password


# Rules across fields that a JSON Schema cannot state: each answers 422 with its own code
# (shared/web/app.py), the code the services use for the same rule.
RULE_CODES = frozenset({"invalid_time_range"})


class _EventTimes(BaseModel):
    @model_validator(mode="after")
    def _end_not_before_start(self) -> Any:
        start, end = getattr(self, "start_time", None), getattr(self, "end_time", None)
        if start is not None and end is not None and end < start:
            raise PydanticCustomError("invalid_time_range", "end_time must not be before start_time")
        return self


PerBookingMax = Annotated[int, Field(strict=True, ge=1, le=MAX_TICKETS_PER_EVENT), JSON_INTEGER]
PerCustomerMax = Annotated[int, Field(strict=True, ge=1, le=MAX_TICKETS_PER_EVENT), JSON_INTEGER]
HOLD_SECONDS_MAX = 86_400
HoldSeconds = Annotated[int, Field(strict=True, ge=1, le=HOLD_SECONDS_MAX), JSON_INTEGER]
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
    start_time: Timestamp | None = None
    end_time: Timestamp | None = None
    max_tickets_per_booking: PerBookingMax | None = Field(
        default=None, description="tickets one booking or hold may take; null: the server default"
    )
    max_tickets_per_customer: PerCustomerMax | None = Field(default=None, description=_PER_CUSTOMER)
    max_hold_seconds: HoldSeconds | None = Field(default=None, description=_HOLD_SECONDS)
    currency: Currency = "EUR"


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
    max_tickets_per_customer: PerCustomerMax | None = Field(default=None, description=_PER_CUSTOMER)
    max_hold_seconds: HoldSeconds | None = Field(default=None, description=_HOLD_SECONDS)


CURRENCY_PATTERN = "^[A-Z]{3}$"
Currency = Annotated[str, Field(pattern=CURRENCY_PATTERN, description="ISO 4217 code, e.g. EUR")]


class TicketTypeOnSale(BaseModel):
    """A ticket type as customers see it on the event (the organizer's view: TicketTypeOut)."""

    id: int
    name: str
    description: str | None
    price_minor: int = Field(description="price in minor units of `currency` (cents); 0 is free")
    currency: str
    sales_start: datetime | None = Field(description="null: on sale from publication")
    sales_end: datetime | None = Field(description="null: until the event's sales close")
    min_per_order: int
    max_per_order: int | None = Field(description="null: the event's per-booking maximum")
    max_per_customer: int | None = Field(description="null: only the event's per-customer limit applies")
    available: int = Field(description="exact: the least room over the type's quotas, expired holds as free")
    on_sale: bool = Field(description="within its sales window now (an access code may open a presale)")


class EventOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": 1, "organizer_id": 1, "title": "Music Concert", "venue": "Arena",
        "start_time": "2030-06-01T18:00:00Z", "end_time": None, "total_tickets": 50,
        "available_tickets": 48, "max_tickets_per_booking": None, "max_tickets_per_customer": None,
        "max_hold_seconds": None, "status": "active", "currency": "EUR",
        "created_at": "2030-01-01T10:00:00Z", "updated_at": "2030-01-01T10:00:00Z",
        "ticket_types": [{
            "id": 1, "name": "General admission", "description": None, "price_minor": 2500,
            "currency": "EUR", "sales_start": None, "sales_end": None, "min_per_order": 1,
            "max_per_order": None, "max_per_customer": None, "available": 48, "on_sale": True,
        }],
    }]})

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
    currency: str = Field(description="ISO 4217: every ticket type of the event is priced in it")
    created_at: datetime
    updated_at: datetime
    ticket_types: list[TicketTypeOnSale] | None = Field(
        default=None,
        description="visible active types by position (hidden ones only with a valid `access_code`); "
        "null in listings (GET /events), which stay cheap: read the event for them",
    )


class _Page(BaseModel):
    """A page of a listing (fields in each subclass, so each schema lists ``items`` first)."""

    @classmethod
    def of(cls, rows: list[dict[str, Any]], limit: int, offset: int) -> Self:
        """The page from ``limit + 1`` fetched rows: the extra row says another page exists."""
        return cls.model_validate({
            "items": rows[:limit],
            "limit": limit,
            "offset": offset,
            "next_offset": offset + limit if len(rows) > limit else None,
        })


class EventPage(_Page):
    items: list[EventOut]
    limit: int
    offset: int
    next_offset: int | None = Field(description="offset of the next page, null on the last")


Quantity = Annotated[int, Field(strict=True, ge=1, le=MAX_TICKETS_PER_EVENT), JSON_INTEGER]


AccessCode = Annotated[
    str,
    Field(min_length=1, max_length=64, description="unlocks hidden types and opens presales; an invalid one "
          "counts as a guess (ACCESS_CODE_ATTEMPTS per ten minutes, then 429)"),
]
MAX_ORDER_LINES = 50


class OrderLine(BaseModel):
    ticket_type_id: Id = Field(examples=[1])
    quantity: Quantity = Field(examples=[2])


def _absent(value: Any) -> bool:
    return value is None


class _Order(BaseModel):
    """An order: `quantity` tickets of the event's default type, or `lines` (not both)."""

    quantity: Quantity = Field(default=1, description="tickets of the event's default type (not with `lines`)")
    # Fields added after clients stored Idempotency-Keys are left out of a request's dump
    # (its fingerprint) while absent, so a key answered before they existed still replays.
    lines: list[OrderLine] | None = Field(
        default=None, min_length=1, max_length=MAX_ORDER_LINES, exclude_if=_absent,
        description="ticket types and quantities, each type once; all or nothing (not with `quantity`)",
    )
    access_code: AccessCode | None = Field(default=None, exclude_if=_absent)

    # The schema says it too, so clients (and schema-driven fuzzers) see the rule.
    model_config = ConfigDict(json_schema_extra={"not": {"required": ["lines", "quantity"]}})

    @model_validator(mode="after")
    def _lines_or_quantity(self) -> Self:
        if {"lines", "quantity"} <= self.model_fields_set:
            raise ValueError("send `lines` or `quantity`, not both")
        return self

    def order_lines(self) -> list[tuple[int, int]] | None:
        """(ticket_type_id, quantity) per line, or None for the default type."""
        return None if self.lines is None else [(line.ticket_type_id, line.quantity) for line in self.lines]


class BookingCreate(_Order):
    event_id: Id = Field(examples=[1])


class BookingCancel(BaseModel):
    quantity: Quantity | None = Field(
        default=None, description="tickets to give back (of the line `line_id`); null or absent: all of it"
    )
    line_id: Id | None = Field(
        default=None,
        description="the line to give tickets back of; needed with `quantity` when the booking has several",
    )


class BookingLineOut(BaseModel):
    id: int
    ticket_type_id: int
    quantity: int = Field(description="tickets of the line the booking holds now")
    cancelled_quantity: int = 0
    unit_price_minor: int = Field(description="the type's price when ordered, in minor units of `currency`")


class BookingOut(BaseModel):
    id: int
    event_id: int
    user_id: int
    quantity: int = Field(description="tickets the booking holds now (the sum of its lines)")
    cancelled_quantity: int = 0
    status: Literal["pending_payment", "confirmed", "expired", "cancelled", "refunded"] = Field(
        description="free orders are confirmed at once; the other states wait for the payment step"
    )
    hold_id: int | None = None
    created_at: datetime
    cancelled_at: datetime | None = None
    lines: list[BookingLineOut] = []
    total_minor: int = Field(default=0, description="what the tickets it holds now cost: its lines' remaining "
                             "quantity x unit price (0 once cancelled), in minor units of `currency`")
    currency: str = "EUR"


class HoldCreate(_Order):
    ttl_seconds: HoldSeconds | None = Field(
        default=None,
        description="how long to hold; absent: HOLD_TTL_SECONDS. Capped by the event's max_hold_seconds "
        "(else HOLD_TTL_MAX_SECONDS) and by the close of its sales (its end, else its start): "
        "the answer's expires_at says when the hold really ends",
    )


class HoldLineOut(BaseModel):
    ticket_type_id: int
    quantity: int
    unit_price_minor: int = Field(
        description="the type's price when the hold was made, in minor units of `currency`: what confirming "
        "the hold while it is live charges (an expired hold confirmed is a new grant, at today's price)"
    )


class HoldOut(BaseModel):
    id: int
    event_id: int
    user_id: int
    quantity: int = Field(description="tickets held (the sum of its lines)")
    status: Literal["active", "confirmed", "released", "expired"]
    expires_at: datetime
    created_at: datetime
    closed_at: datetime | None = None
    lines: list[HoldLineOut] = []
    total_minor: int = Field(
        default=0, description="what its lines cost at the prices when the hold was made, in minor units"
    )
    currency: str = "EUR"


class HoldPage(_Page):
    items: list[HoldOut]
    limit: int
    offset: int
    next_offset: int | None


class BookingPage(_Page):
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
