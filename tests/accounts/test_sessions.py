"""Sessions: rotating refresh tokens, reuse detection, and revocation that takes effect at
once on booking and read routes (logout, password change, role change)."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from typing import Any

import jwt
import pytest

from shared.platform.settings import get_settings
from tests.support.clients import Client, HttpClient, LambdaClient
from tests.support.factories import PASSWORD, create_event, register
from tests.support.settings_env import restore_env, set_env


def _login(client: Client, email: str, password: str = PASSWORD) -> dict[str, Any]:
    r = client.request("POST", "/auth/token", form={"username": email, "password": password})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _refresh(client: Client, refresh_token: str) -> Any:
    return client.request("POST", "/auth/refresh", json_body={"refresh_token": refresh_token})


def _book(client: Client, token: str, event_id: int) -> Any:
    return client.request("POST", "/bookings", json_body={"event_id": event_id}, token=token)


@pytest.fixture
def event(v2: LambdaClient) -> dict[str, Any]:
    org = register(v2, "organizer")
    return create_event(v2, _login(v2, org["email"])["access_token"], total_tickets=1000)


def _assert_revoked_everywhere(client: Client, token: str, event_id: int) -> None:
    """Refused on the booking hot path, on a read route and on a write route."""
    for r in (_book(client, token, event_id), client.request("GET", "/users/me", token=token),
              client.request("GET", "/bookings", token=token)):
        assert r.status_code == 401, r.text
        assert r.json()["code"] == "token_revoked"


def test_login_answers_a_short_access_token_and_a_refresh_token(client: Client) -> None:
    user = register(client, "customer")
    body = _login(client, user["email"])
    assert body["token_type"] == "bearer" and body["user_id"] == user["id"] and body["role"] == "customer"
    assert body["expires_in"] == get_settings().jwt_ttl_seconds == 900
    assert body["refresh_token"] and body["refresh_expires_in"] > body["expires_in"]
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 900 and claims["jti"] and claims["sid"]


def test_refresh_rotates_and_a_reused_token_revokes_the_whole_family(client: Client, event: dict[str, Any]) -> None:
    user = register(client, "customer")
    first = _login(client, user["email"])
    r = _refresh(client, first["refresh_token"])
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["refresh_token"] != first["refresh_token"] and second["user_id"] == user["id"]
    assert client.request("GET", "/users/me", token=second["access_token"]).status_code == 200

    # The first refresh token was used: presenting it again is theft.
    r = _refresh(client, first["refresh_token"])
    assert r.status_code == 401 and r.json()["code"] == "refresh_token_reused"
    # The thief's and the owner's tokens of that login are all dead now.
    r = _refresh(client, second["refresh_token"])
    assert r.status_code == 401 and r.json()["code"] == "invalid_refresh_token"
    _assert_revoked_everywhere(client, second["access_token"], event["id"])
    # Another login of the same user is untouched.
    other = _login(client, user["email"])
    assert _book(client, other["access_token"], event["id"]).status_code == 201


def test_unknown_refresh_token_is_401_not_500(v2: LambdaClient) -> None:
    for bad in ("nope", "x" * 200):
        r = _refresh(v2, bad)
        assert r.status_code == 401 and r.json()["code"] == "invalid_refresh_token"
    assert _refresh(v2, "").status_code == 422


def test_concurrent_refresh_with_one_token_issues_exactly_one_new_token(http_client: HttpClient) -> None:
    """Raced over real HTTP against PostgreSQL: the guarded UPDATE lets one use win."""
    user = register(http_client, "customer")
    token = _login(http_client, user["email"])["refresh_token"]
    racers = 20
    barrier = threading.Barrier(racers)
    results: list[tuple[int, str]] = []

    def use() -> None:
        barrier.wait()
        r = _refresh(http_client, token)
        results.append((r.status_code, r.json().get("code", "")))

    threads = [threading.Thread(target=use) for _ in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert Counter(status for status, _ in results) == {200: 1, 401: racers - 1}, results
    assert {code for status, code in results if status == 401} <= {"refresh_token_reused", "invalid_refresh_token"}


def test_logout_ends_the_session_on_booking_and_read_routes(client: Client, event: dict[str, Any]) -> None:
    user = register(client, "customer")
    session = _login(client, user["email"])
    other = _login(client, user["email"])  # another device
    assert _book(client, session["access_token"], event["id"]).status_code == 201

    r = client.request("POST", "/auth/logout", token=session["access_token"])
    assert r.status_code == 204, r.text
    _assert_revoked_everywhere(client, session["access_token"], event["id"])
    assert _refresh(client, session["refresh_token"]).json()["code"] == "invalid_refresh_token"
    # Logout ends this login only.
    assert _book(client, other["access_token"], event["id"]).status_code == 201
    assert _refresh(client, other["refresh_token"]).status_code == 200


def test_password_change_ends_every_session(client: Client, event: dict[str, Any]) -> None:
    user = register(client, "customer")
    one, two = _login(client, user["email"]), _login(client, user["email"])
    r = client.request("PUT", "/users/me/password", token=one["access_token"],
                       json_body={"current_password": "wrong-one", "new_password": "n3w-pass"})
    assert r.status_code == 403 and r.json()["code"] == "wrong_password"
    assert _book(client, one["access_token"], event["id"]).status_code == 201  # nothing changed

    r = client.request("PUT", "/users/me/password", token=one["access_token"],
                       json_body={"current_password": PASSWORD, "new_password": "n3w-pass"})
    assert r.status_code == 204, r.text
    for session in (one, two):
        _assert_revoked_everywhere(client, session["access_token"], event["id"])
        assert _refresh(client, session["refresh_token"]).status_code == 401
    r = client.request("POST", "/auth/token", form={"username": user["email"], "password": PASSWORD})
    assert r.status_code == 401
    fresh = _login(client, user["email"], "n3w-pass")
    assert _book(client, fresh["access_token"], event["id"]).status_code == 201


def test_role_change_by_the_admin_command_ends_every_session(v2: LambdaClient, event: dict[str, Any]) -> None:
    from functions.users import admin

    user = register(v2, "customer")
    session = _login(v2, user["email"])
    assert admin.main(["set-role", user["email"].upper(), "organizer"]) == 0
    _assert_revoked_everywhere(v2, session["access_token"], event["id"])
    assert _refresh(v2, session["refresh_token"]).status_code == 401
    again = _login(v2, user["email"])
    assert again["role"] == "organizer"
    assert _book(v2, again["access_token"], event["id"]).json()["code"] == "customer_only"
    assert admin.main(["set-role", "nobody@test.com", "customer"]) == 1
    # The command finds the account by the one email normalization (fullwidth forms too).
    fullwidth = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in user["email"])
    assert admin.main(["set-role", fullwidth, "customer"]) == 0


def test_booking_routes_check_revocation_in_the_rate_limit_round_trip(
    v2: LambdaClient, event: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No second Redis call on the hot path: the plain check is never reached there."""
    import shared.accounts.sessions

    calls: list[object] = []
    real = shared.accounts.sessions.ensure_active
    monkeypatch.setattr(shared.accounts.sessions, "ensure_active", lambda p: calls.append(p) or real(p))
    user = register(v2, "customer")
    session = _login(v2, user["email"])
    assert _book(v2, session["access_token"], event["id"]).status_code == 201
    assert calls == []
    assert v2.request("GET", "/bookings", token=session["access_token"]).status_code == 200
    assert len(calls) == 1


