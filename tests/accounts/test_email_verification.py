"""Verification tokens against the real database: single use under a race, expiry, revocation,
the resend route and its limit, the REQUIRE_VERIFIED_EMAIL rule, and link-free messages.

Tokens are minted with the function the worker uses (``email_verification.mint``), so
these tests need no worker; tests/notifications/test_verification.py covers the mail itself.
"""

from __future__ import annotations

import logging
import secrets
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from shared.platform.settings import Settings, get_settings
from tests.support.clients import Client, LambdaClient
from tests.support.factories import account
from tests.support.settings_env import restore_env, set_env


def _issue(user: dict[str, Any]) -> str:
    from shared.accounts import email_verification
    from shared.platform.db import connection

    with connection() as conn, conn.transaction():
        # As the worker does: the user's row locked, so a worker minting too takes turns.
        conn.execute("SELECT 1 FROM users WHERE id = %s FOR UPDATE", (user["id"],))
        return email_verification.mint(conn, user_id=user["id"], email=user["email"],
                                       ttl_seconds=get_settings().email_verification_ttl_seconds)


def _verify(client: Client, token: str) -> Any:
    return client.request("POST", "/users/verify", json_body={"token": token})


def _verified_at(sql: psycopg.Connection, user: dict[str, Any]) -> Any:
    return sql.execute("SELECT email_verified_at FROM users WHERE id = %s",
                       (user["id"],)).fetchone()["email_verified_at"]


