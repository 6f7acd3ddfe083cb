"""PostgreSQL stops answering (frozen, not down): every request still ends, nothing twice.

A frozen server keeps its TCP connections open (the kernel still ACKs) and never sends
its own ``statement_timeout``; only the client-side deadline of :mod:`shared.platform.db` ends a
request then. The freeze is real: a throwaway embedded server's processes get SIGSTOP
under a running app, and SIGCONT afterwards. Statements stuck on a row lock held by
another connection give the same "no answer" on a live server, deterministically.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from local.embedded import Server
from shared.platform import db
from shared.platform.errors import AppError
from shared.platform.settings import get_settings
from shared.ticketing import bookings, coalescing, idempotency
from tests.support.clients import Client, HttpClient, LambdaClient
from tests.support.clock import FakeClock
from tests.support.databases import throwaway_postgres
from tests.support.event_loop import run_on_new_loop
from tests.support.factories import PASSWORD, account, create_event, login, register
from tests.support.settings_env import restore_env, set_env
from tests.support.tickets import lock_stock, pool_adds_up, ticket_pool

DEADLINE = 1.0  # DB_REQUEST_DEADLINE_SECONDS in these tests
LANE_WAIT = 0.5  # BOOKING_LANE_WAIT_SECONDS
MARGIN = 1.5  # scheduling on a busy 2-core machine, thread-pool hops, HTTP
FREEZE = 5.0  # longer than every bound + MARGIN: a request that waits it out fails the test
BOUNDS = {
    "read": DEADLINE,
    "login": DEADLINE,
    "book": LANE_WAIT + DEADLINE,  # its wait in the lane, then its transaction
    "book_keyed": LANE_WAIT + 2 * DEADLINE,  # ...then freeing its key (a step of its own)
}


# -- a real frozen server -------------------------------------------------------------


@pytest.fixture(scope="module")
def own_postgres(database: str) -> Iterator[tuple[Server, str]]:
    """A throwaway embedded server of this module's own (it gets frozen), migrated."""
    with throwaway_postgres("ticketing-dbhung-") as (_, server, url):
        try:
            yield server, url
        finally:
            _signal_all(server, signal.SIGCONT)  # never leave it stopped


@pytest.fixture
def hung_env(own_postgres: tuple[Server, str]) -> Iterator[tuple[Server, str]]:
    """The app on the throwaway server, with small bounds so the test takes seconds."""
    server, url = own_postgres
    db.close_pool()
    saved = set_env(
        {
            "DATABASE_URL": url,
            "DB_REQUEST_DEADLINE_SECONDS": str(DEADLINE),
            "BOOKING_LANE_WAIT_SECONDS": str(LANE_WAIT),
            "DB_POOL_TIMEOUT": str(DEADLINE),
            "DB_CONNECT_TIMEOUT": "1",
        }
    )
    try:
        yield server, url
    finally:
        db.close_pool()
        restore_env(saved)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # gone meanwhile
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _signal_all(server: Server, sig: int) -> None:
    """The postmaster first (it forks no backend while stopped), then every backend.

    Each backend calls setsid(), so signalling the postmaster's group would miss them.
    """
    os.kill(server.process.pid, sig)
    for child in _children(server.process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, sig)


@contextmanager
def frozen(server: Server) -> Iterator[None]:
    """SIGSTOP every process of the cluster: connections stay open, nothing answers.

    Thawed after FREEZE seconds at the latest, so a request that waits it out fails the
    test's timing instead of hanging it.
    """
    _signal_all(server, signal.SIGSTOP)
    thaw = threading.Timer(FREEZE, _signal_all, (server, signal.SIGCONT))
    thaw.start()
    try:
        yield
    finally:
        thaw.cancel()
        _signal_all(server, signal.SIGCONT)


def _wait_until_served(client: Client, path: str, token: str | None = None) -> None:
    deadline = time.monotonic() + 20
    while client.request("GET", path, token=token).status_code != 200:
        assert time.monotonic() < deadline, "the app did not recover after the database came back"
        time.sleep(0.2)


def _settle_server(url: str) -> None:
    """Wait until the thawed server has run what it had received (cut statements included)."""
    deadline = time.monotonic() + 10
    with psycopg.connect(url, autocommit=True) as conn:
        while conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'ticketing' AND state = 'active'"
        ).fetchone()[0]:  # type: ignore[index]
            assert time.monotonic() < deadline
            time.sleep(0.1)


@dataclass
class _Call:
    kind: str
    started: float
    elapsed: float
    status: int
    body: dict[str, Any]
    headers: dict[str, str]
    user_id: int = 0
    key: str | None = None


