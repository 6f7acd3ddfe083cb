"""Keys of concurrent requests leased together: one statement for a burst, every answer as alone.

On a server, :func:`shared.ticketing.idempotency.run_async` acquires the keys that arrive while
a batch is in flight (or in one loop iteration) in one statement on one thread hop. These tests
race keyed requests on one loop against the real database and check each still gets what it
would have got alone: its booking once, a replay, 409 in progress, 422 on reuse, a 503.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from typing import Any

import psycopg
import pytest

from shared.platform.errors import AppError
from shared.platform.settings import get_settings
from shared.ticketing import coalescing, idempotency
from tests.support.clients import HttpClient
from tests.support.event_loop import run_on_new_loop
from tests.support.factories import account, create_event

Outcome = tuple[int, Any]  # (status, booking id or error code)


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every batched acquisition (the real function, watched)."""
    sizes: list[int] = []
    original = idempotency._acquire_many

    def watched(asks: list[Any]) -> Any:
        sizes.append(len(asks))
        return original(asks)

    monkeypatch.setattr(idempotency, "_acquire_many", watched)
    return sizes


@pytest.fixture
def event(http_client: HttpClient) -> tuple[int, int]:
    """(customer id, event id) with tickets enough for every test here."""
    _, org = account(http_client, "organizer")
    customer, _ = account(http_client, "customer")
    return customer["id"], create_event(http_client, org, total_tickets=500)["id"]


def _burst(
    user_id: int, event_id: int, asks: list[tuple[str, str]], later: tuple[tuple[str, str], ...] = ()
) -> list[Outcome]:
    """Run keyed bookings (key, fingerprint) all at once on one loop, then ``later`` 0.1 s on;
    each one's status and id or code."""

    async def scenario() -> list[Outcome]:
        lanes = coalescing.Coalescer()

        async def one(key: str, print_: str) -> Outcome:
            async def action(lease: idempotency.KeyLease | None) -> dict[str, Any]:
                return await lanes.book(
                    user_id=user_id, event_id=event_id, quantity=1, default_max=1000, idempotency=lease
                )

            try:
                body, replayed = await idempotency.run_async(
                    user_id=user_id, key=key, request_fingerprint=print_, action=action
                )
            except AppError as err:
                return err.status_code, (err.code, dict(err.headers or {}))
            return replayed or 201, body["id"]

        first = asyncio.gather(*(one(key, print_) for key, print_ in asks))
        if later:
            await asyncio.sleep(0.1)
        second = asyncio.gather(*(one(key, print_) for key, print_ in later))
        return list(await first) + list(await second)

    return run_on_new_loop(scenario())


def _bookings(sql: Any, event_id: int) -> list[int]:
    return [r["id"] for r in sql.execute("SELECT id FROM bookings WHERE event_id = %s", (event_id,)).fetchall()]


def test_a_burst_of_distinct_keys_is_leased_in_fewer_statements_and_each_books_once(
    sql: Any, event: tuple[int, int], batches: list[int]
) -> None:
    user_id, event_id = event
    keys = [f"burst-{uuid.uuid4().hex}" for _ in range(24)]
    results = _burst(user_id, event_id, [(key, "fp") for key in keys])
    assert [status for status, _ in results] == [201] * 24
    assert sum(batches) == 24 and len(batches) < 24  # shared statements, every key in one
    booked = _bookings(sql, event_id)
    assert sorted(booked) == sorted(i for _, i in results)
    done = sql.execute(
        "SELECT count(*) AS n FROM idempotency_keys WHERE user_id = %s AND key = ANY(%s) AND state = 'done'",
        (user_id, keys),
    ).fetchone()
    assert done["n"] == 24
    # a retry of each replays its own booking
    again = _burst(user_id, event_id, [(key, "fp") for key in keys])
    assert again == results and len(_bookings(sql, event_id)) == 24


def test_copies_of_one_key_in_a_burst_book_once(sql: Any, event: tuple[int, int], batches: list[int]) -> None:
    user_id, event_id = event
    key = f"dup-{uuid.uuid4().hex}"
    others = [f"other-{uuid.uuid4().hex}" for _ in range(5)]
    results = _burst(user_id, event_id, [(key, "fp")] * 8 + [(k, "fp") for k in others])
    copies, rest = results[:8], results[8:]
    assert all(status == 201 for status, _ in rest)
    # one books; each other copy saw it in progress (409, Retry-After) or replays it
    assert Counter(status for status, _ in copies)[201] >= 1
    assert {status for status, _ in copies} <= {201, 409}
    assert all(code == ("request_in_progress", {"Retry-After": "1"}) for s, code in copies if s == 409)
    assert len({i for s, i in copies if s == 201}) == 1
    assert len(_bookings(sql, event_id)) == 1 + len(others)


def test_a_key_reused_with_another_body_in_a_burst_is_refused(
    sql: Any, event: tuple[int, int], batches: list[int]
) -> None:
    user_id, event_id = event
    key = f"reuse-{uuid.uuid4().hex}"
    results = _burst(user_id, event_id, [(key, "first"), (key, "second"), (f"x-{uuid.uuid4().hex}", "fp")])
    assert results[0][0] == 201 and results[2][0] == 201
    assert results[1] == (422, ("idempotency_key_reused", {}))
    assert len(_bookings(sql, event_id)) == 2


