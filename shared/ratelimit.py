"""Rate limits shared by every process through Redis: login, failed logins, booking.

One small Lua script implements GCRA (the generic cell rate algorithm): per key Redis
holds a single "theoretical arrival time", so a limit "COUNT/SECONDS" lets COUNT requests
through at once and then one every SECONDS/COUNT, with an exact ``Retry-After``. The
script checks several keys (per user and per IP) in one atomic round trip and consumes
from none of them unless all allow, and it reads Redis's clock, so app instances with
skewed clocks agree. Why a script rather than a library: see docs/operations.md.

Redis trouble never takes the API down: with short socket timeouts and no retries, an
unreachable Redis lets the request through (fail open), logs once, and is not asked
again for a few seconds, so a rush does not pay a timeout per request.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

import redis
from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordRequestForm
from redis.backoff import NoBackoff
from redis.retry import Retry
from starlette.concurrency import run_in_threadpool

from shared import metrics, sessions
from shared.deps import customer_only, token_principal
from shared.errors import TooManyRequests, Unauthorized
from shared.security import Principal
from shared.settings import get_settings

log = logging.getLogger("ticketing.ratelimit")

# KEYS: one per limit. ARGV[1]: "1" to consume, "0" to only look; then per key the
# emission interval and the period, in milliseconds. Returns {allowed, retry_ms, index}.
# SESSION_CHECK_LUA (shared/sessions.py) sets ``nrules`` and may add a session check
# (one more KEY and ARGV): allowed -1 means the token was revoked.
GCRA_LUA = sessions.SESSION_CHECK_LUA + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local consume = ARGV[1] == '1'
local worst, denied = 0, 0
local tats = {}
for i = 1, nrules do
  local key = KEYS[i]
  local interval = tonumber(ARGV[2 * i])
  local period = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - period
  if allow_at > now and allow_at - now > worst then
    worst = allow_at - now
    denied = i
  end
  tats[i] = new_tat
end
if denied == 0 and consume then
  for i = 1, nrules do
    local key = KEYS[i]
    redis.call('SET', key, string.format('%d', tats[i]), 'PX', tats[i] - now)
  end
end
if denied == 0 then return {1, 0, 0} end
return {0, worst, denied}
"""

# After a Redis failure, requests skip the limiter for this long instead of timing out.
_BREAKER_SECONDS = 5.0


@dataclass(frozen=True)
class Rule:
    """A named limit on one key: ``count`` requests per ``seconds``."""

    name: str
    key: str
    count: int
    seconds: int

    @classmethod
    def parse(cls, name: str, key: str, spec: str) -> Rule:
        count, seconds = (int(part) for part in spec.split("/", 1))
        return cls(name, key, max(count, 1), max(seconds, 1))


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: int = 0
    rule: Rule | None = None
    revoked: bool = False