def test_two_concurrent_uses_of_a_token_exactly_one_succeeds(
    http_client: Client, sql: psycopg.Connection
) -> None:
    # GIVEN 12 users, each with one token, and 8 clients per token
    users = [account(http_client, "customer")[0] for _ in range(12)]
    tokens = [_issue(user) for user in users]
    barrier = threading.Barrier(len(tokens) * 8)
    answers: list[tuple[str, int, str | None]] = []
    lock = threading.Lock()

    def use(token: str) -> None:
        barrier.wait()
        r = _verify(http_client, token)
        with lock:
            answers.append((token, r.status_code, r.json().get("code")))

    # WHEN all of them present their token at the same instant over real HTTP
    threads = [threading.Thread(target=use, args=(t,)) for t in tokens for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # THEN per token exactly one 200; every other use is verification_used
    assert len(answers) == len(tokens) * 8
    assert Counter(t for t, status, _ in answers if status == 200) == Counter(tokens)
    assert {(s, c) for _, s, c in answers if s != 200} == {(409, "verification_used")}
    assert all(_verified_at(sql, user) is not None for user in users)


def test_a_token_expires(fake_clock: Any, v2: LambdaClient, sql: psycopg.Connection) -> None:
    ttl = get_settings().email_verification_ttl_seconds
    early, late = account(v2, "customer")[0], account(v2, "customer")[0]
    early_token, late_token = _issue(early), _issue(late)
    # a second before the end it works; a second after, it is gone
    fake_clock.advance(ttl - 1)
    assert _verify(v2, early_token).status_code == 200
    fake_clock.advance(2)
    r = _verify(v2, late_token)
    assert (r.status_code, r.json()["code"]) == (410, "verification_expired")
    assert _verified_at(sql, late) is None


def test_wrong_malformed_and_foreign_tokens_are_refused(v2: LambdaClient, sql: psycopg.Connection) -> None:
    user, _ = account(v2, "customer")
    token = _issue(user)
    for wrong in (secrets.token_urlsafe(32), token[:-1], token.upper(), "x", "é" * 40):
        r = _verify(v2, wrong)
        assert (r.status_code, r.json()["code"]) == (400, "verification_invalid"), wrong
    for malformed in ({"token": ""}, {"token": "x" * 513}, {"token": None}, {}):
        r = v2.request("POST", "/users/verify", json_body=malformed)
        assert (r.status_code, r.json()["code"]) == (422, "validation_error"), malformed
    # a token verifies the address it was mailed to, not whatever the account holds now
    sql.execute("UPDATE users SET email = %s WHERE id = %s", (f"moved-{uuid.uuid4().hex}@test.com", user["id"]))
    r = _verify(v2, token)
    assert (r.status_code, r.json()["code"]) == (400, "verification_invalid")
    assert _verified_at(sql, user) is None


def test_resend_revokes_older_tokens_and_is_rate_limited(v2: LambdaClient, sql: psycopg.Connection) -> None:
    saved = set_env({"RATE_LIMIT_VERIFICATION_RESEND": "2/3600",
                     "RATE_LIMIT_KEY_PREFIX": f"rl-verify-{uuid.uuid4().hex[:8]}"})
    try:
        user, token = account(v2, "customer")
        old = _issue(user)
        # WHEN a new mail is requested
        r = v2.request("POST", "/users/me/verification", token=token)
        assert r.status_code == 202, r.text
        assert r.json() == {"status": "queued", "expires_in": get_settings().email_verification_ttl_seconds}
        # THEN the older token no longer works, and a new mail is queued for the worker
        r = _verify(v2, old)
        assert (r.status_code, r.json()["code"]) == (410, "verification_expired")
        queued = sql.execute("SELECT count(*) AS n FROM outbox WHERE task = 'email_verification' "
                             "AND (payload->>'user_id')::bigint = %s", (user["id"],)).fetchone()
        assert queued["n"] == 2  # registration's and this one
        # AND the route is limited per account, and needs a token
        assert v2.request("POST", "/users/me/verification", token=token).status_code == 202
        r = v2.request("POST", "/users/me/verification", token=token)
        assert (r.status_code, r.json()["code"]) == (429, "rate_limited")
        assert "retry-after" in {k.lower() for k in r.headers}
        r = v2.request("POST", "/users/me/verification")
        assert r.status_code == 401
    finally:
        restore_env(saved)


@pytest.mark.parametrize(("app_env", "explicit", "required"), [
    ("development", None, False), ("test", None, True), ("production", None, True),
    ("development", True, True), ("production", False, False),
])
def test_verified_email_is_required_unless_explicitly_development(
    app_env: str, explicit: bool | None, required: bool
) -> None:
    settings = Settings(app_env=app_env, require_verified_email=explicit,  # type: ignore[arg-type]
                        jwt_secret=secrets.token_urlsafe(48), password_min_length=8)
    assert settings.verified_email_required is required


LEAKY_URLS = [
    ("production", "http://tickets.example/verify#{token}"),  # readable on the wire
    ("production", "https://tickets.example/verify?token={token}"),  # server logs, Referer
    ("production", "https://tickets.example/verify/{token}"),
    ("production", "https://tickets.example/verify?t={token}#done"),
    ("production", "http://localhost:8000/verify#{token}"),  # loopback: development only
    ("test", "http://127.0.0.1/verify#{token}"),
    ("development", "http://tickets.example/verify#{token}"),
    ("production", "https:///verify#{token}"), ("production", "javascript:alert(1)#{token}"),
    ("production", "https://user:pw@tickets.example/verify#{token}"),
    ("production", "https://tickets.example/verify#"),  # no token at all
]
SAFE_URLS = [
    ("production", ""), ("production", "https://tickets.example/verify#{token}"),
    ("production", "https://tickets.example/verify?lang=en#token={token}"),
    ("development", "http://localhost:8000/verify#{token}"),
    ("development", "http://127.0.0.1:8000/verify#token={token}"),
]


@pytest.mark.parametrize(("app_env", "url"), LEAKY_URLS)
def test_a_verification_url_that_leaks_its_token_is_refused_at_load(app_env: str, url: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="EMAIL_VERIFICATION_URL"):
        Settings(app_env=app_env, email_verification_url=url)  # type: ignore[arg-type]
    saved = set_env({"APP_ENV": app_env, "EMAIL_VERIFICATION_URL": url})
    try:
        with pytest.raises(ValidationError, match="EMAIL_VERIFICATION_URL"):
            get_settings()
    finally:
        restore_env(saved)


@pytest.mark.parametrize(("app_env", "url"), SAFE_URLS)
def test_a_verification_url_with_the_token_in_its_fragment_is_accepted(app_env: str, url: str) -> None:
    settings = Settings(app_env=app_env, email_verification_url=url)  # type: ignore[arg-type]
    assert settings.email_verification_url == url


# --- messages: user text is length-limited and cannot carry a link ------------------------

ATTACKS = [
    "Click https://evil.example/login now", "evil.example", "EVIL.EXAMPLE/login", "www.evil.example",
    "mail boss@evil.example", "@evil", "ｅｖｉｌ．ｅｘａｍｐｌｅ", "evil。example", "evil\u200b.example",
    "hxxps://evil", "javascript:alert(1)", "10.0.0.1", "//evil", "evil.xn--p1ai",
    "Hi\r\nBcc: x\u202eelpmaxe.live", "evil.co" + "m" * 200,
    # Default_Ignorable code points that are not Cf (UTS46 maps them away: evil.com)
    "evil.\u034fcom", "evil.\ufe0fcom", "evil.\u180bcom", "evil.\U000e0100com", "evil.\u3164com",
    "evil.\u00adcom", "evil.\u17b4com", "evil.\U0001d173com", "evil.\uffa0com",
    # IPv4 and IPv6 in the forms browsers and inet_aton accept
    "0x7f.1", "2130706433", "0x7f000001", "017700000001", "127.1", "127.0.1", "10.1",
    "[::1]", "[fe80::1]", "::ffff:7f00:1", "2001:db8:0:0:0:0:0:1",
    # schemes without `//`
    "https:2130706433", "https:localhost", "http:intranet/admin", "news:x", "ftp:evil",
    "sip:x", "irc:evil", "magnet:?xt=urn:btih:e", "intent:x", "ms-settings:", "web+evil:",
]


def _render_all(text: str) -> list[Any]:
    from functions.notify import messages

    user = {"id": 1, "email": "customer@test.com", "name": text}
    event = {"id": 2, "title": f"Gala {text}", "venue": text,
             "start_time": datetime(2030, 1, 1, 20, tzinfo=UTC), "status": "active"}
    booking = {"id": 3, "quantity": 2}
    return [
        messages.booking_confirmation(user, booking, event),
        messages.booking_cancelled(user, booking, event, 1),
        messages.event_updated(user, event, {"title": {"old": "Gala", "new": text},
                                             text: {"old": text, "new": None}}),
        messages.event_cancelled(user, event),
    ]


@pytest.mark.parametrize("attack", ATTACKS)
def test_no_message_carries_a_link_from_user_text(attack: str) -> None:
    from functions.notify.messages import _LINKISH

    for email in _render_all(attack):
        assert email.recipient == "customer@test.com"
        assert "\n" not in email.subject and "\r" not in email.subject
        body = email.body.split("\n", 1)[1]  # after the greeting line
        assert email.body.startswith("Hello,")
        for word in f"{email.subject} {body}".split():
            assert not _LINKISH.search(word), (word, email)
        lowered = f"{email.subject}\n{email.body}".lower()
        for fragment in ("evil", "ｅｖｉｌ", "http", "www", "@", "\nbcc", "\u202e", "\u200b", "\r",
                         "127", "0x7f", "::", "localhost", "intranet", "magnet", "settings"):
            assert fragment not in lowered, (fragment, email)
        # No attack text survives at all: each was one word, so it is removed whole.
        assert attack.split()[-1].lower() not in lowered or " " in attack, (attack, email)


PROSE = ["Doors 19:30", "Starts 20:00", "Note: bring ID", "€12.50 at the door", "Room 101",
         "Café Noir, 3rd floor", "Music Concert (late show)", "Year 2026"]


@pytest.mark.parametrize("prose", PROSE)
def test_ordinary_prose_is_not_taken_for_a_link(prose: str) -> None:
    from functions.notify.messages import safe_text

    assert safe_text(prose) == prose


def test_no_space_before_the_full_stop_without_venue_or_time() -> None:
    from functions.notify import messages

    user = {"id": 1, "email": "c@test.com", "name": "Ann"}
    bare = {"id": 2, "title": "Music Concert", "venue": None, "start_time": None}
    confirmed = messages.booking_confirmation(user, {"id": 3, "quantity": 1}, bare)
    assert "1 ticket for Music Concert.\n" in confirmed.body
    assert "for Music Concert are cancelled" in messages.booking_cancelled(
        user, {"id": 3, "quantity": 2}, bare, 2).body
    assert "Music Concert is cancelled." in messages.event_cancelled(user, bare).body
    placed = {**bare, "venue": "Blue Hall"}
    assert "for Music Concert at Blue Hall.\n" in messages.booking_confirmation(
        user, {"id": 3, "quantity": 1}, placed).body


def test_user_text_is_length_limited_and_ordinary_text_survives() -> None:
    from functions.notify import messages

    user = {"id": 1, "email": "c@test.com", "name": "Ann " + "n" * 200}
    event = {"id": 2, "title": "Music Concert (late show) " + "t" * 300, "venue": "Blue Hall",
             "start_time": None}
    email = messages.booking_confirmation(user, {"id": 3, "quantity": 1}, event)
    greeting = email.body.split("\n", 1)[0]
    assert greeting.startswith("Hi Ann n") and len(greeting) <= len("Hi ,") + messages.NAME_LIMIT
    title = email.subject.removeprefix("Booking confirmed: ")
    assert title.startswith("Music Concert (late show) t") and len(title) == messages.TEXT_LIMIT
    assert title.endswith("…") and "at Blue Hall" in email.body


def test_console_channel_logs_a_token_only_in_development(caplog: pytest.LogCaptureFixture) -> None:
    from functions.notify.channels import ConsoleChannel
    from functions.notify.messages import email_verification

    mail = email_verification("c@test.com", "T0KEN-" + "a" * 40, link_template="", ttl_seconds=86_400)
    for app_env, shown in (("production", False), ("development", True)):
        saved = set_env({"APP_ENV": app_env, "JWT_SECRET": secrets.token_urlsafe(48), "PASSWORD_MIN_LENGTH": "8"})
        try:
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="functions.notify.channels"):
                ConsoleChannel().send(mail)
            assert ("T0KEN-" in caplog.text) is shown, caplog.text
        finally:
            restore_env(saved)


