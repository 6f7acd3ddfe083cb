"""Rate limits shared by every process through Redis: registration, login, failed logins, booking.

One small Lua script implements GCRA (the generic cell rate algorithm): per key Redis
holds a single "theoretical arrival time", so a limit "COUNT/SECONDS" lets COUNT requests
through at once and then one every SECONDS/COUNT, with an exact ``Retry-After``. The
script checks several keys (per user and per IP) in one atomic round trip and consumes
from none of them unless all allow, and it reads Redis's clock, so app instances with
skewed clocks agree. Why a script rather than a library: see docs/operations.md.

Redis trouble never takes the API down, nor switches the limits off: with short socket
timeouts and no retries, an unreachable Redis makes the limiter apply the same rules in
this process (``LocalLimiter``, bounded memory), logs once, and skips Redis for a few
seconds, so a rush does not pay a timeout per request.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Literal, TypeVar

from fastapi import Depends, Request

from shared.accounts import sessions
from shared.accounts.emails import normalize_email
from shared.accounts.tokens import Principal
from shared.platform import metrics
from shared.platform.errors import AppError, TooManyRequests
from shared.platform.redis_breaker import REDIS_FAILURES, RedisBreaker, Script
from shared.platform.settings import get_settings
from shared.platform.threads import serves_one_request
from shared.web.client_ip import client_ip as resolved_client_ip
from shared.web.client_ip import limit_key
from shared.web.deps import current_principal, token_principal
from shared.web.schemas import LoginForm, UserCreate

log = logging.getLogger(__name__)
_V = TypeVar("_V", int, float)

# KEYS: one per limit. ARGV[1]: the mode (see Mode); then per key the emission interval
# and the period, in milliseconds. Returns {allowed, retry_ms, index}.
# SESSION_CHECK_LUA (shared/accounts/sessions.py) sets ``nrules`` and may add a session check
# (one more KEY and ARGV): allowed -1 means the token was revoked.
GCRA_LUA = sessions.SESSION_CHECK_LUA + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mode = ARGV[1]
local worst, denied = 0, 0
local tats, oks = {}, {}
for i = 1, nrules do
  local key = KEYS[i]
  local interval = tonumber(ARGV[2 * i])
  local period = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - period
  oks[i] = allow_at <= now
  if not oks[i] and allow_at - now > worst then
    worst = allow_at - now
    denied = i
  end
  tats[i] = new_tat
end
for i = 1, nrules do
  local key = KEYS[i]
  if (mode == 'all' and denied == 0) or (mode == 'each' and oks[i]) then
    redis.call('SET', key, string.format('%d', tats[i]), 'PX', tats[i] - now)
  end
end
if denied == 0 then return {1, 0, 0} end
return {0, worst, denied}
"""

# Gives back one unit taken from each key (a reservation that turned out not to be needed):
# the stored arrival time moves back by the key's interval (ARGV[i]), never below now.
REFUND_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0') - tonumber(ARGV[i])
  if tat <= now then
    redis.call('DEL', KEYS[i])
  else
    redis.call('SET', KEYS[i], string.format('%d', tat), 'PX', tat - now)
  end
