"""Coalesced bookings: many requests, one transaction, and still every answer exact.

A long-running server books concurrent requests for one event in one transaction
(shared/ticketing/coalescing.py). These tests race real clients against the real database and
check what the one-request path guarantees still holds: exactly the tickets that exist
are sold, each request gets its own booking, and idempotent replays replay.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import pytest

from shared.platform import metrics
from shared.platform.errors import AppError
from shared.ticketing import bookings, coalescing, idempotency
from tests.support.clients import HttpClient
from tests.support.event_loop import run_on_new_loop
from tests.support.factories import account, create_event
from tests.support.race import race
from tests.support.tickets import AVAILABLE_SQL, lock_stock


def _batches_over_one() -> float:
    """How many coalesced transactions so far carried more than one booking."""
    total = metrics.REGISTRY.get_sample_value("ticketing_booking_batch_size_count") or 0.0
    single = metrics.REGISTRY.get_sample_value("ticketing_booking_batch_size_bucket", {"le": "1.0"}) or 0.0
    return total - single


def _event_totals(sql: Any, event_id: int) -> dict[str, Any]:
    row = sql.execute(
        f"""SELECT e.total_tickets - {AVAILABLE_SQL} AS taken,
                  (SELECT coalesce(sum(quantity), 0) FROM bookings b WHERE b.event_id = e.id) AS booked,
                  (SELECT count(*) FROM bookings b WHERE b.event_id = e.id) AS rows,
                  (SELECT count(*) FROM outbox o WHERE o.task = 'booking_confirmation'
                      AND (o.payload->>'event_id')::bigint = e.id) AS confirmations
             FROM events e WHERE e.id = %s""",
        (event_id,),
    ).fetchone()
    assert row is not None
    return dict(row)


def test_a_coalesced_rush_sells_exactly_the_tickets_that_exist(http_client: HttpClient, sql: Any) -> None:
    # GIVEN 150 tickets and 96 requests for 1-3 tickets each (192 asked for), all at once,
    # from customers enough that none asks past the per-customer limit (4 requests each)
    _, org = account(http_client, "organizer")
    customers = [account(http_client, "customer") for _ in range(24)]
    event = create_event(http_client, org, total_tickets=150)
    batches_before = _batches_over_one()

    def attempt(i: int) -> tuple[int, dict[str, Any]]:
        _, token = customers[i % len(customers)]
        body = {"event_id": event["id"], "quantity": 1 + i % 3}
        r = http_client.request("POST", "/bookings", json_body=body, token=token)
        return r.status_code, r.json()

    results = race(96, attempt)

    # THEN requests really shared transactions...
    assert _batches_over_one() > batches_before
    # ...no 5xx, every refusal says why, and the event ends sold out
    statuses = Counter(status for status, _ in results)
    assert set(statuses) <= {201, 400}, statuses
    refusals = Counter(body["code"] for status, body in results if status == 400)
    assert set(refusals) <= {"sold_out", "insufficient_tickets"}, refusals
    made = [body for status, body in results if status == 201]
    # each request got its own booking, for what it asked
    assert len({b["id"] for b in made}) == len(made)
    asked = {i: 1 + i % 3 for i in range(96)}
    assert all(b["quantity"] == asked[i] for i, (s, b) in enumerate(results) if s == 201)
    # and the database agrees: tickets taken == tickets booked == 150, one confirmation each
    totals = _event_totals(sql, event["id"])
    assert totals == {"taken": 150, "booked": 150, "rows": len(made), "confirmations": len(made)}
    assert sum(b["quantity"] for b in made) == 150


def test_idempotent_requests_in_a_coalesced_rush_replay(http_client: HttpClient, sql: Any) -> None:
    # GIVEN 90 keyed requests racing for an event with room for all of them (and customers
    # enough that none passes the per-customer limit: 6 requests of 2 each)
    _, org = account(http_client, "organizer")
    customers = [account(http_client, "customer") for _ in range(15)]
    event = create_event(http_client, org, total_tickets=500)
    keys = [f"rush-{uuid.uuid4().hex}" for _ in range(90)]
    batches_before = _batches_over_one()

    def attempt(i: int) -> tuple[int, dict[str, Any], str | None]:
        _, token = customers[i % len(customers)]
        r = http_client.request(
            "POST",
            "/bookings",
            json_body={"event_id": event["id"], "quantity": 2},
            token=token,
            headers={"Idempotency-Key": keys[i]},
        )
        return r.status_code, r.json(), r.headers.get(idempotency.REPLAY_HEADER.lower())

    first = race(90, attempt)
    assert _batches_over_one() > batches_before
    assert all(status == 201 and replayed is None for status, _, replayed in first), first[:3]

    # WHEN every client retries with its key, again all at once
    again = race(90, attempt)

    # THEN each gets its own first answer back, marked as a replay, and nothing is booked twice
    for (_, body, _), (status, replay, replayed) in zip(first, again, strict=True):
        assert status == 201 and replayed == "true"
        assert replay["id"] == body["id"]
    assert len({body["id"] for _, body, _ in first}) == 90
    assert _event_totals(sql, event["id"]) == {"taken": 180, "booked": 180, "rows": 90, "confirmations": 90}
    stored = sql.execute(
        "SELECT count(*) AS n FROM idempotency_keys WHERE key = ANY(%s) AND state = 'done'", (keys,)
    ).fetchone()
    assert stored == {"n": 90}


def test_the_same_key_twice_in_one_rush_books_once(http_client: HttpClient, sql: Any) -> None:
    _, org = account(http_client, "organizer")
    _, token = account(http_client, "customer")
    event = create_event(http_client, org, total_tickets=50)
    key = f"dup-{uuid.uuid4().hex}"

    def attempt(_: int) -> tuple[int, dict[str, Any]]:
        r = http_client.request(
            "POST", "/bookings", json_body={"event_id": event["id"]}, token=token, headers={"Idempotency-Key": key}
        )
        return r.status_code, r.json()

    results = race(10, attempt)

    ids = {body["id"] for status, body in results if status == 201}
    assert len(ids) == 1
    assert all(status == 201 or body["code"] == "request_in_progress" for status, body in results)
    assert _event_totals(sql, event["id"])["rows"] == 1


# -- the batch statement and the lanes, driven directly -------------------------------------


def test_a_batch_grants_in_order_while_tickets_last(http_client: HttpClient, sql: Any) -> None:
    # GIVEN 5 tickets and requests for 3, 4, 2 and 1
    _, org = account(http_client, "organizer")
    user, _ = account(http_client, "customer")
    event = create_event(http_client, org, total_tickets=5)
    items = [bookings.BatchItem(user_id=user["id"], quantity=q) for q in (3, 4, 2, 1)]

    rows = bookings.book_batch(event_id=event["id"], items=items, default_max=10)

    # THEN 3 and 2 fit (first fit), 4 and 1 are left for the one-request path to decide
    assert [row["quantity"] if row else None for row in rows] == [3, None, 2, None]
    assert _event_totals(sql, event["id"]) == {"taken": 5, "booked": 5, "rows": 2, "confirmations": 2}


def test_a_batch_leaves_a_cancelled_or_capped_event_to_the_one_request_path(
    http_client: HttpClient, sql: Any
) -> None:
    _, org = account(http_client, "organizer")
    user, _ = account(http_client, "customer")
    capped = create_event(http_client, org, total_tickets=50, max_tickets_per_booking=2)
    cancelled = create_event(http_client, org, total_tickets=50)
    assert http_client.request("POST", f"/events/{cancelled['id']}/cancel", token=org).status_code == 200
    item = bookings.BatchItem(user_id=user["id"], quantity=3)

    assert bookings.book_batch(event_id=capped["id"], items=[item], default_max=10) == [None]
    assert bookings.book_batch(event_id=cancelled["id"], items=[item], default_max=10) == [None]
    assert bookings.book_batch(event_id=10**12, items=[item], default_max=10) == [None]
    assert _event_totals(sql, capped["id"])["rows"] == 0


def _book_all(requests: list[tuple[int, int]], event_id: int) -> list[Any]:
    """Send every request into one lane at once; an AppError stands for a refusal."""
    lanes = coalescing.Coalescer()

    async def one(user_id: int, quantity: int) -> Any:
        try:
            return await lanes.book(user_id=user_id, event_id=event_id, quantity=quantity, default_max=10)
        except AppError as err:
            return err

    async def all_at_once() -> list[Any]:
        return await asyncio.gather(*(one(u, q) for u, q in requests))

    return run_on_new_loop(all_at_once())


def test_an_unknown_user_fails_alone_not_the_whole_batch(http_client: HttpClient, sql: Any) -> None:
    # GIVEN a batch where one token's user no longer exists (the insert's foreign key fails)
    _, org = account(http_client, "organizer")
    user, _ = account(http_client, "customer")
    event = create_event(http_client, org, total_tickets=50)
    requests = [(user["id"], 1)] * 5 + [(10**12, 1)] + [(user["id"], 1)] * 5

    results = _book_all(requests, event["id"])

    # THEN that request hears 401 and the ten others are booked
    errors = [r for r in results if isinstance(r, AppError)]
    assert [(e.status_code, e.code) for e in errors] == [(401, "unknown_user")]
    assert len({r["id"] for r in results if isinstance(r, dict)}) == 10
    assert _event_totals(sql, event["id"]) == {"taken": 10, "booked": 10, "rows": 10, "confirmations": 10}


def test_lanes_at_sell_out_answer_each_request_exactly(
    http_client: HttpClient, sql: Any, caplog: pytest.LogCaptureFixture
) -> None:
    _, org = account(http_client, "organizer")
    user, _ = account(http_client, "customer")
    event = create_event(http_client, org, total_tickets=7)

    with caplog.at_level("WARNING", logger="shared.ticketing.coalescing"):
        results = _book_all([(user["id"], 2)] * 6, event["id"])

    assert not [r for r in caplog.records if r.name == "shared.ticketing.coalescing"]  # a refusal is no incident

    booked = [r for r in results if isinstance(r, dict)]
    refused = Counter(r.code for r in results if isinstance(r, AppError))
    assert len(booked) == 3  # 2 + 2 + 2; the fourth finds 1 left
    assert refused == Counter({"insufficient_tickets": 3})
    assert _event_totals(sql, event["id"])["taken"] == 6


def test_lambda_never_coalesces(monkeypatch: pytest.MonkeyPatch) -> None:
    assert coalescing.enabled({"type": "http"})
    assert not coalescing.enabled({"type": "http", "aws.event": {}})  # came through Mangum
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "booking")
    assert not coalescing.enabled({"type": "http"})


def test_bookings_sent_as_lambda_events_take_the_one_request_path(
    http_client: HttpClient, v2: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, org = account(http_client, "organizer")
    _, token = account(http_client, "customer")
    event = create_event(http_client, org, total_tickets=5)
    lanes_used: list[int] = []
    real = coalescing.Coalescer.book

    async def spy(self: Any, **kwargs: Any) -> Any:
        lanes_used.append(kwargs["event_id"])
        return await real(self, **kwargs)

    monkeypatch.setattr(coalescing.Coalescer, "book", spy)

    assert v2.request("POST", "/bookings", json_body={"event_id": event["id"]}, token=token).status_code == 201
    assert lanes_used == []  # the handler served it the Lambda way
    assert http_client.request("POST", "/bookings", json_body={"event_id": event["id"]}, token=token).status_code == 201
    assert lanes_used == [event["id"]]  # the long-running server coalesces


# -- failures: never book twice, never leave a request without an answer --------------------


def test_a_failure_after_commit_is_not_retried_and_a_keyed_retry_replays(
    http_client: HttpClient, sql: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN keyed requests whose batch fails after its COMMIT (outcome unknown to the server)
    _, org = account(http_client, "organizer")
    user, _ = account(http_client, "customer")
    event = create_event(http_client, org, total_tickets=50)
    real = bookings.publish_committed

    def fails_for_batches(conn: Any, outbox_ids: list[int]) -> bool:
        if len(outbox_ids) > 1:
            raise RuntimeError("lost after commit")
        return real(conn, outbox_ids)

    monkeypatch.setattr(bookings, "publish_committed", fails_for_batches)
    keys = [f"unknown-{uuid.uuid4().hex}" for _ in range(8)]
    leases = [idempotency._begin(user["id"], key, "fp") for key in keys]
    lanes = coalescing.Coalescer()

    async def one(lease: Any) -> Any:
        try:
            return await lanes.book(user_id=user["id"], event_id=event["id"], quantity=1, default_max=10,
                                    idempotency=lease)
        except AppError as err:
            return err

    async def all_at_once() -> list[Any]:
        return await asyncio.gather(*(one(c) for c in leases))

    results = run_on_new_loop(all_at_once())

    # THEN nobody is booked twice: the batch's requests hear 503, the rest their booking...
    made = [r for r in results if isinstance(r, dict)]
    unknown = [r for r in results if isinstance(r, AppError)]
    assert unknown and all((e.status_code, e.code) == (503, "database_unavailable") for e in unknown)
    assert _event_totals(sql, event["id"])["rows"] == len(made) + len(unknown) == 8
    # ...and a retry with the same key learns that its booking was made
    for key, result in zip(keys, results, strict=True):
        replay = idempotency._begin(user["id"], key, "fp")
        assert isinstance(replay, tuple) and replay[1] == 201
        if isinstance(result, dict):
            assert replay[0]["id"] == result["id"]


def test_a_request_gone_while_booking_alone_still_gets_its_refusal_stored(
    http_client: HttpClient, sql: Any, database: str
) -> None:
    # GIVEN a keyed request for two tickets waiting behind a transaction that takes one of two
    _, org = account(http_client, "organizer")
    user, _ = account(http_client, "customer")
    event = create_event(http_client, org, total_tickets=2)
    key = f"gone-{uuid.uuid4().hex}"
    lease = idempotency._begin(user["id"], key, "fp")
    assert isinstance(lease, idempotency.KeyLease)
    lock = _RowLock(database, event["id"], take=1)

    async def scenario() -> Any:
        lanes = coalescing.Coalescer()
        request = asyncio.create_task(
            lanes.book(user_id=user["id"], event_id=event["id"], quantity=2, default_max=10, idempotency=lease)
        )
        await asyncio.sleep(0.2)
        request.cancel()  # WHEN its client goes away while the booking thread waits
        lock.release()
        for _ in range(100):
            row = sql.execute(
                "SELECT state, response_status, response_body FROM idempotency_keys WHERE key = %s", (key,)
            ).fetchone()
            if row and row["state"] == "done":
                return row
            await asyncio.sleep(0.05)
        return row

    stored = run_on_new_loop(scenario())

    # THEN the refusal it would have heard is stored, so a retry replays it at once
    assert stored["state"] == "done" and stored["response_status"] == 400
    assert stored["response_body"]["code"] == "insufficient_tickets"


class _RowLock:
    """Holds an event's stock rows' locks from another connection, so its lane's first booking blocks."""

    def __init__(self, database: str, event_id: int, take: int = 0) -> None:
        import psycopg

        self.conn = psycopg.connect(database)
        # An UPDATE, not SELECT FOR UPDATE: it is what makes a grant that still sees enough
        # tickets wait, and ``take`` tickets are gone when it commits.
        lock_stock(self.conn, event_id, take)

    def release(self) -> None:
        self.conn.commit()
        self.conn.close()