def test_dev_console_shows_the_verification_instructions_unredacted(
    capsys: pytest.CaptureFixture[str]
) -> None:
    # The development console is the local developer's mailbox: the JSON log line must
    # carry the instructions and the code as written, not a mangled `"token": [REDACTED]`.
    from functions.notify.channels import ConsoleChannel
    from functions.notify.messages import email_verification
    from shared.platform.logging import REDACTED, JsonFormatter

    code = secrets.token_urlsafe(32)
    mail = email_verification("c@test.com", code, link_template="", ttl_seconds=3600)
    saved = set_env({"APP_ENV": "development"})
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    console = logging.getLogger("functions.notify.channels")
    console.addHandler(handler)
    old_level = console.level
    console.setLevel(logging.INFO)
    try:
        ConsoleChannel().send(mail)
    finally:
        console.removeHandler(handler)
        console.setLevel(old_level)
        restore_env(saved)
    [record] = records
    import json

    line = json.loads(JsonFormatter().format(record))["message"]
    assert REDACTED not in line, line
    assert mail.body in line and f"\n    {code}\n" in line


def test_tidy_purges_tokens_a_week_past_expiry(fake_clock: Any, v2: LambdaClient,
                                               sql: psycopg.Connection) -> None:
    from shared.jobs.tidy import tidy

    user, _ = account(v2, "customer")
    token = _issue(user)

    def left() -> int:
        return int(sql.execute("SELECT count(*) AS n FROM email_verification_tokens WHERE user_id = %s",
                               (user["id"],)).fetchone()["n"])

    fake_clock.advance(get_settings().email_verification_ttl_seconds + 86_400)
    tidy()
    assert left() == 1  # expired a day ago: still answers "expired", not "invalid"
    assert _verify(v2, token).json()["code"] == "verification_expired"
    fake_clock.advance(7 * 86_400)
    assert tidy()["verification_tokens_purged"] >= 1
    assert left() == 0