def _rush(
    client: HttpClient, event_id: int, keyed: list[Any], unkeyed: list[Any], logins: list[str], stop: threading.Event
) -> tuple[list[_Call], list[threading.Thread]]:
    """Threads that book (keyed and not), log in and read until ``stop``; every call recorded."""
    calls: list[_Call] = []
    lock = threading.Lock()

    def record(kind: str, method: str, path: str, user_id: int = 0, key: str | None = None, **kw: Any) -> None:
        started = time.monotonic()
        r = client.request(method, path, **kw)
        call = _Call(kind, started, time.monotonic() - started, r.status_code, r.json(), r.headers, user_id, key)
        with lock:
            calls.append(call)

    def booker(user: dict[str, Any], token: str, with_key: bool) -> None:
        kind = "book_keyed" if with_key else "book"
        while not stop.is_set():
            key = uuid.uuid4().hex if with_key else None
            headers = {"Idempotency-Key": key} if key else None
            body = {"event_id": event_id}
            record(kind, "POST", "/bookings", user["id"], key, json_body=body, token=token, headers=headers)
            time.sleep(0.01)

    def other(kind: str, email: str) -> None:
        while not stop.is_set():
            if kind == "login":
                record(kind, "POST", "/auth/token", form={"username": email, "password": PASSWORD})
            else:
                record(kind, "GET", f"/events/{event_id}")
            time.sleep(0.01)

    threads = [threading.Thread(target=booker, args=(u, t, True)) for u, t in keyed]
    threads += [threading.Thread(target=booker, args=(u, t, False)) for u, t in unkeyed]
    threads += [threading.Thread(target=other, args=(kind, email)) for kind in ("login", "read") for email in logins]
    for thread in threads:
        thread.start()
    return calls, threads


def test_a_frozen_database_answers_503_within_the_bound_and_books_nothing_twice(
    hung_env: tuple[Server, str], http_client: HttpClient, fake_clock: FakeClock
) -> None:
    server, url = hung_env
    # GIVEN a rush of keyed and unkeyed bookings, logins and reads on a running app
    _, org = account(http_client, "organizer")
    keyed = [account(http_client, "customer") for _ in range(4)]
    unkeyed = [account(http_client, "customer") for _ in range(4)]
    # The rush books as fast as it can for seconds: no per-customer limit in its way.
    event = create_event(http_client, org, total_tickets=10_000, max_tickets_per_customer=1_000_000)
    emails = [keyed[0][0]["email"], unkeyed[0][0]["email"]]
    stop = threading.Event()
    calls, threads = _rush(http_client, event["id"], keyed, unkeyed, emails, stop)
    time.sleep(0.5)

    # WHEN PostgreSQL freezes mid-rush, then comes back
    with frozen(server):
        frozen_at = time.monotonic()
        time.sleep(FREEZE)
    thawed_at = time.monotonic()
    _wait_until_served(http_client, f"/events/{event['id']}")
    time.sleep(0.3)
    stop.set()
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive(), "a request never ended"

    # THEN every request caught by the freeze ended within its bound, as 503 + Retry-After
    caught = [c for c in calls if c.started < thawed_at and c.started + c.elapsed > frozen_at]
    for call in caught:
        assert call.elapsed <= BOUNDS[call.kind] + MARGIN, call
        assert call.status in (200, 201, 503), call
        if call.status == 503:
            assert call.body["code"] in ("database_unavailable", "contention"), call
            assert int(call.headers["retry-after"]) >= 1, call
    refused = {c.kind for c in caught if c.status == 503}
    assert refused == set(BOUNDS), f"every kind of request met the frozen database: {refused}"
    assert not [c for c in calls if c.status >= 500 and c.status != 503]

    # ...and once it is back, nothing was booked twice
    _settle_server(url)
    fake_clock.advance(get_settings().idempotency_lock_seconds + 1)  # keys left leased may be retried
    _assert_booked_once(http_client, url, event["id"], calls, keyed, unkeyed)