end
return 1
"""

# "look": consume nothing; "all": consume from every key if all allow (a request);
# "each": consume from each key that allows on its own (an event to count, e.g. a failure).
Mode = Literal["look", "all", "each"]



@dataclass(frozen=True)
class RateRule:
    """A named limit on one key: ``count`` requests per ``seconds``."""

    name: str
    key: str
    count: int
    seconds: int

    @classmethod
    def parse(cls, name: str, key: str, spec: str) -> RateRule:
        count, seconds = (int(part) for part in spec.split("/", 1))
        return cls(name, key, max(count, 1), max(seconds, 1))

    @property
    def timing_ms(self) -> tuple[int, int]:
        """(emission interval, period) in milliseconds."""
        period_ms = self.seconds * 1000
        return max(1, period_ms // self.count), period_ms


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: int = 0
    rule: RateRule | None = None
    revoked: bool = False


class LocalLimiter:
    """The Lua script's GCRA and flags in this process, for when Redis is unreachable.

    Per process, so N processes let up to N times a limit through: weaker than Redis but
    never off. Memory is bounded: past ``max_keys`` the least recently used key is dropped
    (its budget starts afresh), expired keys first in practice since they are not touched.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tats: OrderedDict[str, int] = OrderedDict()  # integer ms, like the script's
        self._flags: OrderedDict[str, float] = OrderedDict()

    def gcra(self, keys: list[str], timings: list[tuple[int, int]], mode: Mode) -> tuple[int, float, int]:
        # Whole milliseconds, as in the script: with float ms, (now + interval) - period could
        # round up past now near a power of two, refusing a fresh key (seen in tests).
        now = _now_ms()
        worst, denied = 0, 0
        with self._lock:
            news: list[int] = []
            oks: list[bool] = []
            for i, (key, (interval, period)) in enumerate(zip(keys, timings, strict=True), start=1):
                tat = max(self._tats.get(key, 0), now)
                allow_at = tat + interval - period
                oks.append(allow_at <= now)
                if allow_at > now and allow_at - now > worst:
                    worst, denied = allow_at - now, i
                news.append(tat + interval)
            for key, new, ok in zip(keys, news, oks, strict=True):
                if (mode == "all" and denied == 0) or (mode == "each" and ok):
                    _remember(self._tats, key, new)
        return (1, 0.0, 0) if denied == 0 else (0, float(worst), denied)

    def refund(self, keys: list[str], intervals: list[int]) -> None:
        """REFUND_LUA in this process: one unit back per key, never below now."""
        now = _now_ms()
        with self._lock:
            for key, interval in zip(keys, intervals, strict=True):
                if key in self._tats:
                    self._tats[key] = max(self._tats[key] - interval, now)

    def flag(self, key: str, seconds: int) -> None:
        with self._lock:
            _remember(self._flags, key, time.monotonic() + seconds)

    def flagged(self, key: str) -> bool:
        with self._lock:
            return self._flags.get(key, 0.0) > time.monotonic()


def _now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


def _remember(store: OrderedDict[str, _V], key: str, value: _V) -> None:
    """Set a key as the most recently used; drop the least recently used past the bound."""
    store[key] = value
    store.move_to_end(key)
    limit = get_settings().rate_limit_local_max_keys
    while len(store) > limit:
        store.popitem(last=False)


@dataclass(frozen=True)
class _Check:
    """One check as the GCRA script takes it: what both transports send, and how to read the answer."""

    rules: list[RateRule]
    keys: list[str]
    timings: list[tuple[int, int]]
    mode: Mode
    script_keys: list[str]
    args: list[int | str]

    @classmethod
    def of(cls, rules: list[RateRule], consume: bool, mode: Mode | None, session: Principal | None) -> _Check | None:
        """None when there is nothing to ask (limits off, no session to check)."""
        settings = get_settings()
        if not settings.rate_limit_enabled:
            rules = []
        if not rules and session is None:
            return None
        keys = [f"{settings.rate_limit_key_prefix}:{rule.key}" for rule in rules]
        timings = [rule.timing_ms for rule in rules]
        mode = mode or ("all" if consume else "look")
        args: list[int | str] = [mode]
        for interval, period in timings:
            args += [interval, period]
        script_keys = keys
        if session is not None:
            script_keys = [*keys, sessions.session_key(session.session_id)]
            args.append(sessions.SESSION_ARG)
        return cls(rules, keys, timings, mode, script_keys, args)

    def decide(self, answer: tuple[int, float, int]) -> Decision:
        allowed, retry_ms, index = answer
        if allowed == -1:
            return Decision(False, revoked=True)
        if allowed:
            return Decision(True)
        return Decision(False, max(1, math.ceil(retry_ms / 1000)), self.rules[index - 1])


def _answer(reply: list[int | bytes]) -> tuple[int, float, int]:
    allowed, retry_ms, index = reply
    return int(allowed), float(retry_ms), int(index)


_GCRA = Script(GCRA_LUA)
_REFUND = Script(REFUND_LUA)


