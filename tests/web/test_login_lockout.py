"""Login throttling: guessing stays slow, the owner is never locked out by other addresses.

Requests go through the users function's Lambda handler with API Gateway events whose
``sourceIp`` is the caller's address, so each test plays several addresses at once.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlencode

import pytest

from local.embedded import free_port
from local.lambda_events import build_lambda_event, invoke
from shared.web.ratelimit import LocalLimiter, RateRule, limiter
from tests.support.clients import HttpClient, LambdaClient
from tests.support.factories import PASSWORD, register, unique_email
from tests.support.settings_env import restore_env, set_env

OWNER_IP, ATTACKER_IP = "198.51.100.7", "203.0.113.66"


@pytest.fixture
def limits(database: str) -> Iterator[None]:
    """3 failures per (account, address), 5 per account, under a key prefix of this test's own."""
    saved = set_env({
        "RATE_LIMIT_KEY_PREFIX": f"rl-lockout-{uuid.uuid4().hex[:8]}",
        "RATE_LIMIT_LOGIN_PER_IP": "1000/60",
        "RATE_LIMIT_LOGIN_PER_ACCOUNT": "1000/60",
        "RATE_LIMIT_FAILED_LOGIN_PER_ACCOUNT_IP": "3/600",
        "RATE_LIMIT_FAILED_LOGIN_PER_ACCOUNT": "5/600",
    })
    yield
    restore_env(saved)


def login_from(ip: str, email: str, password: str = PASSWORD) -> tuple[int, dict]:  # type: ignore[type-arg]
    body = urlencode({"username": email, "password": password}).encode()
    event = build_lambda_event("POST", "/auth/token", headers={"content-type": "application/x-www-form-urlencoded"},
                        body=body, source_ip=ip)
    result = invoke("users", event)
    return result["statusCode"], json.loads(result["body"])


def test_attacker_address_is_throttled_while_the_owner_signs_in(limits: None) -> None:
    user = register(LambdaClient("v2"), "customer")
    assert login_from(OWNER_IP, user["email"])[0] == 200  # the owner's address is now known
    attempts = [login_from(ATTACKER_IP, user["email"], "guess-" + str(i)) for i in range(4)]
    assert [status for status, _ in attempts] == [401, 401, 401, 429]
    assert attempts[-1][1]["details"]["limit"] == "failed_login_per_account_ip"
    # The right password from the attacker's address is refused too: it is out of guesses.
    assert login_from(ATTACKER_IP, user["email"])[0] == 429
    assert login_from(OWNER_IP, user["email"])[0] == 200


def test_no_number_of_failures_from_elsewhere_locks_the_owner_out(limits: None) -> None:
    user = register(LambdaClient("v2"), "customer")
    assert login_from(OWNER_IP, user["email"])[0] == 200
    statuses = [login_from(f"203.0.113.{n}", user["email"], "wrong")[0] for n in range(1, 21) for _ in range(3)]
    assert statuses.count(401) == 5  # the account-wide budget, then every address is refused
    assert set(statuses) == {401, 429}
    # A new address is refused even with the right password while the account is under attack...
    status, body = login_from("192.0.2.200", user["email"])
    assert status == 429 and body["details"]["limit"] == "failed_login_per_account"
    # ...but the owner's own address is not.
    assert login_from(OWNER_IP, user["email"])[0] == 200
    # Exempt from the account-wide limit is not exempt from counting: its own typos still add up.
    statuses = [login_from(OWNER_IP, user["email"], "typo")[0] for _ in range(4)]
    assert statuses == [401, 401, 401, 429]


def test_the_owners_address_is_still_throttled_on_its_own(limits: None) -> None:
    user = register(LambdaClient("v2"), "customer")
    assert login_from(OWNER_IP, user["email"])[0] == 200
    statuses = [login_from(OWNER_IP, user["email"], "wrong")[0] for _ in range(4)]
    assert statuses == [401, 401, 401, 429]
    status, body = login_from(OWNER_IP, user["email"])
    assert status == 429 and body["details"]["limit"] == "failed_login_per_account_ip"