def _assert_booked_once(
    client: HttpClient, url: str, event_id: int, calls: list[_Call], keyed: list[Any], unkeyed: list[Any]
) -> None:
    answered = [c.body["id"] for c in calls if c.kind.startswith("book") and c.status == 201]
    assert len(answered) == len(set(answered))
    tokens = {user["id"]: token for user, token in keyed}
    final: dict[int, set[int]] = {user["id"]: set() for user, _ in keyed}
    # A keyed retry replays its booking, or books (once) what was never booked.
    for call in (c for c in calls if c.kind == "book_keyed"):
        r = client.request(
            "POST",
            "/bookings",
            json_body={"event_id": event_id},
            token=tokens[call.user_id],
            headers={"Idempotency-Key": call.key or ""},
        )
        assert r.status_code == 201, (call, r.text)
        if call.status == 201:
            assert r.headers.get("idempotent-replayed") == "true" and r.json()["id"] == call.body["id"], call
        final[call.user_id].add(r.json()["id"])
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        rows = conn.execute("SELECT id, user_id FROM bookings WHERE event_id = %s", (event_id,)).fetchall()
        by_user: dict[int, set[int]] = {}
        for row in rows:
            by_user.setdefault(row["user_id"], set()).add(row["id"])
        assert set(answered) <= {row["id"] for row in rows}  # every 201 exists
        for user_id, ids in final.items():  # one booking per key, none without its key
            assert by_user.get(user_id, set()) == ids, user_id
        for user, _ in unkeyed:  # beyond its 201s, a user has at most its unknown outcomes
            mine = [c for c in calls if c.user_id == user["id"]]
            extra = by_user.get(user["id"], set()) - {c.body["id"] for c in mine if c.status == 201}
            assert len(extra) <= sum(c.status == 503 for c in mine)
        pool = ticket_pool(conn, event_id)
        confirmations = conn.execute(
            """SELECT count(*) AS n FROM outbox WHERE task = 'booking_confirmation'
                  AND (payload->>'event_id')::bigint = %s""",
            (event_id,),
        ).fetchone()
    assert pool_adds_up(pool), pool
    assert confirmations is not None and confirmations["n"] == len(rows), confirmations