def test_a_request_gone_before_its_turn_is_not_booked_and_frees_its_key(
    http_client: HttpClient, sql: Any, database: str
) -> None:
    _, org = account(http_client, "organizer")
    first, _ = account(http_client, "customer")
    gone, _ = account(http_client, "customer")
    event = create_event(http_client, org, total_tickets=50)
    key = f"gone-{uuid.uuid4().hex}"
    lease = idempotency._begin(gone["id"], key, "fingerprint")
    assert isinstance(lease, idempotency.KeyLease)
    lock = _RowLock(database, event["id"])

    async def scenario() -> Any:
        lanes = coalescing.Coalescer()
        ahead = asyncio.create_task(lanes.book(user_id=first["id"], event_id=event["id"], quantity=1, default_max=10))
        await asyncio.sleep(0.3)  # `ahead` is on a worker thread, waiting for the row lock
        behind = asyncio.create_task(
            lanes.book(user_id=gone["id"], event_id=event["id"], quantity=1, default_max=10, idempotency=lease)
        )
        await asyncio.sleep(0.1)
        behind.cancel()  # its client disconnects while it waits in the lane
        lock.release()
        booked = await ahead
        for _ in range(100):  # the lane drains and frees the key on a worker thread
            if sql.execute("SELECT 1 FROM idempotency_keys WHERE key = %s", (key,)).fetchone() is None:
                break
            await asyncio.sleep(0.05)
        return booked

    booked = run_on_new_loop(scenario())

    assert booked["user_id"] == first["id"]
    rows = sql.execute("SELECT user_id FROM bookings WHERE event_id = %s", (event["id"],)).fetchall()
    assert rows == [{"user_id": first["id"]}]
    assert sql.execute("SELECT 1 FROM idempotency_keys WHERE key = %s", (key,)).fetchone() is None