def test_revocation_holds_on_booking_routes_with_rate_limits_off(v2: LambdaClient, event: dict[str, Any]) -> None:
    user = register(v2, "customer")
    session = _login(v2, user["email"])
    assert v2.request("POST", "/auth/logout", token=session["access_token"]).status_code == 204
    saved = set_env({"RATE_LIMIT_ENABLED": "false"})
    try:
        r = _book(v2, session["access_token"], event["id"])
        assert r.status_code == 401 and r.json()["code"] == "token_revoked"
    finally:
        restore_env(saved)


def test_redis_down_fails_open_within_the_timeout(v2: LambdaClient, event: dict[str, Any]) -> None:
    """A Redis outage must not sign everyone out: the short access TTL bounds the exposure."""
    import shared.accounts.sessions
    import shared.web.ratelimit

    user = register(v2, "customer")
    token = _login(v2, user["email"])["access_token"]
    saved = set_env({"REDIS_URL": "redis://127.0.0.1:1/0"})
    try:
        started = time.monotonic()
        assert v2.request("GET", "/users/me", token=token).status_code == 200
        assert _book(v2, token, event["id"]).status_code == 201
        assert time.monotonic() - started < 3
    finally:
        restore_env(saved)
        shared.accounts.sessions._redis.reset()
        shared.web.ratelimit.limiter.reset()