def test_under_lambda_a_frozen_database_answers_503_and_the_one_connection_recovers(
    hung_env: tuple[Server, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _ = hung_env
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "booking")  # pool of one, every checkout probed
    db.close_pool()
    client = LambdaClient("v2")
    _, org = account(client, "organizer")
    user = register(client, "customer")
    token = login(client, user["email"])
    event = create_event(client, org, total_tickets=10)
    body = {"event_id": event["id"]}

    with frozen(server):
        for method, path, kwargs in (
            ("POST", "/bookings", {"json_body": body, "token": token}),
            ("POST", "/bookings", {"json_body": body, "token": token, "headers": {"Idempotency-Key": "k1"}}),
            ("GET", f"/events/{event['id']}", {}),
            ("POST", "/auth/token", {"form": {"username": user["email"], "password": PASSWORD}}),
        ):
            started = time.monotonic()
            r = client.request(method, path, **kwargs)
            elapsed = time.monotonic() - started
            assert r.status_code == 503 and r.json()["code"] == "database_unavailable", (path, r.text)
            assert int(r.headers["retry-after"]) >= 1
            assert elapsed <= DEADLINE + MARGIN, (path, elapsed)

    _wait_until_served(client, f"/events/{event['id']}")
    r = client.request("POST", "/bookings", json_body=body, token=token)
    assert r.status_code == 201, r.text


# -- a statement that gets no answer on a live server ---------------------------------


class _RowLock:
    """Holds an event's stock rows' locks from another connection: its bookings get no answer.

    Released after FREEZE seconds at the latest, so code without a deadline fails the
    test's timing instead of hanging it.
    """

    def __init__(self, database: str, event_id: int) -> None:
        self.conn = psycopg.connect(database)
        lock_stock(self.conn, event_id)
        self._once = threading.Lock()
        self._timer = threading.Timer(FREEZE, self.release)
        self._timer.start()

    def release(self) -> None:
        self._timer.cancel()
        if self._once.acquire(blocking=False):
            self.conn.commit()
            self.conn.close()


@pytest.fixture
def short_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(get_settings(), "db_request_deadline_seconds", 0.5)


def _bookings_of(sql: Any, event_id: int) -> list[dict[str, Any]]:
    return sql.execute("SELECT id, user_id FROM bookings WHERE event_id = %s", (event_id,)).fetchall()


def test_a_booking_cut_at_the_deadline_keeps_its_key_until_its_outcome_is_known(
    http_client: HttpClient, sql: Any, database: str, short_deadline: None
) -> None:
    # GIVEN a keyed booking whose statement the server does not answer
    _, org = account(http_client, "organizer")
    user, _ = account(http_client, "customer")
    event = create_event(http_client, org, total_tickets=10)
    lock = _RowLock(database, event["id"])
    key = f"cut-{uuid.uuid4().hex}"

    def action(lease: idempotency.KeyLease | None) -> dict[str, Any]:
        return bookings.book(user_id=user["id"], event_id=event["id"], quantity=1, default_max=10, idempotency=lease)

    # WHEN the deadline passes
    started = time.monotonic()
    with pytest.raises(db.DeadlineExceeded) as cut:
        idempotency.run(user_id=user["id"], key=key, request_fingerprint="fp", action=action)
    assert time.monotonic() - started < 0.5 + MARGIN
    assert cut.value.status_code == 503 and cut.value.headers["Retry-After"]

    # THEN the key is not freed: the statement may still commit (here it does, once unblocked)
    with pytest.raises(AppError) as busy:
        idempotency.run(user_id=user["id"], key=key, request_fingerprint="fp", action=action)
    assert busy.value.code == "request_in_progress"
    lock.release()
    for _ in range(50):
        if len(_bookings_of(sql, event["id"])) == 1:
            break
        time.sleep(0.05)
    # ...and a retry replays the booking the cut statement made, never a second one
    body, replayed = idempotency.run(user_id=user["id"], key=key, request_fingerprint="fp", action=action)
    assert replayed == 201
    assert _bookings_of(sql, event["id"]) == [{"id": body["id"], "user_id": user["id"]}]


def test_a_coalesced_batch_cut_before_commit_answers_503_unbooked_and_frees_its_keys(
    http_client: HttpClient, sql: Any, database: str, short_deadline: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a lane whose transactions the server does not answer: one booking alone, then a batch
    monkeypatch.setattr(get_settings(), "booking_lane_wait_seconds", 5.0)
    _, org = account(http_client, "organizer")
    first, _ = account(http_client, "customer")
    user, _ = account(http_client, "customer")
    event = create_event(http_client, org, total_tickets=10)
    keys = [f"batch-{uuid.uuid4().hex}" for _ in range(3)]
    lock = _RowLock(database, event["id"])

    async def scenario() -> list[tuple[Any, float]]:
        lanes = coalescing.Coalescer()
        loop = asyncio.get_running_loop()

        async def one(user_id: int, key: str | None = None) -> tuple[Any, float]:
            async def action(lease: idempotency.KeyLease | None) -> dict[str, Any]:
                return await lanes.book(
                    user_id=user_id, event_id=event["id"], quantity=1, default_max=10, idempotency=lease
                )

            started = loop.time()
            try:
                result: Any = await idempotency.run_async(
                    user_id=user_id, key=key, request_fingerprint="fp", action=action
                )
            except AppError as err:
                result = err
            return result, loop.time() - started

        ahead = asyncio.create_task(one(first["id"]))
        await asyncio.sleep(0.1)
        behind = [asyncio.create_task(one(user["id"], key)) for key in keys]
        return [await ahead] + [await b for b in behind]

    (alone, alone_took), *batch = run_on_new_loop(scenario())
    lock.release()

    # THEN each ends at its transaction's deadline, not when the server answers...
    assert isinstance(alone, db.DeadlineExceeded) and alone.sent and alone_took < 0.5 + MARGIN
    for err, took in batch:  # ...the batch's, before COMMIT: unbooked, never retried one by one
        assert isinstance(err, AppError) and (err.status_code, err.code) == (503, "database_unavailable")
        assert took < 1.0 + MARGIN
    # ...their keys are free (nothing was written), and a retry books exactly once
    for key in keys:
        assert sql.execute("SELECT 1 FROM idempotency_keys WHERE key = %s", (key,)).fetchone() is None
    time.sleep(0.3)  # the alone booking's cut statement may commit once unblocked: it was sent
    assert all(row["user_id"] == first["id"] for row in _bookings_of(sql, event["id"]))
    again = idempotency._begin(user["id"], keys[0], "fp")
    assert isinstance(again, idempotency.KeyLease)
    booked = bookings.book(user_id=user["id"], event_id=event["id"], quantity=1, default_max=10, idempotency=again)
    assert [r["id"] for r in _bookings_of(sql, event["id"]) if r["user_id"] == user["id"]] == [booked["id"]]


def test_readiness_is_bounded_when_the_server_freezes_after_it_connected(
    hung_env: tuple[Server, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """connect_timeout bounds the connect; the probe's query needs the watchdog too."""
    from shared.web import health
    server, _ = hung_env
    real_connect = psycopg.connect
    thaw = threading.Timer(FREEZE, _signal_all, (server, signal.SIGCONT))

    def connect_then_freeze(*args: Any, **kwargs: Any) -> psycopg.Connection[Any]:
        conn = real_connect(*args, **kwargs)
        _signal_all(server, signal.SIGSTOP)
        thaw.start()
        return conn

    monkeypatch.setattr(psycopg, "connect", connect_then_freeze)
    started = time.monotonic()
    try:
        problem = health._check_database()
    finally:
        thaw.cancel()
        _signal_all(server, signal.SIGCONT)
    assert problem is not None  # not ready, and said so within the probe's own bound
    assert time.monotonic() - started <= health._CHECK_TIMEOUT_S + MARGIN
