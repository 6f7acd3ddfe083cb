"""Rate limits: shared through Redis across processes, 429 + Retry-After, per process without Redis."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import pytest

from functions.users.routes import router as users_router
from local.embedded import free_port
from shared.web.app import create_app
from shared.web.ratelimit import limiter
from tests.support.api_process import api_process
from tests.support.clients import Client, HttpClient, LambdaClient
from tests.support.factories import PASSWORD, account, create_event, register
from tests.support.settings_env import restore_env, set_env


@pytest.fixture
def limits(database: str) -> Iterator[dict[str, str]]:
    """Tight limits under a key prefix of this test's own (Redis is shared by the suite)."""
    values = {
        "RATE_LIMIT_KEY_PREFIX": f"rl-test-{uuid.uuid4().hex[:8]}",
        "RATE_LIMIT_LOGIN_PER_IP": "1000/60",
        "RATE_LIMIT_LOGIN_PER_ACCOUNT": "3/60",
        "RATE_LIMIT_FAILED_LOGIN_PER_ACCOUNT": "3/600",
        "RATE_LIMIT_FAILED_LOGIN_PER_ACCOUNT_IP": "3/600",
        "RATE_LIMIT_BOOKING_PER_USER": "2/60",
        "RATE_LIMIT_BOOKING_PER_IP": "1000/60",
    }
    saved = set_env(values)
    yield values
    restore_env(saved)


def _login(client: Client, email: str, password: str = PASSWORD) -> tuple[int, dict[str, str], dict]:  # type: ignore[type-arg]
    r = client.request("POST", "/auth/token", form={"username": email, "password": password})
    return r.status_code, r.headers, r.json()


@pytest.fixture
def second_process(limits: dict[str, str], database: str) -> Iterator[HttpClient]:
    """Another API process (uvicorn in a subprocess) with the same settings and Redis."""
    with api_process({**os.environ, **limits}) as api:
        client = _RemoteClient(api.base_url)
        try:
            yield client  # type: ignore[misc]
        finally:
            client.http.close()


class _RemoteClient(HttpClient):
    """HttpClient's request() against a server someone else runs."""

    def __init__(self, base_url: str) -> None:  # no super(): nothing to start here
        import httpx

        self.name = "remote"
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, timeout=30)


def test_nth_plus_one_login_is_refused_across_two_processes(
    limits: dict[str, str], http_client: HttpClient, second_process: HttpClient
) -> None:
    user = register(http_client, "customer")
    instance_a = HttpClient(create_app("instance A", [users_router]), name="a")
    try:
        results = [
            _login(client, user["email"])
            for client in (instance_a, second_process, instance_a, second_process)
        ]
    finally:
        instance_a.close()
    assert [status for status, _, _ in results] == [200, 200, 200, 429]
    _, headers, body = results[3]
    assert body["code"] == "rate_limited"
    assert body["details"]["limit"] == "login_per_account"
    retry_after = int(headers["retry-after"])
    assert 1 <= retry_after <= 60
    # The refusal itself is not a login: another account is unaffected.
    other = register(http_client, "customer")
    assert _login(second_process, other["email"])[0] == 200


def test_login_limit_per_client_ip(limits: dict[str, str], http_client: HttpClient) -> None:
    saved = set_env({"RATE_LIMIT_LOGIN_PER_IP": "2/60"})
    try:
        users = [register(http_client, "customer") for _ in range(3)]
        lambda_client = LambdaClient("v2")  # source IP 127.0.0.1 too, through API Gateway
        statuses = [_login(http_client, users[0]["email"])[0],
                    _login(lambda_client, users[1]["email"])[0]]
        status, headers, body = _login(http_client, users[2]["email"])
    finally:
        restore_env(saved)
    assert statuses == [200, 200]
    assert status == 429 and body["details"]["limit"] == "login_per_ip"
    assert int(headers["retry-after"]) >= 1


