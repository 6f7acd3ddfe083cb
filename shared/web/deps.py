"""FastAPI dependencies, named once so routes read like prose."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Path, Query
from fastapi.security import OAuth2PasswordBearer
from pydantic import BeforeValidator
from starlette.concurrency import run_in_threadpool

from shared.accounts import sessions
from shared.accounts.tokens import Principal, decode_token
from shared.platform.errors import Forbidden, Unauthorized
from shared.web.schemas import ID_MAX

bearer_token = OAuth2PasswordBearer(tokenUrl="/auth/token", auto_error=False)


# Dependencies that only compute are ``async``: a sync one costs a thread-pool hop each.
async def token_principal(token: Annotated[str | None, Depends(bearer_token)]) -> Principal:
    """The token's principal, signature and lifetime checked; revocation NOT checked.

    Only for routes that check revocation themselves in the same Redis round trip as
    their rate limit (shared/web/granting.py ``Granting``).
    """
    if not token:
        raise Unauthorized("not_authenticated", "A bearer token is required")
    return decode_token(token)


async def current_principal(principal: Annotated[Principal, Depends(token_principal)]) -> Principal:
    """A valid token whose session is still active (one Redis read, off the event loop)."""
    await run_in_threadpool(sessions.ensure_active, principal)
    return principal


async def _organizer(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    if principal.role != "organizer":
        raise Forbidden("organizer_only", "Only organizers can do this")
    return principal


def customer_only(principal: Principal) -> Principal:
    if principal.role != "customer":
        raise Forbidden("customer_only", "Only customers can do this")
    return principal


async def _customer(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    return customer_only(principal)


def require_self(principal: Principal, user_id: int) -> None:
    """A path that names a user must name the caller."""
    if principal.user_id != user_id:
        raise Forbidden("not_your_account", "You can only act as yourself")


CurrentUser = Annotated[Principal, Depends(current_principal)]
Organizer = Annotated[Principal, Depends(_organizer)]
Customer = Annotated[Principal, Depends(_customer)]

_DECIMAL = re.compile(r"0|[1-9][0-9]*", re.ASCII)


def _decimal(value: object) -> object:
    """A path or query integer is written as the schema says: plain decimal digits.

    Pydantic's lax parsing would also take ``1.0``, ``+1``, `` 1``, ``01`` and ``5_0``
    (body integers are strict already); one resource must have one URL.
    """
    if isinstance(value, str) and not _DECIMAL.fullmatch(value):
        raise ValueError("must be a whole number written in plain decimal digits")
    return value


Decimal = BeforeValidator(_decimal)

EventId = Annotated[int, Path(ge=1, le=ID_MAX, description="Event id"), Decimal]
BookingId = Annotated[int, Path(ge=1, le=ID_MAX, description="Booking id"), Decimal]
UserId = Annotated[int, Path(ge=1, le=ID_MAX, description="User id; must be the caller"), Decimal]
Limit = Annotated[int, Query(ge=1, le=100, description="Page size"), Decimal]
Offset = Annotated[int, Query(ge=0, le=1_000_000, description="Items to skip"), Decimal]

HoldId = Annotated[int, Path(ge=1, le=ID_MAX, description="Hold id"), Decimal]