def test_one_batch_decides_each_key_as_alone(sql: Any, event: tuple[int, int], batches: list[int]) -> None:
    """Stored answers, keys in progress, expired and abandoned leases, all in one statement."""
    user_id, event_id = event
    tag = uuid.uuid4().hex
    past, future = "now() - interval '1 second'", "now() + interval '1 hour'"

    def stored(key: str, print_: str, state: str, locked_until: str, expires_at: str, status: Any = None) -> str:
        sql.execute(
            f"INSERT INTO idempotency_keys (user_id, key, fingerprint, owner, state, response_status, "
            f"response_body, locked_until, expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s, {locked_until}, "
            f"{expires_at})",
            (
                user_id,
                f"{key}-{tag}",
                print_,
                uuid.uuid4(),
                state,
                status,
                None
                if status is None
                else ('{"code": "sold_out", "message": "gone"}' if status >= 400 else '{"id": 7}'),
            ),
        )
        return f"{key}-{tag}"

    asks = [
        (stored("done", "fp", "done", future, future, 201), "fp"),  # replays its answer
        (stored("refused", "fp", "done", future, future, 400), "fp"),  # replays its refusal
        (stored("other-body", "fp", "done", future, future, 201), "another"),  # 422
        (stored("busy", "fp", "in_progress", future, future), "fp"),  # 409
        (stored("expired", "old", "done", past, past, 201), "fp"),  # re-acquired: books
        (stored("abandoned", "fp", "in_progress", past, future), "fp"),  # past locked_until: books
        (stored("abandoned-other", "fp", "in_progress", past, future), "another"),  # 422
        (f"fresh-{tag}", "fp"),  # books
    ]
    results = _burst(user_id, event_id, asks)
    assert len(batches) == 1 and batches[0] == len(asks)
    status = [s for s, _ in results]
    assert status == [201, 400, 422, 409, 201, 201, 422, 201]
    assert results[0][1] == 7  # replayed, not booked
    assert results[1][1] == ("sold_out", {idempotency.REPLAY_HEADER: "true"})
    assert results[3][1] == ("request_in_progress", {"Retry-After": "1"})
    assert len(_bookings(sql, event_id)) == 3


def test_a_batch_the_database_does_not_answer_answers_each_request_in_time(
    event: tuple[int, int], monkeypatch: pytest.MonkeyPatch, batches: list[int]
) -> None:
    # GIVEN a database that does not answer the batch's statement within the deadline
    monkeypatch.setattr(get_settings(), "db_request_deadline_seconds", 0.5)
    monkeypatch.setattr(idempotency, "_ACQUIRE_MANY_SQL", "SELECT pg_sleep(5), NULL AS user_id, NULL AS key")
    user_id, event_id = event
    started = time.monotonic()
    asks = [(f"f-{uuid.uuid4().hex}", "fp") for _ in range(6)]
    # ...and three more come while that batch waits
    results = _burst(user_id, event_id, asks, later=tuple((f"late-{uuid.uuid4().hex}", "fp") for _ in range(3)))
    took = time.monotonic() - started
    # THEN each request hears the 503 it would have heard from its own statement, at the deadline,
    # those queued behind the batch too, without a deadline of their own (never sent)
    assert batches == [6] and len(results) == 9
    assert all(status == 503 and code == "database_unavailable" for status, (code, _) in results)
    assert took < 0.5 + 1.5


def test_a_key_another_statement_holds_does_not_hold_up_its_batch(
    sql: Any, database: str, event: tuple[int, int], batches: list[int]
) -> None:
    # GIVEN a key whose row another transaction holds (a request with it is being written)
    user_id, event_id = event
    held = f"held-{uuid.uuid4().hex}"
    sql.execute(
        "INSERT INTO idempotency_keys (user_id, key, fingerprint, owner, state, locked_until, expires_at) "
        "VALUES (%s, %s, 'fp', %s, 'in_progress', now() - interval '1 second', now() + interval '1 hour')",
        (user_id, held, uuid.uuid4()),
    )
    blocker = psycopg.connect(database)
    blocker.execute("SELECT 1 FROM idempotency_keys WHERE user_id = %s AND key = %s FOR UPDATE", (user_id, held))
    try:
        started = time.monotonic()
        asks = [(held, "fp")] + [(f"f-{uuid.uuid4().hex}", "fp") for _ in range(5)]
        results = _burst(user_id, event_id, asks)
        took = time.monotonic() - started
    finally:
        blocker.close()
    # THEN the batch waits a moment for it, then each key goes alone: the held one hears 409
    # in progress (never a 503, never a wait in a lock cycle), the others book at once
    assert batches == [6]
    assert results[0][0] == 409 and results[0][1][0] == "request_in_progress"
    assert [status for status, _ in results[1:]] == [201] * 5
    assert len(_bookings(sql, event_id)) == 5
    assert took < 2.0


def test_a_request_gone_while_its_key_is_leased_frees_it(sql: Any, event: tuple[int, int], batches: list[int]) -> None:
    user_id, _ = event
    key = f"gone-{uuid.uuid4().hex}"

    async def scenario() -> None:
        async def action(lease: idempotency.KeyLease | None) -> dict[str, Any]:
            raise AssertionError("never reached")

        task = asyncio.create_task(
            idempotency.run_async(user_id=user_id, key=key, request_fingerprint="fp", action=action)
        )
        await asyncio.sleep(0)  # queued
        await asyncio.sleep(0)  # its batch sent
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        leaser = idempotency._leasers[asyncio.get_running_loop()]
        for _ in range(500):  # the batch ends, then the unused lease is freed
            if not leaser._tasks:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the leaser never settled")

    run_on_new_loop(scenario())
    assert batches == [1]  # it was sent: leased, then freed
    assert sql.execute("SELECT 1 FROM idempotency_keys WHERE key = %s", (key,)).fetchone() is None
