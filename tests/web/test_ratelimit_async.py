"""The booking routes' rate limit on the event loop (redis.asyncio), against real Redis.

Same rule as the sync limiter (one script, one breaker, one local fallback); what is new is
the transport: an asyncio client per running event loop, which Mangum may change between
invocations (the emulator runs one loop per thread; tests open and close loops).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from functions.booking.handler import handler as booking_handler
from local.embedded import free_port
from local.lambda_events import build_lambda_event
from shared.accounts import sessions
from shared.accounts.tokens import Principal
from shared.platform.redis_breaker import MAX_LOOP_CLIENTS
from shared.web.ratelimit import RateRule, limiter
from tests.support.clients import LambdaClient
from tests.support.event_loop import run_on_new_loop
from tests.support.factories import account, create_event
from tests.support.settings_env import restore_env, set_env

T = TypeVar("T")


@pytest.fixture
def prefix(database: str) -> Iterator[str]:
    """A key prefix of this test's own, a Redis the limiter trusts again, and the limits on."""
    value = f"rl-async-{uuid.uuid4().hex[:8]}"
    saved = set_env({"RATE_LIMIT_KEY_PREFIX": value, "RATE_LIMIT_ENABLED": "true"})
    limiter.reset()
    yield value
    restore_env(saved)
    limiter.reset()


def _rule(count: int, seconds: int, key: str = "") -> RateRule:
    return RateRule("booking_per_user", key or f"k-{uuid.uuid4().hex}", count, seconds)


def test_retry_after_is_exact_and_the_budget_is_the_sync_limiters(prefix: str) -> None:
    rule = _rule(2, 10)  # one every 5 s after a burst of 2

    async def three() -> list[Any]:
        return [await limiter.check_async([rule]) for _ in range(3)]

    first, second, refused = run_on_new_loop(three())
    assert first.allowed and second.allowed
    assert (refused.allowed, refused.retry_after, refused.rule) == (False, 5, rule)
    # The same Redis key: the sync transport sees the budget the async one spent.
    sync = limiter.check([rule])
    assert (sync.allowed, sync.retry_after) == (False, 5)


def test_a_revoked_session_is_refused_in_the_same_round_trip(prefix: str) -> None:
    session_id = str(uuid.uuid4())
    principal = Principal(user_id=1, role="customer", session_id=session_id)
    rule = _rule(5, 60)
    assert run_on_new_loop(limiter.check_async([rule], session=principal)).allowed
    sessions.publish_revoked([session_id])
    decision = run_on_new_loop(limiter.check_async([rule], session=principal))
    assert (decision.allowed, decision.revoked) == (False, True)


