"""Every error code a route can answer, with its HTTP status and meaning: the one definition.

A route declares the codes it can answer, ``responses=errors("event_not_found", ...)``,
and :func:`document_errors` adds to every operation the codes the app factory answers on
its own (a slow or oversized body, validation, the database, a bearer token). Both render
one line per code from :data:`CATALOGUE`, grouped by status, so the OpenAPI document
cannot give one code two statuses or two meanings. tests/web/test_error_docs.py checks
that every code raised in the code base is here and that the documents agree with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.ticketing.inventory import REFUSAL_CODES
from shared.web.schemas import ErrorOut


@dataclass(frozen=True)
class ErrorCode:
    status: int
    meaning: str


CATALOGUE: dict[str, ErrorCode] = {
    # -- answered by the app factory (document_errors) ------------------------------------
    "invalid_json": ErrorCode(400, "the body cannot be parsed (not JSON, not UTF-8, a broken form)"),
    "request_timeout": ErrorCode(408, "the body did not arrive within `BODY_READ_TIMEOUT_SECONDS`"),
    "payload_too_large": ErrorCode(413, "the body is larger than `MAX_BODY_BYTES` (any route, body or not)"),
    "unsupported_media_type": ErrorCode(415, "a JSON body sent as a form or text"),
    "validation_error": ErrorCode(
        422, "a parameter or body field is invalid (`details.errors` says which)"
    ),
    "database_unavailable": ErrorCode(
        503, "the database is unreachable, or failed while committing a booking (see `Retry-After`)"
    ),
    "not_authenticated": ErrorCode(401, "no bearer token"),
    "invalid_token": ErrorCode(401, "the bearer token is malformed, forged or not yet valid"),
    "token_expired": ErrorCode(401, "the bearer token has expired"),
    "token_revoked": ErrorCode(401, "the token's session has ended (logout, password change, a reused refresh token)"),
    "unknown_user": ErrorCode(401, "the token's user no longer exists"),
    # -- who may do what ----------------------------------------------------------------
    "customer_only": ErrorCode(403, "only customers can do this"),
    "organizer_only": ErrorCode(403, "only organizers can do this"),
    "not_your_account": ErrorCode(403, "the path names another user than the caller"),
    "not_event_owner": ErrorCode(403, "the event belongs to another organizer"),
    # -- accounts ---------------------------------------------------------------------------
    "email_taken": ErrorCode(409, "an account with this email, or one that looks the same, exists"),
    "invalid_credentials": ErrorCode(401, "wrong email or password"),
    "invalid_refresh_token": ErrorCode(401, "the refresh token is unknown, expired or revoked"),
    "refresh_token_reused": ErrorCode(401, "the refresh token was already used: the whole session is revoked"),
    "wrong_password": ErrorCode(403, "the current password is wrong"),
    "user_not_found": ErrorCode(404, "the account no longer exists"),
    "busy": ErrorCode(503, "too many password hashes at once (see `Retry-After`)"),
    "verification_invalid": ErrorCode(400, "no such verification token"),
    "verification_used": ErrorCode(409, "the verification token was already used"),
    "verification_expired": ErrorCode(410, "the verification token expired (or was replaced by a newer one)"),
    "email_already_verified": ErrorCode(409, "the caller's email address is verified already"),
    "rate_limited": ErrorCode(
        429, "too many requests (see `Retry-After`); on login and password change, wrong passwords count too"
    ),
    # -- events -----------------------------------------------------------------------------
    "event_not_found": ErrorCode(404, "no such event"),
    "event_cancelled": ErrorCode(409, "the event is cancelled"),
    "event_ended": ErrorCode(
        409, "the event's end, or its start when it has no end, has passed (details: `ended_at`)"
    ),
    "invalid_time_range": ErrorCode(422, "end_time is before start_time"),
    "capacity_below_sold": ErrorCode(
        409, "`total_tickets` or a quota's size below what is sold plus held (details: `sold`, `held`, `requested`;"
        " a quota's `quota_id`, `quota`)"
    ),
    # -- the catalog: ticket types, quotas, access codes ------------------------------------
    "ticket_type_not_found": ErrorCode(404, "no such ticket type of this event (details: `ticket_type_id`)"),
    "ticket_type_has_sales": ErrorCode(409, "the ticket type was ordered or held: deactivate it instead"),
    "default_ticket_type": ErrorCode(409, "the default ticket type (what `{event_id, quantity}` books) stays"),
    "duplicate_ticket_type": ErrorCode(400, "a ticket type is listed more than once"),
    "invalid_sales_window": ErrorCode(422, "sales_end is not after sales_start (as stored, for a field not sent)"),
    "invalid_order_bounds": ErrorCode(422, "min_per_order above a maximum (the type's or the event's): never buyable"),
    "quota_not_found": ErrorCode(404, "no such quota of this event (details: `quota_id`)"),
    "quota_membership_locked": ErrorCode(
        409, "a ticket type with sold or held tickets cannot join or leave a quota (details: `ticket_type_ids`)"
    ),
    "event_quota": ErrorCode(
        409, "the event quota follows the event (size: `total_tickets` via PUT /events; every type); never deleted"
    ),
    "access_code_invalid": ErrorCode(
        400, "no usable access code of this event by that name (unknown, inactive, outside its window: one answer)"
    ),
    "access_code_taken": ErrorCode(409, "the event already has this access code (codes ignore case)"),
    "access_code_not_found": ErrorCode(404, "no such access code of this event"),
    "max_uses_below_uses": ErrorCode(409, "max_uses below the code's uses so far (details: `uses`, `requested`)"),
    "invalid_validity_window": ErrorCode(422, "valid_until is not after valid_from"),
    # -- tickets: bookings and holds ----------------------------------------------------------
    "sold_out": ErrorCode(400, "no tickets left in a quota the order needs (details: `quota_id`, `quota`)"),
    "insufficient_tickets": ErrorCode(
        400, "fewer tickets left in a quota than the order needs (details: `available`, `requested`, `quota_id`, "
        "`quota`, `ticket_type_id`)"
    ),
    "quantity_too_large": ErrorCode(
        400, "more than one booking may take (details: the event's `max_quantity`; for a line, its `ticket_type_id`)"
    ),
    "quantity_below_minimum": ErrorCode(
        400, "a line below its type's per-order minimum (details: `ticket_type_id`, `min_quantity`)"
    ),
    "ticket_type_inactive": ErrorCode(409, "the ticket type is no longer sold (details: `ticket_type_id`)"),
    "sales_not_started": ErrorCode(
        409,
        "the type's sales have not started and no code opens its presale (details: `ticket_type_id`, `sales_start`)",
    ),
    "sales_ended": ErrorCode(409, "the type's sales have ended (details: `ticket_type_id`, `sales_end`)"),
    "access_code_exhausted": ErrorCode(409, "the access code was used as often as it may (details: `max_uses`)"),
    "type_limit_exceeded": ErrorCode(
        400,
        "this customer's booked plus actively held tickets of the type would pass its per-customer limit "
        "(details: `ticket_type_id`, `limit`, `has`, `requested`)",
    ),
    "customer_limit_exceeded": ErrorCode(
        400,
        "this customer's booked plus actively held tickets of the event would pass its per-customer "
        "limit (details: `limit`, `booked`, `held`, `requested`)",
    ),
    "contention": ErrorCode(
        503,
        "lost every race for free tickets or waited its turn too long: retry after `Retry-After`, "
        "nothing was booked",
    ),
    "booking_not_found": ErrorCode(404, "no such booking of the caller's, nor of an event they organize"),
    "cancel_exceeds_booking": ErrorCode(
        409, "more tickets given back than the booking holds (details: `held`, `requested`)"
    ),
    "line_required": ErrorCode(
        400, "a quantity to cancel of a booking with several lines needs `line_id` (details: `line_ids`)"
    ),
    "booking_line_not_found": ErrorCode(404, "the booking has no line `line_id`"),
    "hold_not_found": ErrorCode(404, "no such hold of the caller's"),
    "hold_expired": ErrorCode(409, "the hold expired and its tickets are gone (details say how many are left)"),
    "hold_released": ErrorCode(409, "the hold was released"),
    # -- Idempotency-Key --------------------------------------------------------------------
    "request_in_progress": ErrorCode(409, "a request with the same Idempotency-Key is still running"),
    "idempotency_key_reused": ErrorCode(422, "the Idempotency-Key was used with a different request"),
}

# The app factory answers these on every operation; with a request body, or a bearer
# token, the next two groups as well.
EVERY_ROUTE = ("request_timeout", "payload_too_large", "validation_error", "database_unavailable")
WITH_BODY = ("invalid_json", "unsupported_media_type")
WITH_TOKEN = ("not_authenticated", "invalid_token", "token_expired", "token_revoked", "unknown_user")

# Why a request for tickets (a booking, a hold, a hold's confirmation) can be refused:
# the grant rules' codes, and losing every race for free tickets. A hold's confirmation
# can answer each: an expired hold is granted again under every rule, with its code
# (``access_code_invalid`` once the code was deactivated or its window closed).
GRANT_REFUSALS = (*REFUSAL_CODES, "contention")
# What a request naming its own order (a booking, a hold) adds: a type listed twice.
ORDER_REFUSALS = (*GRANT_REFUSALS, "duplicate_ticket_type")
# What a route taking an Idempotency-Key adds (shared/web/idempotent.py).
KEYED = ("request_in_progress", "idempotency_key_reused")


def _line(code: str) -> str:
    return f"- `{code}`: {CATALOGUE[code].meaning}"


def errors(*codes: str) -> dict[int | str, dict[str, Any]]:
    """A route's ``responses`` for ``codes``: one entry per status, one line per code."""
    lines: dict[int, list[str]] = {}
    for code in dict.fromkeys(codes):
        lines.setdefault(CATALOGUE[code].status, []).append(_line(code))
    return {status: {"model": ErrorOut, "description": "\n".join(found)} for status, found in sorted(lines.items())}