# --- races between minting, verifying and holding mail -----------------------------------

class _SlowMailbox:
    """A channel slow enough that two sends overlap (as tests/support/slow_channel.py), keeping mail."""

    name = "slow"
    sends_per_commit = 1

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.sent: list[Any] = []
        self._lock = threading.Lock()

    def send(self, email: Any) -> None:
        import time

        time.sleep(self.delay)
        with self._lock:
            self.sent.append(email)


def test_concurrent_verification_sends_leave_exactly_one_live_token(
    v2: LambdaClient, sql: psycopg.Connection
) -> None:
    from functions.notify.channels import use_channel
    from functions.notify.tasks import email_verification
    from shared.accounts import email_verification as ev
    from shared.platform.db import connection
    from tests.support.notify import token_of

    # GIVEN a customer with two verification mails queued (registration's and a resend)
    user, _ = account(v2, "customer")
    with connection() as conn, conn.transaction():
        conn.execute("SELECT 1 FROM users WHERE id = %s FOR UPDATE", (user["id"],))
        ev.request_mail(conn, user["id"])
    rows = sql.execute("SELECT * FROM outbox WHERE task = 'email_verification' "
                       "AND (payload->>'user_id')::bigint = %s ORDER BY id", (user["id"],)).fetchall()
    assert len(rows) == 2
    mailbox = _SlowMailbox(0.3)
    use_channel(mailbox)
    # Celery binds its tasks (and their request stacks) lazily, on first use: do it here,
    # not in two threads at once.
    email_verification.app.finalize(auto=True)
    barrier = threading.Barrier(len(rows))
    errors: list[BaseException] = []

    def send(row: dict[str, Any]) -> None:
        barrier.wait()
        try:
            email_verification.apply(kwargs={**row["payload"], "outbox_id": row["id"]}).get()
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    # WHEN the worker sends both at the same instant, each send slow
    threads = [threading.Thread(target=send, args=(row,)) for row in rows]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        use_channel(None)
    # THEN both mails went out, but only one token is live, and only it verifies
    assert errors == []
    tokens = [token_of(mail) for mail in mailbox.sent]
    assert len(tokens) == 2 and len(set(tokens)) == 2
    live = sql.execute("SELECT token_hash FROM email_verification_tokens WHERE user_id = %s "
                       "AND used_at IS NULL AND revoked_at IS NULL", (user["id"],)).fetchall()
    assert len(live) == 1
    answers = {t: _verify(v2, t) for t in tokens}
    assert sorted(r.status_code for r in answers.values()) == [200, 410]
    [winner] = [t for t, r in answers.items() if r.status_code == 200]
    assert bytes(live[0]["token_hash"]) == ev.token_hash(winner)


