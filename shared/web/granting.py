"""What a ticket-granting route needs of its request, as one FastAPI dependency.

FastAPI solves a dependency tree anew on every request (a node costs cache-key lookups,
parameter validation and a call): the granting routes took the caller (token, session,
rate limit, customer role), the lanes flag, the offload and the Idempotency-Key as some ten
nodes. :data:`Granting` is two (the key's node over the rate-limited caller's, which is
the bearer scheme's): the same OpenAPI (security scheme, header parameter) and the same order of
refusals: 401 (token, revoked session), 429, 403 ``customer_only``, then a malformed key
(422, with the body's errors), then the key's own refusals when the service runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Response
from fastapi.security import OAuth2PasswordBearer
from fastapi.security.base import SecurityBase

from shared.accounts.tokens import Principal
from shared.platform.threads import Offload, offload_for
from shared.ticketing import coalescing
from shared.web.deps import bearer_token, customer_only, token_principal
from shared.web.idempotent import Idempotency, IdempotencyKey
from shared.web.ratelimit import limit_booking


@dataclass(frozen=True, slots=True)
class Grant:
    """The rate-limited customer, where the booking may wait and block, and its key's handle."""

    customer: Principal
    lanes: bool  # may wait in its event's coalescing lane (a server, not a Lambda event)
    offload: Offload  # where its blocking calls run
    once: Idempotency


class _GrantingCaller(SecurityBase):
    """The bearer scheme's node that also checks the caller: token, session and rate limit in
    one Redis round trip, the customer role. One node where a dependency on the scheme is two
    (about 10 us each); OpenAPI sees the scheme itself (same model, same name)."""

    def __init__(self, scheme: OAuth2PasswordBearer) -> None:
        self.model = scheme.model
        self.scheme_name = scheme.scheme_name
        self._scheme = scheme

    async def __call__(self, request: Request) -> Principal:
        token = await self._scheme(request)
        return customer_only(await limit_booking(request, await token_principal(token)))


_granting_caller = _GrantingCaller(bearer_token)


async def _grant(
    request: Request,
    response: Response,
    customer: Annotated[Principal, Depends(_granting_caller)],
    key: IdempotencyKey = None,
) -> Grant:
    # A malformed key is a 422 only once the caller passed: its node is below this one.
    offload = offload_for(request.scope)
    return Grant(customer, coalescing.enabled(request.scope), offload,
                 Idempotency(request, response, customer.user_id, key, offload))


# Ticket-granting routes take ``grant: Granting`` (never BookingCustomer plus Idempotent: more nodes).
Granting = Annotated[Grant, Depends(_grant)]