def test_redis_down_falls_back_to_the_local_limiter_logging_once(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    saved = set_env({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})  # nothing listens there
    rule = _rule(1, 60)

    async def rush() -> list[Any]:
        # Concurrent checks all meet the dead Redis before the breaker opens: one log line.
        return await asyncio.gather(*(limiter.check_async([_rule(1, 60)]) for _ in range(20)))

    try:
        with caplog.at_level(logging.WARNING, logger="shared.platform.redis_breaker"):
            started = time.monotonic()
            answers = run_on_new_loop(rush())
            first, second = (run_on_new_loop(limiter.check_async([rule])) for _ in range(2))
            took = time.monotonic() - started
    finally:
        restore_env(saved)
    assert all(answer.allowed for answer in answers)
    assert first.allowed and (second.allowed, second.retry_after) == (False, 60)  # per process, same rule
    assert took < 2, took  # one short timeout, then the breaker skips Redis
    lines = [r for r in caplog.records if "rate limiter: Redis unavailable" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]


def _on_thread_loop(call: Callable[[], T]) -> T:
    """``call`` on a new thread with an event loop of its own, closed after (as in the emulator)."""
    out: list[T] = []

    def run() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            out.append(call())
        finally:
            loop.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    return out[0]


def test_mangum_invocations_on_changing_loops_share_one_budget_and_keep_no_dead_loop(prefix: str) -> None:
    saved = set_env({"RATE_LIMIT_BOOKING_PER_USER": "3/60", "RATE_LIMIT_BOOKING_PER_IP": "1000/60"})
    try:
        lambda_client = LambdaClient("v2")
        _, organizer = account(lambda_client, "organizer")
        _, token = account(lambda_client, "customer")
        event = create_event(lambda_client, organizer, total_tickets=100)
        request = build_lambda_event(
            "POST", "/bookings", body=json.dumps({"event_id": event["id"]}),
            headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
        )

        def book() -> int:
            status: int = booking_handler(request, None)["statusCode"]
            return status

        # The main thread's loop, two loops of their own (each closed after), the main one again.
        statuses = [book(), _on_thread_loop(book), _on_thread_loop(book), book()]
        assert statuses == [201, 201, 201, 429]  # one budget in Redis, whatever the loop

        # Many short-lived loops: the clients kept stay bounded, closed loops are let go.
        loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

        def check_and_note_loop() -> None:
            loops.append(weakref.ref(asyncio.get_event_loop()))
            asyncio.get_event_loop().run_until_complete(limiter.check_async([_rule(100, 60)]))

        for _ in range(MAX_LOOP_CLIENTS + 8):
            _on_thread_loop(check_and_note_loop)
        gc.collect()
        assert len(limiter._breaker._loop_clients) <= MAX_LOOP_CLIENTS
        assert sum(ref() is not None for ref in loops) <= 1  # only the last, until a new loop sweeps it
    finally:
        restore_env(saved)


def test_the_local_fallback_lets_a_fresh_key_through_at_any_clock_reading(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Float milliseconds once refused a fresh key of a 1/60 limit when now + 60000 crossed a
    power of two (the sum rounded up): the per-process fallback tests failed at such uptimes."""
    from shared.web.ratelimit import LocalLimiter

    timing = RateRule.parse("t", "k", "1/60").timing_ms
    for power in (21, 30, 40):
        for before in range(1, 60_000, 1_237):
            ns = ((1 << power) - before) * 1_000_000 + before * 7_919 % 1_000_000  # some fraction of a ms
            monkeypatch.setattr(time, "monotonic_ns", lambda ns=ns: ns)
            local = LocalLimiter()
            assert local.gcra(["fresh"], [timing], "all") == (1, 0.0, 0), (power, before)
            assert local.gcra(["fresh"], [timing], "all") == (0, 60_000.0, 1)


def test_a_script_the_server_does_not_know_is_loaded_on_first_use(prefix: str) -> None:
    """Both transports run scripts by SHA; a server that never saw one (or restarted) gets it loaded."""
    from shared.platform.redis_breaker import Script

    script = Script(f"return {{KEYS[1], ARGV[1]}} -- {uuid.uuid4()}")
    client = limiter._breaker.client()
    assert client is not None
    assert script(client, ["k"], [1]) == [b"k", b"1"]

    async def twice() -> list[Any]:
        fresh = Script(f"return ARGV[1] -- {uuid.uuid4()}")
        async_client = limiter._breaker.async_client()
        assert async_client is not None
        return [await fresh.run_async(async_client, [], [n]) for n in (1, 2)]

    assert run_on_new_loop(twice()) == [b"1", b"2"]


def test_a_burst_of_checks_shares_one_round_trip_and_each_gets_its_own_decision(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checks made in the same loop iteration go as one pipeline; every caller reads its own reply."""
    burst = 24
    fresh = [_rule(5, 60) for _ in range(burst // 2)]
    spent = [_rule(1, 60 + i) for i in range(burst // 2)]  # exhausted first: refused, each its own Retry-After

    async def go() -> tuple[list[Any], int]:
        client = limiter._breaker.async_client()
        assert client is not None
        for rule in spent:
            assert (await limiter.check_async([rule])).allowed
        lent = 0
        original = client.connection_pool.get_connection

        async def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal lent
            lent += 1
            return await original(*args, **kwargs)

        monkeypatch.setattr(client.connection_pool, "get_connection", counted)
        answers = await asyncio.gather(*(limiter.check_async([rule]) for rule in [*fresh, *spent]))
        return answers, lent

    answers, lent = run_on_new_loop(go())
    assert lent < burst / 4, lent  # one pipeline (not one connection lent per check)
    assert all(answer.allowed for answer in answers[: burst // 2])
    refused = answers[burst // 2:]
    assert [(a.allowed, a.rule, a.retry_after) for a in refused] == [
        (False, rule, rule.seconds) for rule in spent
    ]
