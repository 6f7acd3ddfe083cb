"""Routes of the users function: registration, login and profile."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from shared import users
from shared.deps import CurrentUser
from shared.ratelimit import LoginRateLimit, RegisterRateLimit
from shared.schemas import ErrorOut, LoginForm, TokenOut, UserCreate, UserOut
from shared.security import issue_token
from shared.web import COMMON_ERRORS

router = APIRouter(tags=["users"], responses=COMMON_ERRORS)


@router.post(
    "/users",
    status_code=201,
    response_model=UserOut,
    responses={
        409: {"model": ErrorOut, "description": "`email_taken`"},
        429: {"model": ErrorOut, "description": "`rate_limited` (see `Retry-After`)"},
        503: {"model": ErrorOut,
              "description": "`database_unavailable`, or `busy` (too many password hashes at once)"},
    },
    dependencies=[RegisterRateLimit],
)
def register(body: UserCreate) -> dict[str, Any]:
    """Create an organizer or a customer account."""
    return users.create_user(
        email=body.email, password=body.password, role=body.role, name=body.name
    )


@router.post(
    "/auth/token",
    response_model=TokenOut,
    responses={
        401: {"model": ErrorOut, "description": "`invalid_credentials`"},
        429: {"model": ErrorOut, "description": "`rate_limited` (see `Retry-After`)"},
    },
    dependencies=[LoginRateLimit],
)
def login(form: Annotated[LoginForm, Depends()]) -> TokenOut:
    """Exchange email (as `username`) and password for a bearer token (OAuth2 password flow)."""
    user = users.authenticate(email=form.username, password=form.password)
    token, ttl = issue_token(user["id"], user["role"])
    return TokenOut(access_token=token, expires_in=ttl, user_id=user["id"], role=user["role"])


@router.get(
    "/users/me",
    response_model=UserOut,
    responses={401: {"model": ErrorOut, "description": "Missing, invalid or expired token"}},
)
def me(principal: CurrentUser) -> dict[str, Any]:
    """The caller's own account."""
    return users.get_user(principal.user_id)
