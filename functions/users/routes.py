"""Routes of the users function: registration, login and profile."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from fastapi.security import OAuth2PasswordRequestForm

from shared import sessions, users
from shared.deps import CurrentUser
from shared.ratelimit import LoginRateLimit
from shared.schemas import ErrorOut, PasswordChange, RefreshIn, TokenOut, UserCreate, UserOut
from shared.web import COMMON_ERRORS

router = APIRouter(tags=["users"], responses=COMMON_ERRORS)


@router.post(
    "/users",
    status_code=201,
    response_model=UserOut,
    responses={409: {"model": ErrorOut, "description": "`email_taken`"}},
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
def login(form: Annotated[OAuth2PasswordRequestForm, Depends()]) -> TokenOut:
    """Exchange email (as `username`) and password for a short-lived bearer token and a
    single-use refresh token (OAuth2 password flow). Each login is its own session."""
    user = users.authenticate(email=form.username, password=form.password)
    return _token_out(sessions.start_session(user["id"]))


def _token_out(issued: sessions.IssuedTokens) -> TokenOut:
    return TokenOut.model_validate(dataclasses.asdict(issued))


@router.post(
    "/auth/refresh",
    response_model=TokenOut,
    responses={
        401: {
            "model": ErrorOut,
            "description": "`invalid_refresh_token` (unknown, expired or revoked); `refresh_token_reused` "
            "(already used: the whole session is revoked)",
        },
    },
)
def refresh(body: RefreshIn) -> TokenOut:
    """Trade a refresh token for a new access token and the next refresh token (rotation)."""
    return _token_out(sessions.refresh(body.refresh_token))


@router.post(
    "/auth/logout",
    status_code=204,
    responses={401: {"model": ErrorOut, "description": "Missing, invalid, expired or revoked token"}},
)
def logout(principal: CurrentUser) -> Response:
    """End the caller's session: its refresh token and access tokens stop working."""
    sessions.revoke_session(principal.session_id, reason="logout")
    return Response(status_code=204)


@router.put(
    "/users/me/password",
    status_code=204,
    responses={
        401: {"model": ErrorOut, "description": "Missing, invalid, expired or revoked token"},
        403: {"model": ErrorOut, "description": "`wrong_password` (the current password)"},
    },
)
def change_password(body: PasswordChange, principal: CurrentUser) -> Response:
    """Change the caller's password; every session of the account ends (sign in again)."""
    users.change_password(
        user_id=principal.user_id, current_password=body.current_password, new_password=body.new_password
    )
    return Response(status_code=204)


@router.get(
    "/users/me",
    response_model=UserOut,
    responses={401: {"model": ErrorOut, "description": "Missing, invalid or expired token"}},
)
def me(principal: CurrentUser) -> dict[str, Any]:
    """The caller's own account."""
    return users.get_user(principal.user_id)
