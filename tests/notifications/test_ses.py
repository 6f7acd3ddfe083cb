"""The SES email channel, checked against what moto's SES recorded."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from shared.platform.settings import get_settings
from tests.support.clients import LambdaClient
from tests.support.factories import account, create_event, login, register
from tests.support.notify import token_of

SENDER = "tickets@box-office.ticketing.dev"  # not a reserved domain: the worker refuses those


@pytest.fixture
def ses(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    import boto3
    from moto import mock_aws
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ses.models import ses_backends

    from functions.notify.channels import use_channel

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_REGION": "eu-west-1", "NOTIFY_CHANNEL": "ses",
                       "SES_SENDER": SENDER}.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    use_channel(None)
    with mock_aws():
        boto3.client("ses", region_name="eu-west-1").verify_email_identity(EmailAddress=SENDER)
        yield ses_backends[DEFAULT_ACCOUNT_ID]["eu-west-1"]
    use_channel(None)
    get_settings.cache_clear()


def _run_outbox_task(task: Any, row: dict[str, Any]) -> None:
    task.apply(kwargs={**row["payload"], "outbox_id": row["id"]}).get()


def _verified_customer(ses: Any, v2: LambdaClient, sql: psycopg.Connection,
                       name: str | None = None) -> tuple[dict[str, Any], str]:
    """A customer who verified their address with the token SES mailed them."""
    from functions.notify.tasks import email_verification

    customer = register(v2, "customer", name=name)
    row = sql.execute("SELECT * FROM outbox WHERE task = 'email_verification' "
                      "AND (payload->>'user_id')::bigint = %s", (customer["id"],)).fetchone()
    _run_outbox_task(email_verification, row)
    [mail] = [m for m in ses.sent_messages if m.destinations["ToAddresses"] == [customer["email"]]]
    assert mail.subject == "Confirm your email address"
    r = v2.request("POST", "/users/verify", json_body={"token": token_of(mail)})
    assert r.status_code == 200, r.text
    return customer, login(v2, customer["email"])


def test_booking_confirmation_is_emailed_through_ses(
    ses: Any, v2: LambdaClient, sql: psycopg.Connection
) -> None:
    from functions.notify.channels import SesChannel, get_channel
    from functions.notify.tasks import booking_confirmation

    # GIVEN a booking by a verified customer (its outbox row is what the worker would receive)
    _, organizer = account(v2, "organizer")
    event = create_event(v2, organizer, title="Jazz Night", venue="Blue Hall", total_tickets=9)
    customer, token = _verified_customer(ses, v2, sql)
    sent_before = len(ses.sent_messages)
    r = v2.request("POST", "/bookings", json_body={"event_id": event["id"], "quantity": 3},
                   token=token)
    assert r.status_code == 201, r.text
    booking = r.json()
    row = sql.execute("SELECT * FROM outbox WHERE payload->>'booking_id' = %s",
                      (str(booking["id"]),)).fetchone()
    assert isinstance(get_channel(), SesChannel)
    # WHEN the task runs twice (a redelivery)
    for _ in range(2):
        booking_confirmation.apply(kwargs={**row["payload"], "outbox_id": row["id"]}).get()
    # THEN SES sent exactly one email, to the customer, saying what was booked
    [message] = ses.sent_messages[sent_before:]
    assert message.source == SENDER
    assert message.destinations["ToAddresses"] == [customer["email"]]
    assert message.subject == "Booking confirmed: Jazz Night"
    assert f"booking #{booking['id']} is confirmed: 3 tickets for Jazz Night at Blue Hall" \
        in message.body
    delivery = sql.execute("SELECT * FROM notification_deliveries WHERE outbox_id = %s",
                           (row["id"],)).fetchone()
    assert (delivery["channel"], delivery["recipient"]) == ("ses", customer["email"])


def test_unverified_sender_is_a_failure_not_a_silent_success(
    ses: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from botocore.exceptions import ClientError

    from functions.notify.channels import Email, SesChannel

    channel = SesChannel(sender="nobody@unverified.example", region="eu-west-1")
    with pytest.raises(ClientError, match="MessageRejected"):
        channel.send(Email("someone@test.com", "s", "b"))
    assert ses.sent_messages == []


ATTACKS = ["Click https://evil.example/login now", "evil.example", "ｅｖｉｌ．ｅｘａｍｐｌｅ",
           "write to boss@evil.example", "www.evil.example", "see evil。example",
           "evil.\u034fcom", "evil.\ufe0fcom", "evil.\u180bcom", "0x7f.1", "2130706433",
           "017700000001", "127.1", "10.1", "[::1]", "::ffff:7f00:1", "https:localhost",
           "http:intranet/admin", "magnet:?xt=urn:btih:e", "ms-settings:"]


@pytest.mark.parametrize("attack", ATTACKS)
def test_user_text_reaches_ses_without_a_usable_link(
    attack: str, ses: Any, v2: LambdaClient, sql: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    from functions.notify.channels import get_channel
    from functions.notify.tasks import booking_confirmation

    # GIVEN an organizer's title and venue and a customer's name each carrying a link
    monkeypatch.setenv("REQUIRE_VERIFIED_EMAIL", "true")
    get_settings.cache_clear()
    _, organizer = account(v2, "organizer")
    event = create_event(v2, organizer, title=f"Gala {attack}", venue=attack, total_tickets=9)
    customer, token = _verified_customer(ses, v2, sql, name=attack)
    sent_before = len(ses.sent_messages)
    calls: list[dict[str, Any]] = []
    client = get_channel().client
    real_send = client.send_email
    monkeypatch.setattr(client, "send_email", lambda **kw: calls.append(kw) or real_send(**kw))
    # WHEN the customer books and the worker mails the confirmation through SES
    r = v2.request("POST", "/bookings", json_body={"event_id": event["id"]}, token=token)
    assert r.status_code == 201, r.text
    row = sql.execute("SELECT * FROM outbox WHERE payload->>'booking_id' = %s",
                      (str(r.json()["id"]),)).fetchone()
    _run_outbox_task(booking_confirmation, row)
    # THEN what SES sent holds the booking but nothing a mail client could turn into a link
    [message] = ses.sent_messages[sent_before:]
    assert message.destinations["ToAddresses"] == [customer["email"]]
    text = f"{message.subject}\n{message.body}"
    assert "Gala" in message.subject and "[link removed]" in text
    for fragment in ("evil", "ｅｖｉｌ", "http", "www", "@", "\nNew line", "0x7f", "::",
                     "localhost", "intranet", "magnet", "settings"):
        assert fragment not in text, (fragment, text)
    assert message.body.startswith("Hello,")  # a name that carried a link is dropped
    [call] = calls
    assert set(call["Message"]["Body"]) == {"Text"}  # no HTML part to inject markup into


def test_verification_token_never_reaches_the_logs_at_debug(
    ses: Any, v2: LambdaClient, sql: psycopg.Connection, capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from functions.notify.tasks import email_verification
    from shared.platform.logging import configure_logging

    # GIVEN LOG_LEVEL=DEBUG (botocore would log the whole SendEmail request, body included)
    customer = register(v2, "customer")
    row = sql.execute("SELECT * FROM outbox WHERE task = 'email_verification' "
                      "AND (payload->>'user_id')::bigint = %s", (customer["id"],)).fetchone()
    capfd.readouterr()
    caplog.set_level(logging.DEBUG)
    configure_logging("DEBUG")
    try:
        # WHEN the worker mails the verification token through SES
        _run_outbox_task(email_verification, row)
    finally:
        configure_logging("INFO")
    [mail] = [m for m in ses.sent_messages if m.destinations["ToAddresses"] == [customer["email"]]]
    secret = token_of(mail)
    # THEN the token is in the mail and nowhere in what was logged
    captured = capfd.readouterr()
    everything = captured.out + captured.err + caplog.text + "".join(
        f"{rec.getMessage()} {rec.args!r} {vars(rec)!r}" for rec in caplog.records)
    assert "Verification email sent" in everything  # logs were captured at all
    assert secret not in everything
