"""Notifications end to end: handlers -> outbox -> real Redis -> a real Celery worker -> PostgreSQL.

The worker (``notify`` in conftest.py) runs in-process with a thread pool of 4, so fan-out
chunks really run in parallel, against the session's Redis and PostgreSQL.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import psycopg
import pytest

from local.embedded import free_port
from shared.notifications.contracts import EventUpdate
from shared.platform.settings import get_settings
from tests.support.clients import LambdaClient
from tests.support.factories import account, create_event
from tests.support.notify import (
    FlakyChannel,
    LogLines,
    deliveries,
    outbox_of_booking,
    wait_for,
)


def _book(client: LambdaClient, token: str, event_id: int, quantity: int = 1) -> dict[str, Any]:
    r = client.request("POST", "/bookings", json_body={"event_id": event_id, "quantity": quantity},
                       token=token)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def test_booking_confirmation_reaches_the_customer_who_booked(
    notify: dict[str, Any], log: LogLines, v2: LambdaClient, sql: psycopg.Connection
) -> None:
    # GIVEN an event and a customer
    _, organizer = account(v2, "organizer")
    event = create_event(v2, organizer, total_tickets=5)
    customer, token = account(v2, "customer")
    # WHEN the customer books through the booking function's Lambda handler
    booking = _book(v2, token, event["id"], 2)
    # THEN the outbox row was published and the worker delivered it once
    from shared.notifications import outbox
    assert outbox.flush_background()
    row = outbox_of_booking(sql, booking["id"])
    assert row["published_at"] is not None
    sent = wait_for(lambda: deliveries(sql, row["id"]), what="confirmation delivery")
    assert [(d["user_id"], d["recipient"], d["kind"]) for d in sent] == [
        (customer["id"], customer["email"], "booking_confirmation")
    ]
    line = f"📧 Booking confirmation sent to user {customer['email']}"
    wait_for(lambda: log.matching(line), what="log line")
    notify["tracker"].wait_idle(notify["queue_length"])
    assert log.matching(line) == [line]


def _event_with_bookings(client: LambdaClient, sql: psycopg.Connection, users: int
                         ) -> tuple[dict[str, Any], str, list[int]]:
    """An event booked by ``users`` customers (the first twice), plus one cancelled booking."""
    _, organizer = account(client, "organizer")
    event = create_event(client, organizer, total_tickets=100)
    booked = []
    for i in range(users):
        customer, token = account(client, "customer")
        _book(client, token, event["id"])
        if i == 0:
            _book(client, token, event["id"])  # one user, two bookings: notified once
        booked.append(customer["id"])
    _, dropped_token = account(client, "customer")
    dropped = _book(client, dropped_token, event["id"])
    sql.execute("UPDATE bookings SET status = 'cancelled', cancelled_at = now() WHERE id = %s",
                (dropped["id"],))
    return event, organizer, sorted(booked)


def _update_outbox(sql: psycopg.Connection, event_id: int) -> dict[str, Any]:
    return wait_for(lambda: sql.execute(
        """SELECT * FROM outbox WHERE task = %s
            AND (payload->>'event_id')::bigint = %s ORDER BY id DESC LIMIT 1""",
        (EventUpdate.published_as, event_id)).fetchone(), what="outbox row of the update")


def _fanout_finished(sql: psycopg.Connection, outbox_id: int) -> dict[str, Any] | None:
    return sql.execute(  # type: ignore[return-value]
        "SELECT * FROM notification_fanouts WHERE outbox_id = %s AND finished_at IS NOT NULL",
        (outbox_id,),
    ).fetchone()


def test_event_update_notifies_every_booked_user_exactly_once(
    notify: dict[str, Any], log: LogLines, v2: LambdaClient, sql: psycopg.Connection
) -> None:
    # GIVEN 7 booked users (chunks of 3 users -> 3 sub-tasks, pages of 2 inside each)
    event, organizer, booked = _event_with_bookings(v2, sql, 7)
    notify["tracker"].wait_idle(notify["queue_length"])
    # WHEN the organizer changes the venue
    r = v2.request("PUT", f"/events/{event['id']}", json_body={"venue": "Hall B"}, token=organizer)
    assert r.status_code == 200, r.text
    # THEN each booked user gets exactly one delivery and the last chunk logs the real count
    row = _update_outbox(sql, event["id"])
    fanout = wait_for(lambda: _fanout_finished(sql, row["id"]), what="fan-out to finish")
    assert (fanout["chunks_total"], fanout["chunks_done"], fanout["notified"]) == (3, 3, 7)
    assert [d["user_id"] for d in deliveries(sql, row["id"])] == booked
    notify["tracker"].wait_idle(notify["queue_length"])
    assert log.matching("about event update") == ["🔔 Notified 7 users about event update"]


@pytest.mark.parametrize("task_name", [EventUpdate.name, *EventUpdate.aliases])
def test_an_update_queued_under_either_task_name_is_delivered(
    notify: dict[str, Any], log: LogLines, v2: LambdaClient, sql: psycopg.Connection,
    monkeypatch: pytest.MonkeyPatch, task_name: str,
) -> None:
    """Old rows and messages carry the old name; the next release publishes the new one."""
    from shared.notifications import outbox

    event, organizer, booked = _event_with_bookings(v2, sql, 4)
    notify["tracker"].wait_idle(notify["queue_length"])
    # GIVEN an update's outbox row written under ``task_name``, not yet published
    monkeypatch.setattr(outbox, "_paused_until", time.monotonic() + 60)
    r = v2.request("PUT", f"/events/{event['id']}", json_body={"venue": "Hall C"}, token=organizer)
    assert r.status_code == 200, r.text
    monkeypatch.setattr(outbox, "_paused_until", 0.0)
    row = _update_outbox(sql, event["id"])
    sql.execute("UPDATE outbox SET task = %s WHERE id = %s", (task_name, row["id"]))
    # WHEN the relay publishes it under that name
    assert outbox.relay_pending(min_age=0) >= 1
    # THEN the worker still fans it out, to every booked user once
    fanout = wait_for(lambda: _fanout_finished(sql, row["id"]), what="fan-out to finish")
    assert fanout["notified"] == len(booked)
    assert [d["user_id"] for d in deliveries(sql, row["id"])] == booked
    assert {d["kind"] for d in deliveries(sql, row["id"])} == {EventUpdate.name}


def test_redelivered_fanout_and_confirmation_do_not_notify_twice(
    notify: dict[str, Any], log: LogLines, v2: LambdaClient, sql: psycopg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from functions.notify.channels import use_channel
    from shared.notifications import envelope, outbox
    queue = get_settings().notify_queue
    event, organizer, booked = _event_with_bookings(v2, sql, 8)
    _, organizer2 = account(v2, "organizer")
    other_event = create_event(v2, organizer2, total_tickets=5)
    customer, token = account(v2, "customer")
    notify["tracker"].wait_idle(notify["queue_length"])
    before = len(log.matching("about event update"))
    channel = FlakyChannel()
    channel.healthy = True
    use_channel(channel)
    try:
        # GIVEN an update and a booking whose requests did not publish (left to the relay) ...
        monkeypatch.setattr(outbox, "_paused_until", time.monotonic() + 60)
        r = v2.request("PUT", f"/events/{event['id']}", json_body={"title": "Moved"},
                       token=organizer)
        assert r.status_code == 200, r.text
        booking = _book(v2, token, other_event["id"])
        monkeypatch.setattr(outbox, "_paused_until", 0.0)
        update = _update_outbox(sql, event["id"])
        confirmation = outbox_of_booking(sql, booking["id"])
        # ... WHEN each message arrives three times at once (relay and request both
        # publishing, a crashed worker's message redelivered), racing on 4 threads
        copies = [envelope.task_message(row["task"], outbox.row_kwargs(row), queue=queue)
                  for row in (update, confirmation) for _ in range(3)]
        chunks_before = notify["tracker"].names["fanout_chunk"]
        outbox.redis_client().lpush(queue, *[json.dumps(m) for m in copies])
        ids = {m["headers"]["id"] for m in copies}
        wait_for(lambda: ids <= notify["tracker"].finished, what="duplicate messages to run")
        notify["tracker"].wait_idle(notify["queue_length"])
    finally:
        use_channel(None)
    # THEN the duplicate parents re-sent chunks, yet nobody was notified twice or missed
    fanout = _fanout_finished(sql, update["id"])
    assert fanout is not None and fanout["chunks_total"] == 3
    assert notify["tracker"].names["fanout_chunk"] - chunks_before > fanout["chunks_total"]
    assert [d["user_id"] for d in deliveries(sql, update["id"])] == booked
    assert len(deliveries(sql, confirmation["id"])) == 1
    assert sorted(Counter(channel.attempts).values()) == [1] * (len(booked) + 1)
    assert log.matching("about event update")[before:] == [
        f"🔔 Notified {len(booked)} users about event update"]
    assert len(log.matching(f"Booking confirmation sent to user {customer['email']}")) == 1


def test_booking_answers_quickly_with_redis_down_and_the_relay_delivers_later(
    notify: dict[str, Any], log: LogLines, v2: LambdaClient, sql: psycopg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from shared.notifications import outbox
    _, organizer = account(v2, "organizer")
    event = create_event(v2, organizer, total_tickets=5)
    customer, token = account(v2, "customer")
    # GIVEN Redis unreachable for the booking function
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    get_settings.cache_clear()
    outbox.reset()
    try:
        # WHEN the customer books
        started = time.monotonic()
        booking = _book(v2, token, event["id"])
        elapsed = time.monotonic() - started
        outbox.flush_background()  # the publisher thread tries while Redis is still away
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
        outbox.reset()
    # THEN the booking is taken promptly and its notification waits in the outbox
    assert elapsed < 2.0, f"booking took {elapsed:.2f}s with Redis down"
    row = outbox_of_booking(sql, booking["id"])
    assert row["published_at"] is None and row["attempts"] == 1
    assert "ConnectionError" in row["last_error"]
    # WHEN Redis is back and the relay runs
    assert outbox.relay_pending(min_age=0) >= 1
    # THEN the confirmation arrives, for the right user
    sent = wait_for(lambda: deliveries(sql, row["id"]), what="relayed confirmation")
    assert [d["user_id"] for d in sent] == [customer["id"]]
    assert sql.execute("SELECT published_at FROM outbox WHERE id = %s",
                       (row["id"],)).fetchone()["published_at"] is not None


def test_failing_channel_retries_then_dead_letters_and_replay_delivers(
    notify: dict[str, Any], log: LogLines, v2: LambdaClient, sql: psycopg.Connection
) -> None:
    from functions.notify.channels import use_channel
    from shared.notifications import deadletters
    _, organizer = account(v2, "organizer")
    event = create_event(v2, organizer, total_tickets=5)
    customer, token = account(v2, "customer")
    notify["tracker"].wait_idle(notify["queue_length"])
    channel = FlakyChannel()
    use_channel(channel)
    try:
        # GIVEN a mail channel that keeps failing
        booking = _book(v2, token, event["id"])
        row = outbox_of_booking(sql, booking["id"])
        # THEN the task is tried NOTIFY_MAX_ATTEMPTS times, then dead-lettered in PostgreSQL
        letter = wait_for(lambda: sql.execute(
            "SELECT * FROM notification_dead_letters WHERE (kwargs->>'outbox_id')::bigint = %s",
            (row["id"],)).fetchone(), what="dead letter")
        assert letter["task"] == "booking_confirmation"
        assert letter["attempts"] == 3 and "mail server unreachable" in letter["error"]
        assert channel.attempts == [customer["email"]] * 3
        assert deliveries(sql, row["id"]) == []
        assert letter["id"] in [d["id"] for d in deadletters.list_dead_letters()]
        # WHEN the channel recovers and the dead letter is replayed
        channel.healthy = True
        assert deadletters.replay([letter["id"]]) == [letter["id"]]
        # THEN it is delivered once, and a second replay finds nothing to do
        sent = wait_for(lambda: deliveries(sql, row["id"]), what="replayed delivery")
        assert [d["user_id"] for d in sent] == [customer["id"]]
        assert deadletters.replay([letter["id"]]) == []
        assert letter["id"] not in [d["id"] for d in deadletters.list_dead_letters()]
        notify["tracker"].wait_idle(notify["queue_length"])
        assert len(channel.attempts) == 4
    finally:
        use_channel(None)


def test_event_cancellation_notifies_the_users_whose_bookings_it_cancelled(
    notify: dict[str, Any], log: LogLines, v2: LambdaClient, sql: psycopg.Connection
) -> None:
    # GIVEN 5 booked users (one twice) and a booking its customer cancelled earlier
    event, organizer, booked = _event_with_bookings(v2, sql, 5)
    notify["tracker"].wait_idle(notify["queue_length"])
    before = len(log.matching("about event cancellation"))
    # WHEN the organizer cancels the event (which cancels every booking)
    r = v2.request("POST", f"/events/{event['id']}/cancel", token=organizer)
    assert r.status_code == 200, r.text
    # THEN exactly the 5 users holding tickets are told, once each, and the count is logged
    row = wait_for(lambda: sql.execute(
        """SELECT * FROM outbox WHERE task = 'event_cancelled'
            AND (payload->>'event_id')::bigint = %s""", (event["id"],)).fetchone(),
        what="cancellation outbox row")
    wait_for(lambda: _fanout_finished(sql, row["id"]), what="cancellation fan-out")
    assert [d["user_id"] for d in deliveries(sql, row["id"])] == booked
    assert {d["kind"] for d in deliveries(sql, row["id"])} == {"event_cancelled"}
    notify["tracker"].wait_idle(notify["queue_length"])
    assert log.matching("about event cancellation")[before:] == [
        "🔔 Notified 5 users about event cancellation"]


def test_booking_cancellation_is_sent_to_its_customer(
    notify: dict[str, Any], log: LogLines, v2: LambdaClient, sql: psycopg.Connection
) -> None:
    _, organizer = account(v2, "organizer")
    event = create_event(v2, organizer, total_tickets=5)
    customer, token = account(v2, "customer")
    booking = _book(v2, token, event["id"], 3)
    r = v2.request("POST", f"/bookings/{booking['id']}/cancel", json_body={"quantity": 2},
                   token=token)
    assert r.status_code == 200, r.text
    row = wait_for(lambda: sql.execute(
        """SELECT * FROM outbox WHERE task = 'booking_cancelled'
            AND (payload->>'booking_id')::bigint = %s""", (booking["id"],)).fetchone(),
        what="booking cancellation outbox row")
    sent = wait_for(lambda: deliveries(sql, row["id"]), what="cancellation delivery")
    assert [(d["user_id"], d["kind"]) for d in sent] == [(customer["id"], "booking_cancelled")]
    wait_for(lambda: log.matching(f"📧 Booking cancellation sent to user {customer['email']}"),
             what="cancellation log line")


def test_a_cancellation_chunk_queued_by_an_older_worker_is_still_delivered(
    notify: dict[str, Any], v2: LambdaClient, sql: psycopg.Connection, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before issue 12 a chunk message carried only the event's id: the rest comes from the outbox."""
    from functions.notify import deliveries as delivery_keys
    from functions.notify import tasks
    from shared.notifications import outbox

    event, organizer, booked = _event_with_bookings(v2, sql, 3)
    notify["tracker"].wait_idle(notify["queue_length"])
    # GIVEN a cancellation no worker has received, its fan-out planned by an older worker
    monkeypatch.setattr(outbox, "_paused_until", time.monotonic() + 60)
    r = v2.request("POST", f"/events/{event['id']}/cancel", token=organizer)
    assert r.status_code == 200, r.text
    row = sql.execute(
        "SELECT id FROM outbox WHERE task = 'event_cancelled' AND (payload->>'event_id')::bigint = %s",
        (event["id"],)).fetchone()
    assert delivery_keys.plan_fanout(outbox_id=row["id"], kind="event_cancelled", audience=tasks.CANCELLED_BOOKERS,
                                     event_id=event["id"], chunk_size=100) == 1
    assert delivery_keys.chunk_range(row["id"], 0) is not None
    # WHEN its chunk message, in the old shape (no bookings_cancelled), runs
    tasks.fanout_chunk(outbox_id=row["id"], chunk_no=0, kind="event_cancelled", event_id=event["id"], changes=None)
    # THEN every user whose booking was cancelled is told, once
    assert delivery_keys.chunk_range(row["id"], 0) is None
    assert [d["user_id"] for d in deliveries(sql, row["id"])] == booked
