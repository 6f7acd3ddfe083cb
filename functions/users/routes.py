"""Routes of the users function: registration, login and profile."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from shared import email_verification, users
from shared.deps import CurrentUser
from shared.ratelimit import LoginRateLimit, RegisterRateLimit, Rule, client_ip, enforce
from shared.schemas import EmailVerify, ErrorOut, LoginForm, TokenOut, UserCreate, UserOut, VerificationQueued
from shared.security import issue_token
from shared.settings import get_settings
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


def _limit_verify(request: Request) -> None:
    """Token guesses per IP (256-bit tokens cannot be guessed; this spares the database)."""
    enforce([Rule.parse("verify_per_ip", f"verify-ip:{client_ip(request)}",
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
        429: {"model": ErrorOut, "description": "`rate_limited` (see `Retry-After`)"},
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
        429: {"model": ErrorOut, "description": "`rate_limited` (see `Retry-After`)"},
    },
    dependencies=[Depends(_limit_resend)],
)
def resend_verification(principal: CurrentUser) -> VerificationQueued:
    """Mail the caller a new verification token; earlier tokens stop working."""
    email_verification.resend(principal.user_id)
    return VerificationQueued(expires_in=get_settings().email_verification_ttl_seconds)