def test_a_request_that_waits_too_long_hears_503_unbooked(
    http_client: HttpClient, sql: Any, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.platform.settings import get_settings

    monkeypatch.setattr(get_settings(), "booking_lane_wait_seconds", 0.2)
    _, org = account(http_client, "organizer")
    user, _ = account(http_client, "customer")
    event = create_event(http_client, org, total_tickets=50)
    lock = _RowLock(database, event["id"])

    async def scenario() -> list[Any]:
        lanes = coalescing.Coalescer()

        async def one() -> Any:
            try:
                return await lanes.book(user_id=user["id"], event_id=event["id"], quantity=1, default_max=10)
            except AppError as err:
                return err

        ahead = asyncio.create_task(one())
        await asyncio.sleep(0.1)
        behind = [asyncio.create_task(one()) for _ in range(3)]
        await asyncio.sleep(0.5)  # past their wait limit, still behind the locked booking
        lock.release()
        return [await ahead] + [await b for b in behind]

    ahead, *behind = run_on_new_loop(scenario())

    assert isinstance(ahead, dict)
    assert [(e.status_code, e.code) for e in behind] == [(503, "contention")] * 3
    assert _event_totals(sql, event["id"])["rows"] == 1


def test_a_waiter_behind_a_stuck_transaction_hears_503_at_its_deadline(
    http_client: HttpClient, sql: Any, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.platform.settings import get_settings

    wait = 0.3
    monkeypatch.setattr(get_settings(), "booking_lane_wait_seconds", wait)
    _, org = account(http_client, "organizer")
    user, _ = account(http_client, "customer")
    event = create_event(http_client, org, total_tickets=50)
    lock = _RowLock(database, event["id"])

    async def scenario() -> tuple[set[asyncio.Task[Any]], Any]:
        lanes = coalescing.Coalescer()

        async def one() -> Any:
            try:
                return await lanes.book(user_id=user["id"], event_id=event["id"], quantity=1, default_max=10)
            except AppError as err:
                return err

        ahead = asyncio.create_task(one())
        await asyncio.sleep(0.1)  # `ahead` is stuck on the row lock: the lane stays busy
        behind = {asyncio.create_task(one()) for _ in range(3)}
        try:
            # WHEN their wait passes while the transaction ahead is still stuck
            done, _ = await asyncio.wait(behind, timeout=wait + 1.0)
        finally:
            lock.release()
        await ahead
        return done, [b.result() for b in behind]

    done, behind = run_on_new_loop(scenario())

    # THEN they hear 503 contention at their deadline, not when the lane moves again
    assert len(done) == 3
    assert [(e.status_code, e.code) for e in behind] == [(503, "contention")] * 3
    assert _event_totals(sql, event["id"])["rows"] == 1
