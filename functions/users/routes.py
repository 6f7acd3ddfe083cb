"""Routes of the users function: registration, login and profile."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response

from shared.accounts import email_verification, sessions, users
from shared.platform.settings import get_settings
from shared.web.app import COMMON_ERRORS, RATE_LIMITED
from shared.web.deps import CurrentUser
from shared.web.ratelimit import (
    LoginRateLimit,
    PasswordChangeRateLimit,
    RefreshRateLimit,
    RegisterRateLimit,
    Rule,
    client_key,
    enforce,
    remember_registration_address,
)
from shared.web.schemas import (
    EmailVerify,
    ErrorOut,
    LoginForm,
    PasswordChange,
    RefreshIn,
    TokenOut,
    UserCreate,
    UserOut,
    VerificationQueued,
)

router = APIRouter(tags=["users"], responses=COMMON_ERRORS)


@router.post(
    "/users",
    status_code=201,
    response_model=UserOut,
    responses={
        409: {"model": ErrorOut, "description": "`email_taken`"},
        429: RATE_LIMITED,
        503: {"model": ErrorOut,
              "description": "`database_unavailable`, or `busy` (too many password hashes at once)"},
    },
    dependencies=[RegisterRateLimit],
)
def register(body: UserCreate, request: Request) -> dict[str, Any]:
    """Create an organizer or a customer account."""
    user = users.create_user(email=body.email, password=body.password, role=body.role, name=body.name)
    remember_registration_address(request, body.email)
    return user


@router.post(
    "/auth/token",
    response_model=TokenOut,
    responses={
        401: {"model": ErrorOut, "description": "`invalid_credentials`"},
        429: RATE_LIMITED,
    },
    dependencies=[LoginRateLimit],
)
def login(form: Annotated[LoginForm, Depends()]) -> TokenOut:
    """Exchange email (as `username`) and password for a short-lived bearer token and a
    single-use refresh token (OAuth2 password flow). Each login is its own session."""
    return _token_out(users.login(email=form.username, password=form.password))


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
        429: RATE_LIMITED,
    },
    dependencies=[RefreshRateLimit],
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
        429: {"model": ErrorOut, "description": "`rate_limited`: too many wrong current passwords"},
    },
    dependencies=[PasswordChangeRateLimit],
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


def _limit_verify(request: Request) -> None:
    """Token guesses per IP (256-bit tokens cannot be guessed; this spares the database)."""
    enforce([Rule.parse("verify_per_ip", f"verify-ip:{client_key(request)}",
                        get_settings().rate_limit_verify_per_ip)])


def _limit_resend(principal: CurrentUser) -> None:
    """Verification mails per account: the resend route must not become a mail cannon."""
    enforce([Rule.parse("verification_resend_per_user", f"verify-resend:{principal.user_id}",
                        get_settings().rate_limit_verification_resend)])


@router.post(
    "/users/verify",
    response_model=UserOut,
    responses={
        400: {"model": ErrorOut, "description": "`verification_invalid`"},
        409: {"model": ErrorOut, "description": "`verification_used`"},
        410: {"model": ErrorOut, "description": "`verification_expired` (or replaced by a newer one)"},
        429: RATE_LIMITED,
    },
    dependencies=[Depends(_limit_verify)],
)
def verify_email(body: EmailVerify) -> dict[str, Any]:
    """Confirm an email address with the token mailed to it (single use, expiring)."""
    return email_verification.verify(body.token)


@router.post(
    "/users/me/verification",
    status_code=202,
    response_model=VerificationQueued,
    responses={
        409: {"model": ErrorOut, "description": "`email_already_verified`"},
        429: RATE_LIMITED,
    },
    dependencies=[Depends(_limit_resend)],
)
def resend_verification(principal: CurrentUser) -> VerificationQueued:
    """Mail the caller a new verification token; earlier tokens stop working."""
    email_verification.resend(principal.user_id)
    return VerificationQueued(expires_in=get_settings().email_verification_ttl_seconds)