class RateLimiter:
    """Talks to Redis; applies the same rules in this process when it cannot.

    :meth:`check` and :meth:`check_async` are one rule over two transports (redis-py's sync
    client for sync routes, its asyncio client for the booking routes): the same script,
    the same breaker, the same fallback; only how the round trip is awaited differs.
    """

    def __init__(self) -> None:
        self._breaker = RedisBreaker("rate limiter", lambda s: s.rate_limit_redis_timeout)
        self.local = LocalLimiter()

    def _trip(self, exc: Exception) -> None:
        self._breaker.trip(exc, "limits apply per process")

    def reset(self) -> None:
        """Forget a past Redis failure: the next check asks Redis again (tests use it)."""
        self._breaker.reset()

    def check(
        self,
        rules: list[RateRule],
        *,
        consume: bool = True,
        mode: Mode | None = None,
        session: Principal | None = None,
    ) -> Decision:
        """Whether all rules allow one more request (and count it when ``consume``).

        ``mode="each"`` counts an event on every rule that still has room, whatever the others
        say. With ``session``, the same round trip also refuses a revoked token (``revoked``);
        without Redis that check fails open (shared/accounts/sessions.py says why) while the rules
        apply per process.
        """
        check = _Check.of(rules, consume, mode, session)
        if check is None:
            return Decision(True)
        client = self._breaker.client()
        if client is not None:
            try:
                return check.decide(_answer(_GCRA(client, check.script_keys, check.args)))
            except REDIS_FAILURES as exc:
                self._trip(exc)
        return check.decide(self.local.gcra(check.keys, check.timings, check.mode))

    async def check_async(
        self,
        rules: list[RateRule],
        *,
        consume: bool = True,
        mode: Mode | None = None,
        session: Principal | None = None,
        alone: bool = False,
    ) -> Decision:
        """:meth:`check` on the event loop: the round trip awaited, no thread-pool hop, and
        shared with the other checks of the same loop iteration (one pipeline).

        ``alone``: the loop serves this one request (a Lambda event through Mangum), so no
        other check can share the trip and nothing else waits on the loop: the sync client's
        call, made on the loop (``shared.platform.threads.on_loop``), costs half the CPU of
        redis.asyncio's (measured: about 80 against 150 us per check).
        """
        if alone:
            return self.check(rules, consume=consume, mode=mode, session=session)
        check = _Check.of(rules, consume, mode, session)
        if check is None:
            return Decision(True)
        client = self._breaker.async_client()
        if client is not None:
            try:
                return check.decide(_answer(await _GCRA.run_batched(client, check.script_keys, check.args)))
            except REDIS_FAILURES as exc:
                self._trip(exc)
        return check.decide(self.local.gcra(check.keys, check.timings, check.mode))

    def refund(self, rules: list[RateRule]) -> None:
        """Give back the unit a request took from each rule (a reservation not needed)."""
        settings = get_settings()
        if not settings.rate_limit_enabled or not rules:
            return
        keys = [f"{settings.rate_limit_key_prefix}:{rule.key}" for rule in rules]
        intervals = [rule.timing_ms[0] for rule in rules]
        client = self._breaker.client()
        if client is not None:
            try:
                _REFUND(client, keys, intervals)
                return
            except REDIS_FAILURES as exc:
                self._trip(exc)
        self.local.refund(keys, intervals)

    def flag(self, key: str, seconds: int) -> None:
        """Remember ``key`` for ``seconds`` (in Redis, or in this process without it)."""
        settings = get_settings()
        if not settings.rate_limit_enabled:
            return
        full = f"{settings.rate_limit_key_prefix}:{key}"
        client = self._breaker.client()
        if client is not None:
            try:
                client.set(full, "1", ex=seconds)
                return
            except REDIS_FAILURES as exc:
                self._trip(exc)
        self.local.flag(full, seconds)

    def flagged(self, key: str) -> bool:
        settings = get_settings()
        if not settings.rate_limit_enabled:
            return False
        full = f"{settings.rate_limit_key_prefix}:{key}"
        client = self._breaker.client()
        if client is not None:
            try:
                return bool(client.exists(full))
            except REDIS_FAILURES as exc:
                self._trip(exc)
        return self.local.flagged(full)


