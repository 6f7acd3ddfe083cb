"""Email verification end to end: registration -> outbox -> a real Celery worker -> the token.

With ``REQUIRE_VERIFIED_EMAIL`` on, booking mail waits for a verified address (recorded as
a skipped delivery, sent once the address is verified); the verification mail is sent
once however often its task is redelivered; tokens are single use and expire.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from shared.notifications.contracts import EventUpdate
from shared.platform.settings import get_settings
from tests.support.clients import LambdaClient
from tests.support.factories import PASSWORD, create_event, login, unique_email
from tests.support.notify import CaptureChannel, LogLines, deliveries, outbox_of_booking, token_of, wait_for
from tests.support.settings_env import restore_env, set_env

SUBJECT = "Confirm your email address"


@pytest.fixture
def mailbox(notify: dict[str, Any]) -> Iterator[CaptureChannel]:
    from functions.notify.channels import use_channel

    channel = CaptureChannel()
    use_channel(channel)
    notify["tracker"].wait_idle(notify["queue_length"])
    try:
        yield channel
    finally:
        use_channel(None)


@pytest.fixture
def required() -> Iterator[None]:
    """REQUIRE_VERIFIED_EMAIL on (the default outside development) for this test."""
    saved = set_env({"REQUIRE_VERIFIED_EMAIL": "true"})
    try:
        yield
    finally:
        restore_env(saved)


def _register(client: LambdaClient, role: str, name: str | None = None) -> tuple[dict[str, Any], str]:
    body: dict[str, Any] = {"email": unique_email(role), "password": PASSWORD, "role": role}
    if name is not None:
        body["name"] = name
    r = client.request("POST", "/users", json_body=body)
    assert r.status_code == 201, r.text
    return r.json(), login(client, body["email"])


def _token_mailed_to(mailbox: CaptureChannel, email: str) -> str:
    mails = wait_for(lambda: mailbox.to(email, SUBJECT), what=f"verification mail to {email}")
    return token_of(mails[-1])


def _verify(client: LambdaClient, token: str) -> Any:
    return client.request("POST", "/users/verify", json_body={"token": token})


def test_registration_mails_a_single_use_token_stored_only_as_a_hash(
    mailbox: CaptureChannel, log: LogLines, v2: LambdaClient, sql: psycopg.Connection,
) -> None:
    # GIVEN a customer registered with a name that tries to carry a link
    user, token = _register(v2, "customer", name="Click https://evil.example/login now")
    assert user["email_verified_at"] is None
    # WHEN the worker sends the verification mail
    secret = _token_mailed_to(mailbox, user["email"])
    # THEN it went to that address only, with no user-supplied text in it
    [mail] = [e for e in mailbox.sent if e.subject == SUBJECT and e.recipient == user["email"]]
    assert "Click" not in mail.body and "evil" not in mail.body
    assert len(secret) >= 43  # 256 bits of token_urlsafe
    # AND only its hash is stored: not in the token table, the outbox or anywhere as text
    # (the worker mails inside the transaction that stores the hash: wait for its commit)
    row = wait_for(lambda: sql.execute("SELECT * FROM email_verification_tokens WHERE user_id = %s",
                                       (user["id"],)).fetchone(), what="the token's commit")
    assert bytes(row["token_hash"]) == hashlib.sha256(secret.encode()).digest()
    outbox = sql.execute("SELECT payload FROM outbox WHERE task = 'email_verification' "
                         "AND (payload->>'user_id')::bigint = %s", (user["id"],)).fetchone()
    assert outbox["payload"] == {"user_id": user["id"]}
    assert secret not in json.dumps([str(v) for v in row.values()])
    wait_for(lambda: log.matching(f"📧 Verification email sent to user {user['email']}"),
             what="verification log line")
    # WHEN the token is used: the address is verified, /users/me says so
    r = _verify(v2, secret)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == user["id"] and r.json()["email_verified_at"] is not None
    me = v2.request("GET", "/users/me", token=token).json()
    assert me["email_verified_at"] is not None
    # THEN a second use is refused, as is a token nobody issued
    r = _verify(v2, secret)
    assert (r.status_code, r.json()["code"]) == (409, "verification_used")
    r = _verify(v2, secret[:-2] + "xx")
    assert (r.status_code, r.json()["code"]) == (400, "verification_invalid")
    # (a key prefix of its own: user ids repeat across sessions on a shared Redis)
    saved = set_env({"RATE_LIMIT_KEY_PREFIX": f"rl-{uuid.uuid4().hex[:8]}"})
    try:
        r = v2.request("POST", "/users/me/verification", token=token)
    finally:
        restore_env(saved)
    assert (r.status_code, r.json()["code"]) == (409, "email_already_verified"), r.text


def test_verification_mail_is_sent_once_when_its_task_is_redelivered(
    mailbox: CaptureChannel, notify: dict[str, Any], v2: LambdaClient,
    sql: psycopg.Connection,
) -> None:
    from shared.notifications import envelope, outbox
    user, _ = _register(v2, "customer")
    _token_mailed_to(mailbox, user["email"])
    row = sql.execute("SELECT * FROM outbox WHERE task = 'email_verification' "
                      "AND (payload->>'user_id')::bigint = %s", (user["id"],)).fetchone()
    # WHEN the same message arrives three more times at once
    queue = get_settings().notify_queue
    copies = [envelope.task_message(row["task"], outbox.row_kwargs(row), queue=queue) for _ in range(3)]
    outbox.redis_client().lpush(queue, *[json.dumps(m) for m in copies])
    ids = {m["headers"]["id"] for m in copies}
    wait_for(lambda: ids <= notify["tracker"].finished, what="the copies to run")
    # THEN one mail, one token, one delivery key
    assert len(mailbox.to(user["email"], SUBJECT)) == 1
    assert sql.execute("SELECT count(*) AS n FROM email_verification_tokens WHERE user_id = %s",
                       (user["id"],)).fetchone()["n"] == 1
    assert len(deliveries(sql, row["id"])) == 1


def _book(client: LambdaClient, token: str, event_id: int) -> dict[str, Any]:
    r = client.request("POST", "/bookings", json_body={"event_id": event_id}, token=token)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def test_unverified_customer_gets_booking_mail_only_after_verifying(
    required: None, mailbox: CaptureChannel, log: LogLines, notify: dict[str, Any],
    v2: LambdaClient, sql: psycopg.Connection,
) -> None:
    # GIVEN an event and a customer who has not verified the address
    _, organizer = _register(v2, "organizer")
    event = create_event(v2, organizer, title="Jazz Night", total_tickets=5)
    customer, token = _register(v2, "customer")
    secret = _token_mailed_to(mailbox, customer["email"])
    # WHEN the customer books (bookings are not blocked)
    booking = _book(v2, token, event["id"])
    row = outbox_of_booking(sql, booking["id"])
    # THEN no confirmation is mailed: the delivery is recorded as skipped, not retried
    held = wait_for(lambda: deliveries(sql, row["id"]), what="skipped delivery")
    assert [(d["user_id"], d["status"]) for d in held] == [(customer["id"], "skipped_unverified")]
    wait_for(lambda: log.matching(f"📭 Booking confirmation held for user {customer['email']}"),
             what="held log line")
    notify["tracker"].wait_idle(notify["queue_length"])
    assert mailbox.to(customer["email"], "Booking confirmed") == []
    assert notify["tracker"].names["booking_confirmation"] >= 1
    # WHEN the address is verified
    assert _verify(v2, secret).status_code == 200
    # THEN the held confirmation is sent, once
    wait_for(lambda: mailbox.to(customer["email"], "Booking confirmed"), what="held confirmation")
    assert [d["status"] for d in deliveries(sql, row["id"])] == ["sent"]
    # AND the next booking is confirmed straight away
    second = _book(v2, token, event["id"])
    second_row = outbox_of_booking(sql, second["id"])
    wait_for(lambda: [d for d in deliveries(sql, second_row["id"]) if d["status"] == "sent"],
             what="second confirmation")
    notify["tracker"].wait_idle(notify["queue_length"])
    assert len(mailbox.to(customer["email"], "Booking confirmed")) == 2


def test_event_update_reaches_only_verified_customers(
    required: None, mailbox: CaptureChannel, log: LogLines, notify: dict[str, Any],
    v2: LambdaClient, sql: psycopg.Connection,
) -> None:
    _, organizer = _register(v2, "organizer")
    event = create_event(v2, organizer, total_tickets=20)
    customers = [_register(v2, "customer") for _ in range(4)]
    for user, _ in customers[:3]:  # three verify, one does not
        assert _verify(v2, _token_mailed_to(mailbox, user["email"])).status_code == 200
    for _, token in customers:
        _book(v2, token, event["id"])
    notify["tracker"].wait_idle(notify["queue_length"])
    before = len(log.matching("about event update"))
    # WHEN the organizer changes the event
    r = v2.request("PUT", f"/events/{event['id']}", json_body={"venue": "Hall B"}, token=organizer)
    assert r.status_code == 200, r.text
    # THEN the three verified customers are told; the fourth is recorded as skipped
    row = wait_for(lambda: sql.execute(
        """SELECT o.id FROM outbox o JOIN notification_fanouts f ON f.outbox_id = o.id
            WHERE o.task = %s AND (o.payload->>'event_id')::bigint = %s
              AND f.finished_at IS NOT NULL""", (EventUpdate.published_as, event["id"])).fetchone(), what="fan-out")
    status = {d["user_id"]: d["status"] for d in deliveries(sql, row["id"])}
    assert status == {**{u["id"]: "sent" for u, _ in customers[:3]},
                      customers[3][0]["id"]: "skipped_unverified"}
    notify["tracker"].wait_idle(notify["queue_length"])
    assert log.matching("about event update")[before:] == ["🔔 Notified 3 users about event update"]
    assert mailbox.to(customers[3][0]["email"], "Event updated") == []


@pytest.mark.parametrize(("env", "warned"), [
    ({"APP_ENV": "production", "NOTIFY_CHANNEL": "console"}, True),  # compose's defaults
    ({"APP_ENV": "test", "NOTIFY_CHANNEL": "console"}, True),
    ({"APP_ENV": "development", "NOTIFY_CHANNEL": "console"}, False),  # the body is printed
    ({"APP_ENV": "production", "NOTIFY_CHANNEL": "ses"}, False),
    ({"APP_ENV": "production", "NOTIFY_CHANNEL": "console", "REQUIRE_VERIFIED_EMAIL": "false"}, False),
])
def test_worker_warns_at_start_when_no_verification_mail_can_arrive(
    env: dict[str, str], warned: bool, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import logging

    from functions.notify.worker import _observability

    monkeypatch.delenv("REQUIRE_VERIFIED_EMAIL", raising=False)  # unset: the default rule
    for key, value in {"WORKER_METRICS_PORT": "0", "LOG_LEVEL": "INFO", **env}.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger="functions.notify"):
            _observability()  # what celery's worker_init runs
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and "NOTIFY_CHANNEL=console" in r.getMessage()]
    assert bool(warnings) is warned, caplog.text
    if warned:
        assert "APP_ENV=development" in warnings[0] and "NOTIFY_CHANNEL=ses" in warnings[0]