# --- a login racing a password or role change ---------------------------------------------


def _live_sessions(user_id: int) -> int:
    from shared.platform.db import connection

    with connection() as conn:
        row = conn.execute(
            "SELECT count(*) AS n FROM sessions WHERE user_id = %s AND revoked_at IS NULL", (user_id,)
        ).fetchone()
    assert row is not None
    return int(row["n"])


def test_a_login_verified_against_the_old_password_does_not_outlive_its_change(
    v2: LambdaClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The password changes after the login's (slow) check and before its session exists:
    the login must fail, not start a session the change could not see."""
    from shared.accounts import password_hashing, users
    user = register(v2, "customer")
    changed = threading.Event()

    def verify_then_change(stored: str, password: str) -> bool:
        ok = password_hashing.verify_password(stored, password)
        if not changed.is_set():
            changed.set()
            users.change_password(user_id=user["id"], current_password=PASSWORD, new_password="n3w-pass")
        return ok

    monkeypatch.setattr(users, "verify_password", verify_then_change)
    r = v2.request("POST", "/auth/token", form={"username": user["email"], "password": PASSWORD})
    assert changed.is_set()
    assert r.status_code == 401 and r.json()["code"] == "invalid_credentials", r.text
    assert _live_sessions(user["id"]) == 0
    monkeypatch.undo()
    assert _login(v2, user["email"], "n3w-pass")["user_id"] == user["id"]


def test_logins_racing_a_password_change_leave_no_live_session(http_client: HttpClient) -> None:
    """Raced over real HTTP: every login with the old password either ends before the
    change (and is revoked by it) or fails; none keeps a session afterwards."""
    user = register(http_client, "customer")
    stop = threading.Event()
    tokens: list[str] = []

    def keep_logging_in() -> None:
        while not stop.is_set():
            r = http_client.request("POST", "/auth/token", form={"username": user["email"], "password": PASSWORD})
            if r.status_code == 200:
                tokens.append(r.json()["refresh_token"])
            else:
                assert r.json()["code"] in ("invalid_credentials", "rate_limited"), r.text
                if r.json()["code"] == "invalid_credentials":
                    return

    session = _login(http_client, user["email"])
    threads = [threading.Thread(target=keep_logging_in) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    r = http_client.request("PUT", "/users/me/password", token=session["access_token"],
                            json_body={"current_password": PASSWORD, "new_password": "n3w-pass"})
    assert r.status_code == 204, r.text
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(30)
    assert tokens
    assert _live_sessions(user["id"]) == 0
    assert {_refresh(http_client, token).status_code for token in tokens} == {401}


def test_a_login_waits_for_a_role_change_in_flight_and_gets_the_new_role(http_client: HttpClient) -> None:
    """A role change holds the user row while it revokes the sessions: a login that passed
    its password check meanwhile either waits and gets the new role, or is revoked by it."""
    from shared.accounts import sessions
    from shared.platform.db import connection

    user = register(http_client, "customer")
    results: list[dict[str, Any]] = []
    with connection() as conn, conn.transaction():
        conn.execute("UPDATE users SET role = 'organizer' WHERE id = %s", (user["id"],))
        sessions.revoke_user_sessions(conn, user["id"], reason="role_changed")
        racer = threading.Thread(target=lambda: results.append(_login(http_client, user["email"])))
        racer.start()
        racer.join(0.5)  # the login blocks on the row until the change commits
    racer.join(30)
    assert results and results[0]["role"] == "organizer"
    claims = jwt.decode(results[0]["access_token"], options={"verify_signature": False})
    assert claims["role"] == "organizer"


def test_refresh_is_rate_limited_per_address(v2: LambdaClient) -> None:
    """Unauthenticated and a database write each: a flood from one address is refused."""
    saved = set_env({"RATE_LIMIT_REFRESH_PER_IP": "2/60",
                     "RATE_LIMIT_KEY_PREFIX": f"rl-refresh-{uuid.uuid4().hex[:8]}"})
    try:
        statuses = [_refresh(v2, f"not-a-token-{i}").status_code for i in range(3)]
    finally:
        restore_env(saved)
    assert statuses == [401, 401, 429]