def test_every_spelling_of_an_address_shares_one_guess_budget(limits: None) -> None:
    email = unique_email("budget")
    register(LambdaClient("v2"), "customer", email=email)
    local, domain = email.split("@")
    spellings = [email.upper(), "".join(chr(ord(c) + 0xFEE0) if c.isalnum() else c for c in local) + "@" + domain,
                 f"  {email}  ", email.title()]
    statuses = [login_from(ATTACKER_IP, spelling, "wrong")[0] for spelling in spellings]
    assert statuses == [401, 401, 401, 429]


def test_a_dotted_capital_i_does_not_reach_the_dotless_account(limits: None) -> None:
    """Python's case fold of U+0130 is "i" + U+0307; PostgreSQL's lower() made it "i"."""
    email = unique_email("info")
    register(LambdaClient("v2"), "customer", email=email)
    status, body = login_from(ATTACKER_IP, "\u0130" + email[1:], PASSWORD)
    assert status == 401 and body["code"] == "invalid_credentials"


def test_without_redis_login_failures_are_limited_per_process(limits: None) -> None:
    user = register(LambdaClient("v2"), "customer")
    saved = set_env({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})  # nothing listens there
    try:
        started = time.monotonic()
        statuses = [login_from(ATTACKER_IP, user["email"], "wrong")[0] for _ in range(4)]
        elapsed = time.monotonic() - started
    finally:
        restore_env(saved)
        limiter.check([])  # reconnects to the restored URL
    assert statuses == [401, 401, 401, 429]
    assert elapsed < 5, elapsed


def test_the_per_process_fallback_has_bounded_memory(database: str) -> None:
    saved = set_env({"RATE_LIMIT_LOCAL_MAX_KEYS": "100"})
    try:
        local = LocalLimiter()
        rule = RateRule.parse("t", "k", "1/60")
        for n in range(1000):
            local.gcra([f"key-{n}"], [rule.timing_ms], "all")
            local.flag(f"flag-{n}", 60)
        assert local.gcra(["key-999"], [rule.timing_ms], "all")[0] == 0  # the newest still counts
        assert local.flagged("flag-999")
        assert len(local._tats) == 100 and len(local._flags) == 100
    finally:
        restore_env(saved)


def _wrong_password_changes(client: LambdaClient, token: str, times: int) -> list[int]:
    body = {"current_password": "not-it", "new_password": "An0ther-Long-Passphrase"}
    return [client.request("PUT", "/users/me/password", json_body=body, token=token).status_code
            for _ in range(times)]


def _signed_in(client: LambdaClient) -> tuple[dict, str]:  # type: ignore[type-arg]
    user = register(client, "customer")
    r = client.request("POST", "/auth/token", form={"username": user["email"], "password": PASSWORD})
    return user, r.json()["access_token"]


def test_a_stolen_token_cannot_guess_the_password_through_a_password_change(limits: None) -> None:
    """PUT /users/me/password checks the current password: wrong ones count as guesses."""
    client = LambdaClient("v2")
    _, access = _signed_in(client)
    assert _wrong_password_changes(client, access, 4) == [403, 403, 403, 429]
    # Out of guesses: even the right current password waits, so the oracle is closed.
    right = {"current_password": PASSWORD, "new_password": "An0ther-Long-Passphrase"}
    r = client.request("PUT", "/users/me/password", json_body=right, token=access)
    assert r.status_code == 429 and r.json()["details"]["limit"] == "failed_login_per_account_ip"