limiter = RateLimiter()


def enforce(rules: list[RateRule], *, consume: bool = True, session: Principal | None = None) -> None:
    """Raise 429 ``rate_limited`` with ``Retry-After`` when a rule refuses (401 if revoked)."""
    _refuse(limiter.check(rules, consume=consume, session=session))


async def enforce_async(rules: list[RateRule], *, session: Principal | None = None, alone: bool = False) -> None:
    """:func:`enforce` for async dependencies: the Redis round trip on the event loop."""
    _refuse(await limiter.check_async(rules, session=session, alone=alone))


def _refuse(decision: Decision) -> None:
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


def client_key(request: Request) -> str:
    """The caller as every per-address limit and known-address flag counts it: an IPv4
    address or an IPv6 /64 (``shared.web.client_ip.limit_key``); logs keep the full address."""
    return limit_key(resolved_client_ip(request.scope))


def _digest(text: str) -> str:
    # Emails and addresses are not stored in Redis in clear.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _account_key(username: str) -> str:
    """The account a login names, by the one normalization lookups use (shared/accounts/emails.py)."""
    return _digest(normalize_email(username))


def _known_pair(account: str, ip: str) -> str:
    return _digest(f"{account}|{ip}")


def _remember_address(pair: str) -> None:
    """This (account, address network) proved itself: exempt from the account-wide limit."""
    limiter.flag(f"login-known:{pair}", get_settings().rate_limit_login_known_ip_seconds)


@contextmanager
def _guessing_throttled(account: str, ip: str, failed: Callable[[AppError], bool]) -> Iterator[str]:
    """Throttle password guesses so guessing is slow but the owner is never locked out by others.

    Failures count per (account, IP) tightly and per account from everywhere more loosely.
    An address that got the password right lately (remembered, hashed, for
    ``RATE_LIMIT_LOGIN_KNOWN_IP_SECONDS``) is exempt from the account-wide limit, so a flood
    of wrong passwords from elsewhere cannot lock the owner out, while each address, the
    owner's too, stays throttled on its own. Yields the (account, IP) key.

    A failure is reserved before the password is checked (atomically with the look) and
    given back when the attempt turns out not to be a guess: looking first and counting
    after the slow hash let parallel guesses all pass the look.
    """
    settings = get_settings()
    pair = _known_pair(account, ip)
    failed_here = RateRule.parse("failed_login_per_account_ip", f"login-failed-ip:{pair}",
                             settings.rate_limit_failed_login_per_account_ip)
    failed_anywhere = RateRule.parse("failed_login_per_account", f"login-failed:{account}",
                                 settings.rate_limit_failed_login_per_account)
    known = f"login-known:{pair}"
    # Reserve the failure up front, in the same atomic step as the look: parallel guesses
    # racing the slow hash each take a unit, so no more than the budget get an answer.
    reserved = [failed_here] if limiter.flagged(known) else [failed_anywhere, failed_here]
    enforce(reserved)
    try:
        yield pair
    except Exception as exc:
        if not (isinstance(exc, AppError) and failed(exc)):
            limiter.refund(reserved)
        elif failed_anywhere not in reserved:
            limiter.check([failed_anywhere], mode="each")  # the owner's typos count there too
        raise
    limiter.refund(reserved)
    _remember_address(pair)


def limit_login(request: Request, form: Annotated[LoginForm, Depends()]) -> Iterator[None]:
    """Logins: every attempt per IP and per (account, IP); wrong passwords as guesses."""
    settings = get_settings()
    ip = client_key(request)
    with _guessing_throttled(_account_key(form.username), ip,
                             lambda exc: exc.code == "invalid_credentials") as pair:
        enforce([
            RateRule.parse("login_per_ip", f"login-ip:{ip}", settings.rate_limit_login_per_ip),
            RateRule.parse("login_per_account", f"login-account:{pair}", settings.rate_limit_login_per_account),
        ])
        yield