class RateLimiter:
    """Talks to Redis; fails open when it cannot."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._client: redis.Redis | None = None
        self._script: redis.commands.core.Script | None = None
        self._url = ""
        self._down_until = 0.0

    def _script_for(self, url: str, timeout: float) -> redis.commands.core.Script:
        with self._lock:
            if self._script is None or url != self._url:
                if self._client is not None:
                    self._client.close()
                self._client = redis.Redis.from_url(
                    url,
                    socket_timeout=timeout,
                    socket_connect_timeout=timeout,
                    retry=Retry(NoBackoff(), 0),
                    health_check_interval=30,
                )
                self._script = self._client.register_script(GCRA_LUA)
                self._url = url
                self._down_until = 0.0
            return self._script

    def check(
        self, rules: list[Rule], *, consume: bool = True, session: Principal | None = None
    ) -> Decision:
        """Whether all rules allow one more request (and count it when ``consume``).

        With ``session``, the same round trip also refuses a revoked token (``revoked``).
        """
        settings = get_settings()
        if not settings.rate_limit_enabled:
            rules = []
        if (not rules and session is None) or time.monotonic() < self._down_until:
            return Decision(True)
        prefix = settings.rate_limit_key_prefix
        keys = [f"{prefix}:{rule.key}" for rule in rules]
        args: list[int | str] = ["1" if consume else "0"]
        for rule in rules:
            period_ms = rule.seconds * 1000
            args += [max(1, period_ms // rule.count), period_ms]
        if session is not None:
            keys.append(sessions.session_key(session.session_id))
            args.append(sessions.SESSION_ARG)
        try:
            script = self._script_for(settings.redis_url, settings.rate_limit_redis_timeout)
            allowed, retry_ms, index = script(keys=keys, args=args)
        except redis.RedisError as exc:
            self._down_until = time.monotonic() + _BREAKER_SECONDS
            log.warning(
                "rate limiter failing open for %.0fs: Redis unavailable (%s)",
                _BREAKER_SECONDS, type(exc).__name__,
            )
            return Decision(True)
        if int(allowed) == -1:
            return Decision(False, revoked=True)
        if allowed:
            return Decision(True)
        return Decision(False, max(1, math.ceil(int(retry_ms) / 1000)), rules[int(index) - 1])


limiter = RateLimiter()


def enforce(rules: list[Rule], *, consume: bool = True, session: Principal | None = None) -> None:
    """Raise 429 ``rate_limited`` with ``Retry-After`` when a rule refuses (401 if revoked)."""
    decision = limiter.check(rules, consume=consume, session=session)
    if decision.revoked:
        raise sessions.revoked_error()
    if not decision.allowed:
        assert decision.rule is not None
        metrics.rate_limited(decision.rule.name)
        log.info("rate limited by %s", decision.rule.name, extra={"limit": decision.rule.name})
        raise TooManyRequests(
            "rate_limited",
            f"Too many requests; retry in {decision.retry_after}s",
            retry_after=decision.retry_after,
            limit=decision.rule.name,
        )


def client_ip(request: Request) -> str:
    """The caller's address: the peer, or from ``X-Forwarded-For`` behind trusted proxies.

    Under Mangum the peer is API Gateway's ``sourceIp``.
    """
    trusted = get_settings().rate_limit_trusted_proxies
    if trusted:
        hops = [h.strip() for h in request.headers.get("x-forwarded-for", "").split(",") if h.strip()]
        if len(hops) >= trusted:
            return hops[-trusted]
    return request.client.host if request.client else "unknown"


def _account_key(username: str) -> str:
    # Emails are not stored in Redis in clear.
    return hashlib.sha256(username.strip().lower().encode()).hexdigest()[:32]


def limit_login(
    request: Request, form: Annotated[OAuth2PasswordRequestForm, Depends()]
) -> Iterator[None]:
    """Login attempts per IP and per account; failed logins per account (guessing)."""
    settings = get_settings()
    account = _account_key(form.username)
    failed = Rule.parse(
        "failed_login_per_account", f"login-failed:{account}",
        settings.rate_limit_failed_login_per_account,
    )
    enforce([failed], consume=False)
    enforce([
        Rule.parse("login_per_ip", f"login-ip:{client_ip(request)}", settings.rate_limit_login_per_ip),
        Rule.parse("login_per_account", f"login-account:{account}",
                   settings.rate_limit_login_per_account),
    ])
    try:
        yield
    except Unauthorized as exc:
        if exc.code == "invalid_credentials":
            limiter.check([failed])  # count the failure; the next attempt sees it
        raise


async def limit_booking(
    request: Request, principal: Annotated[Principal, Depends(token_principal)]
) -> Principal:
    """Booking creation per customer and per IP, and the token's revocation check, in one
    Redis round trip (run off the event loop). Returns the still-active principal."""
    settings = get_settings()
    await run_in_threadpool(functools.partial(enforce, [
        Rule.parse("booking_per_user", f"book-user:{principal.user_id}",
                   settings.rate_limit_booking_per_user),
        Rule.parse("booking_per_ip", f"book-ip:{client_ip(request)}",
                   settings.rate_limit_booking_per_ip),
    ], session=principal))
    return principal


async def _booking_customer(principal: Annotated[Principal, Depends(limit_booking)]) -> Principal:
    return customer_only(principal)


LoginRateLimit = Depends(limit_login)
# Booking-creating routes take the caller as ``BookingCustomer``: rate limits and the
# session check share one Redis round trip (never ``Customer`` plus a limit: two trips).
BookingCustomer = Annotated[Principal, Depends(_booking_customer)]