def _race(attempt: Callable[[], int], racers: int = 20) -> Counter[int]:
    barrier = threading.Barrier(racers)
    statuses: list[int] = []

    def run() -> None:
        barrier.wait()
        statuses.append(attempt())

    threads = [threading.Thread(target=run) for _ in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return Counter(statuses)


@contextmanager
def _redis(up: bool) -> Iterator[None]:
    if up:
        yield
        return
    saved = set_env({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})  # nothing listens there
    try:
        yield
    finally:
        restore_env(saved)
        limiter.check([])
        limiter.reset()


@pytest.mark.parametrize("redis_up", [True, False], ids=["redis", "per-process"])
def test_parallel_wrong_logins_get_exactly_the_failure_budget(
    limits: None, http_client: HttpClient, redis_up: bool
) -> None:
    """Raced over real HTTP from one address: the failure is reserved before the slow hash,
    so 20 parallel guesses against a 3-failure budget get 3 answers, never more."""
    user = register(http_client, "customer")
    form = {"username": user["email"], "password": "wrong"}
    with _redis(redis_up):
        statuses = _race(lambda: http_client.request("POST", "/auth/token", form=form).status_code)
    assert statuses == {401: 3, 429: 17}, statuses


def test_parallel_wrong_current_passwords_get_exactly_the_failure_budget(
    limits: None, http_client: HttpClient
) -> None:
    user = register(http_client, "customer")
    access = http_client.request("POST", "/auth/token",
                                 form={"username": user["email"], "password": PASSWORD}).json()["access_token"]
    body = {"current_password": "not-it", "new_password": "An0ther-Long-Passphrase"}
    statuses = _race(lambda: http_client.request("PUT", "/users/me/password", json_body=body,
                                                 token=access).status_code)
    assert statuses == {403: 3, 429: 17}, statuses


@pytest.mark.parametrize("redis_up", [True, False], ids=["redis", "per-process"])
def test_a_right_password_gives_its_reserved_failure_back(limits: None, redis_up: bool) -> None:
    user = register(LambdaClient("v2"), "customer")
    with _redis(redis_up):
        assert [login_from(ATTACKER_IP, user["email"], "wrong")[0] for _ in range(2)] == [401, 401]
        assert [login_from(ATTACKER_IP, user["email"])[0] for _ in range(6)] == [200] * 6
        statuses = [login_from(ATTACKER_IP, user["email"], "wrong")[0] for _ in range(2)]
    assert statuses == [401, 429]


def register_from(ip: str, email: str | None = None) -> tuple[int, dict]:  # type: ignore[type-arg]
    body = json.dumps({"email": email or unique_email(), "password": PASSWORD, "role": "customer"})
    event = build_lambda_event("POST", "/users", headers={"content-type": "application/json"}, body=body, source_ip=ip)
    result = invoke("users", event)
    return result["statusCode"], json.loads(result["body"])


def test_addresses_of_one_ipv6_64_share_one_guess_budget(limits: None) -> None:
    """An IPv6 /64 is one subscriber's: rotating its low 64 bits is not a new client."""
    user = register(LambdaClient("v2"), "customer")
    statuses = [login_from(f"2001:db8:7:7::{n:x}", user["email"], "wrong")[0] for n in range(1, 11)]
    assert statuses == [401, 401, 401] + [429] * 7
    assert login_from("2001:db8:7:8::1", user["email"], "wrong")[0] == 401  # the next /64 is another


@pytest.mark.parametrize("owner_ip", [OWNER_IP, "2001:db8:42:1::10"])
def test_the_registration_address_is_the_owners_before_any_login(limits: None, owner_ip: str) -> None:
    """Guesses from elsewhere exhaust the account-wide budget before the owner ever signs
    in: the address (network) they registered from still lets them in."""
    email = unique_email()
    assert register_from(owner_ip, email)[0] == 201
    statuses = [login_from(f"203.0.113.{n}", email, "wrong")[0] for n in range(1, 11)]
    assert statuses.count(401) == 5 and statuses[-1] == 429
    assert login_from("192.0.2.200", email)[0] == 429  # a new address waits...
    same_network = owner_ip if ":" not in owner_ip else "2001:db8:42:1::99"
    assert login_from(same_network, email)[0] == 200  # ...the registering one does not


def test_logins_and_password_changes_share_one_guess_budget(limits: None) -> None:
    """Wrong passwords on either route come out of the same per-account-and-address budget."""
    client = LambdaClient("v2")
    user, token = _signed_in(client)
    changes = _wrong_password_changes(client, token, 2)
    logins = [client.request("POST", "/auth/token", form={"username": user["email"], "password": "nope"}).status_code
              for _ in range(2)]
    assert changes == [403, 403] and logins == [401, 429]  # 3 guesses per address in all