def limit_password_change(
    request: Request, principal: Annotated[Principal, Depends(token_principal)]
) -> Iterator[None]:
    """A wrong current password is a guess like a failed login, from the same budget (the
    account's email key): a stolen token must not become a second oracle for the password."""
    from shared.accounts.users import get_user  # the account's email: one read, on a rare route

    account = _account_key(get_user(principal.user_id)["email"])
    with _guessing_throttled(account, client_key(request), lambda exc: exc.code == "wrong_password"):
        yield


async def limit_booking(
    request: Request, principal: Annotated[Principal, Depends(token_principal)]
) -> Principal:
    """Booking creation per customer and per IP, and the token's revocation check, in one
    Redis round trip (awaited on the event loop). Returns the still-active principal."""
    settings = get_settings()
    await enforce_async([
        RateRule.parse("booking_per_user", f"book-user:{principal.user_id}",
                   settings.rate_limit_booking_per_user),
        RateRule.parse("booking_per_ip", f"book-ip:{client_key(request)}",
                   settings.rate_limit_booking_per_ip),
    ], session=principal, alone=serves_one_request(request.scope))
    return principal


def _per_ip(request: Request, name: str, spec: str) -> None:
    enforce([RateRule.parse(f"{name}_per_ip", f"{name}-ip:{client_key(request)}", spec)])


def limit_register(request: Request) -> None:
    """Registrations per IP: each costs a deliberately slow hash and creates an account."""
    _per_ip(request, "register", get_settings().rate_limit_register_per_ip)


def limit_refresh(request: Request) -> None:
    """Refreshes per IP: unauthenticated, each costs database writes (and probes for tokens)."""
    _per_ip(request, "refresh", get_settings().rate_limit_refresh_per_ip)


def limit_verify(request: Request) -> None:
    """Token guesses per IP (256-bit tokens cannot be guessed; this spares the database)."""
    _per_ip(request, "verify", get_settings().rate_limit_verify_per_ip)


def limit_verification_resend(principal: Annotated[Principal, Depends(current_principal)]) -> None:
    """Verification mails per account: the resend route must not become a mail cannon."""
    enforce([RateRule.parse("verification_resend_per_user", f"verify-resend:{principal.user_id}",
                        get_settings().rate_limit_verification_resend)])


def _registration(
    _: Annotated[None, Depends(limit_register)], request: Request, body: UserCreate
) -> Iterator[UserCreate]:
    """The registration's body, rate limited (a body that fails validation still counts).

    Once the route has created the account, and before it answers, the address it was
    registered from becomes its owner's until a login proves another: a trickle of
    guesses from elsewhere must not lock the new owner out of it.
    """
    yield body
    _remember_address(_known_pair(_account_key(body.email), client_key(request)))


LoginRateLimit = Depends(limit_login)
RefreshRateLimit = Depends(limit_refresh)
PasswordChangeRateLimit = Depends(limit_password_change)
VerifyRateLimit = Depends(limit_verify)
VerificationResendRateLimit = Depends(limit_verification_resend)
# The registration route takes its body as ``Registration`` (limited, address remembered).
Registration = Annotated[UserCreate, Depends(_registration, scope="function")]


ACCESS_CODE_WINDOW_SECONDS = 600


@contextmanager
def access_code_guesses(request: Request, user_id: int | None = None) -> Iterator[None]:
    """A request carrying an access code: an invalid one is a guess, counted per client IP
    (and per customer, when known) against ``ACCESS_CODE_ATTEMPTS`` per ten minutes.

    As with passwords, the guess is reserved before the code is looked up (parallel guesses
    cannot all pass the look) and given back unless the answer is ``access_code_invalid``.
    """
    spec = f"{get_settings().access_code_attempts}/{ACCESS_CODE_WINDOW_SECONDS}"
    rules = [RateRule.parse("access_code_per_ip", f"code-ip:{client_key(request)}", spec)]
    if user_id is not None:
        rules.append(RateRule.parse("access_code_per_user", f"code-user:{user_id}", spec))
    enforce(rules)
    try:
        yield
    except AppError as exc:
        if exc.code != "access_code_invalid":
            limiter.refund(rules)
        raise
    except BaseException:
        limiter.refund(rules)
        raise
    limiter.refund(rules)