_HTTP_OPERATIONS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
_ERROR_REF = {"$ref": "#/components/schemas/ErrorOut"}
# FastAPI's own 422 body, which this app never sends (validation errors are ErrorOut too).
_FASTAPI_422 = {"$ref": "#/components/schemas/HTTPValidationError"}


def _add(responses: dict[str, Any], code: str) -> None:
    """Document ``code`` under its status; a route's own entry keeps its text and gains the line."""
    key = str(CATALOGUE[code].status)
    own = responses.get(key)
    if own is None or own.get("content", {}).get("application/json", {}).get("schema") == _FASTAPI_422:
        responses[key] = {"description": _line(code), "content": {"application/json": {"schema": _ERROR_REF}}}
    elif f"`{code}`" not in own.get("description", ""):
        text = own.get("description", "")
        own["description"] = f"{text}\n{_line(code)}" if text.startswith("- ") else f"{text}\n\n{_line(code)}".lstrip()


def document_errors(openapi: dict[str, Any]) -> dict[str, Any]:
    """Document the factory's own errors on every operation that can answer them.

    Every operation: 408, 413 (the body limit applies whether or not a route reads a
    body), 422 and 503. Every operation with a request body (JSON or form): 400 and 415.
    Every operation that takes a bearer token: 401. Done on the generated document, so a
    route added later by anyone, in any router, is documented the same way.
    """
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault("ErrorOut", ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}"))
    for path_item in openapi.get("paths", {}).values():
        for method, operation in path_item.items():
            if method not in _HTTP_OPERATIONS:
                continue
            responses = operation.setdefault("responses", {})
            codes = (
                *EVERY_ROUTE,
                *(WITH_BODY if "requestBody" in operation else ()),
                *(WITH_TOKEN if operation.get("security") else ()),
            )
            for code in codes:
                _add(responses, code)
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return openapi