def test_failed_logins_lock_the_account_not_the_others(
    limits: dict[str, str], http_client: HttpClient
) -> None:
    victim = register(http_client, "customer")
    bystander = register(http_client, "customer")
    failures = [_login(http_client, victim["email"], "wrong-password")[0] for _ in range(3)]
    assert failures == [401, 401, 401]
    status, headers, body = _login(http_client, victim["email"])  # right password, too late
    assert status == 429
    assert body["code"] == "rate_limited"
    # The victim registered from this address, so it is theirs: its own budget is what ran out
    # (tests/web/test_login_lockout.py covers the account-wide limit from other addresses).
    assert body["details"]["limit"] == "failed_login_per_account_ip"
    assert 1 <= int(headers["retry-after"]) <= 600
    assert _login(http_client, bystander["email"])[0] == 200


def test_successful_logins_do_not_count_as_failures(
    limits: dict[str, str], http_client: HttpClient
) -> None:
    saved = set_env({"RATE_LIMIT_LOGIN_PER_ACCOUNT": "100/60"})
    try:
        user = register(http_client, "customer")
        successes = [_login(http_client, user["email"])[0] for _ in range(5)]
        failures = [_login(http_client, user["email"], "nope")[0] for _ in range(4)]
    finally:
        restore_env(saved)
    assert successes == [200] * 5  # a limit of 3 failures would refuse these if they counted
    assert failures == [401, 401, 401, 429]


def test_booking_limit_per_user_refuses_without_taking_tickets(
    limits: dict[str, str], client: Client
) -> None:
    _, organizer = account(client, "organizer")
    customer, token = account(client, "customer")
    event = create_event(client, organizer, total_tickets=10)
    body = {"event_id": event["id"], "quantity": 1}
    r1 = client.request("POST", "/bookings", json_body=body, token=token)
    r2 = client.request("POST", f"/book/{customer['id']}", json_body=body, token=token)
    r3 = client.request("POST", "/bookings", json_body=body, token=token)
    assert (r1.status_code, r2.status_code, r3.status_code) == (201, 201, 429), r3.text
    assert r3.json()["code"] == "rate_limited"
    assert r3.json()["details"]["limit"] == "booking_per_user"
    assert int(r3.headers["retry-after"]) >= 1
    r = client.request("GET", f"/events/{event['id']}")
    assert r.json()["available_tickets"] == 8


def test_redis_down_falls_back_to_per_process_limits_quickly(
    limits: dict[str, str], http_client: HttpClient
) -> None:
    _, organizer = account(http_client, "organizer")
    user, token = account(http_client, "customer")
    event = create_event(http_client, organizer, total_tickets=10)
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    saved = set_env({"REDIS_URL": dead_redis, "RATE_LIMIT_LOGIN_PER_ACCOUNT": "1/60",
                      "RATE_LIMIT_BOOKING_PER_USER": "1/60"})
    try:
        started = time.monotonic()
        logins = [_login(http_client, user["email"])[0] for _ in range(3)]
        bookings = [
            http_client.request("POST", "/bookings", token=token,
                                json_body={"event_id": event["id"], "quantity": 1}).status_code
            for _ in range(3)
        ]
        elapsed = time.monotonic() - started
    finally:
        restore_env(saved)
        limiter.check([])  # no-op; the next real check reconnects to the restored URL
    assert logins == [200, 429, 429]  # limits of 1/60, enforced in this process
    assert bookings == [201, 429, 429]
    assert elapsed < 5, elapsed


def test_a_connection_closed_under_a_call_falls_back_like_redis_down(
    limits: dict[str, str], http_client: HttpClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py surfaces a connection closed by a concurrent caller as ValueError, not as one
    of its own errors: that is Redis trouble too, never a 500 or a dropped connection."""
    user, token = account(http_client, "customer")

    def closed(*args: object, **kwargs: object) -> None:
        raise ValueError("I/O operation on closed file.")

    limiter.reset()
    client = limiter._breaker.client()
    assert client is not None
    monkeypatch.setattr(client, "set", closed)
    monkeypatch.setattr(client, "exists", closed)
    monkeypatch.setattr(client, "evalsha", closed)
    try:
        assert _login(http_client, user["email"])[0] == 200
        r = http_client.request("GET", "/users/me", token=token)
        assert r.status_code == 200, r.text
    finally:
        monkeypatch.undo()
        limiter.reset()