def test_a_second_live_token_is_refused_by_the_database(v2: LambdaClient) -> None:
    from shared.platform.db import connection

    user, _ = account(v2, "customer")
    _issue(user)
    with pytest.raises(psycopg.errors.UniqueViolation), connection() as conn, conn.transaction():
        conn.execute(
            """INSERT INTO email_verification_tokens (user_id, email, token_hash, expires_at)
               VALUES (%s, %s, %s, now() + interval '1 hour')""",
            (user["id"], user["email"], secrets.token_bytes(32)))


def test_booking_mail_read_before_verifying_and_held_after_is_sent(
    v2: LambdaClient, sql: psycopg.Connection
) -> None:
    from functions.notify import deliveries, messages, tasks
    from functions.notify.channels import use_channel
    from tests.support.factories import create_event
    from tests.support.notify import CaptureChannel

    saved = set_env({"REQUIRE_VERIFIED_EMAIL": "true"})
    mailbox = CaptureChannel()
    use_channel(mailbox)
    try:
        # GIVEN an unverified customer's booking, read by the worker while still unverified
        _, organizer = account(v2, "organizer")
        event = create_event(v2, organizer, title="Jazz Night", total_tickets=5)
        customer, token = account(v2, "customer")
        secret = _issue(customer)
        r = v2.request("POST", "/bookings", json_body={"event_id": event["id"]}, token=token)
        assert r.status_code == 201, r.text
        row = sql.execute("SELECT id FROM outbox WHERE task = 'booking_confirmation' "
                          "AND payload->>'booking_id' = %s", (str(r.json()["id"]),)).fetchone()
        booking, user, ev = deliveries.booking_details(r.json()["id"])
        assert user["email_verified_at"] is None
        # WHEN verify() commits before the worker records the hold (its release finds nothing)
        assert _verify(v2, secret).status_code == 200
        email = messages.booking_confirmation(user, booking, ev)
        sent = tasks._send_to_one(outbox_id=row["id"], user=user, kind="booking_confirmation",
                                  email=email, label="Booking confirmation")
        # THEN the worker sees the verification and sends, instead of holding for ever
        assert sent is True
        assert [e.subject for e in mailbox.to(customer["email"])] == ["Booking confirmed: Jazz Night"]
        status = sql.execute("SELECT status FROM notification_deliveries WHERE outbox_id = %s",
                             (row["id"],)).fetchall()
        assert [s["status"] for s in status] == ["sent"]
        # AND a fan-out page read before the verification mails that user too
        assert tasks._skip_unverified(row["id"], "event_update", "capture", [user]) == [user]
    finally:
        use_channel(None)
        restore_env(saved)
