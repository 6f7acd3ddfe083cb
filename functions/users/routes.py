"""Routes of the users function: registration, login and profile."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response

from shared.accounts import email_verification, sessions, users
from shared.web.deps import CurrentUser
from shared.web.error_docs import errors
from shared.web.ratelimit import (
    LoginRateLimit,
    PasswordChangeRateLimit,
    RefreshRateLimit,
    Registration,
    VerificationResendRateLimit,
    VerifyRateLimit,
)
from shared.web.schemas import (
    EmailVerify,
    LoginForm,
    PasswordChange,
    RefreshIn,
    TokenOut,
    UserOut,
    VerificationQueued,
)

router = APIRouter(tags=["users"])


@router.post(
    "/users",
    status_code=201,
    response_model=UserOut,
    responses=errors("email_taken", "rate_limited", "busy"),
)
def register(body: Registration) -> dict[str, Any]:
    """Create an organizer or a customer account."""
    return users.create_user(email=body.email, password=body.password, role=body.role, name=body.name)


@router.post(
    "/auth/token",
    response_model=TokenOut,
    responses=errors("invalid_credentials", "rate_limited", "busy"),
    dependencies=[LoginRateLimit],
)
def login(form: Annotated[LoginForm, Depends()]) -> sessions.IssuedTokens:
    """Exchange email (as `username`) and password for a short-lived bearer token and a
    single-use refresh token (OAuth2 password flow). Each login is its own session."""
    return users.login(email=form.username, password=form.password)


@router.post(
    "/auth/refresh",
    response_model=TokenOut,
    responses=errors("invalid_refresh_token", "refresh_token_reused", "rate_limited"),
    dependencies=[RefreshRateLimit],
)
def refresh(body: RefreshIn) -> sessions.IssuedTokens:
    """Trade a refresh token for a new access token and the next refresh token (rotation)."""
    return sessions.refresh(body.refresh_token)


@router.post("/auth/logout", status_code=204)
def logout(principal: CurrentUser) -> Response:
    """End the caller's session: its refresh token and access tokens stop working."""
    sessions.revoke_session(principal.session_id, reason="logout")
    return Response(status_code=204)


@router.put(
    "/users/me/password",
    status_code=204,
    responses=errors("wrong_password", "user_not_found", "rate_limited", "busy"),
    dependencies=[PasswordChangeRateLimit],
)
def change_password(body: PasswordChange, principal: CurrentUser) -> Response:
    """Change the caller's password; every session of the account ends (sign in again)."""
    users.change_password(
        user_id=principal.user_id, current_password=body.current_password, new_password=body.new_password
    )
    return Response(status_code=204)


@router.get("/users/me", response_model=UserOut, responses=errors("user_not_found"))
def me(principal: CurrentUser) -> dict[str, Any]:
    """The caller's own account."""
    return users.get_user(principal.user_id)


@router.post(
    "/users/verify",
    response_model=UserOut,
    responses=errors("verification_invalid", "verification_used", "verification_expired", "rate_limited"),
    dependencies=[VerifyRateLimit],
)
def verify_email(body: EmailVerify) -> dict[str, Any]:
    """Confirm an email address with the token mailed to it (single use, expiring)."""
    return email_verification.verify(body.token)


@router.post(
    "/users/me/verification",
    status_code=202,
    response_model=VerificationQueued,
    responses=errors("email_already_verified", "user_not_found", "rate_limited"),
    dependencies=[VerificationResendRateLimit],
)
def resend_verification(principal: CurrentUser) -> VerificationQueued:
    """Mail the caller a new verification token; earlier tokens stop working."""
    return VerificationQueued(expires_in=email_verification.resend(principal.user_id))
