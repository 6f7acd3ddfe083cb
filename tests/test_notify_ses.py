"""The SES email channel, checked against what moto's SES recorded."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from shared.settings import get_settings
from tests.clients import LambdaClient
from tests.factories import account, create_event

SENDER = "tickets@example.com"


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


def test_booking_confirmation_is_emailed_through_ses(
    ses: Any, v2: LambdaClient, sql: psycopg.Connection
) -> None:
    from functions.notify.channels import SesChannel, get_channel
    from functions.notify.tasks import booking_confirmation

    # GIVEN a booking (its outbox row is what the worker would receive)
    _, organizer = account(v2, "organizer")
    event = create_event(v2, organizer, title="Jazz Night", venue="Blue Hall", total_tickets=9)
    customer, token = account(v2, "customer")
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
    [message] = ses.sent_messages
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
