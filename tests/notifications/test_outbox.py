"""The outbox without a worker: what is published, how fast it gives up, what the relay takes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from local.embedded import free_port
from shared.notifications import envelope, outbox
from shared.platform.settings import get_settings


@pytest.fixture
def fresh_outbox(database: str) -> Iterator[None]:
    get_settings.cache_clear()
    outbox.reset()
    yield
    get_settings.cache_clear()
    outbox.reset()


def _row(sql: psycopg.Connection, task: str = "booking_confirmation", **payload: Any) -> int:
    row = sql.execute("INSERT INTO outbox (task, payload) VALUES (%s, %s) RETURNING id",
                      (task, Jsonb(payload or {"booking_id": 0}))).fetchone()
    assert row is not None
    return int(row["id"])


def _state(sql: psycopg.Connection, outbox_id: int) -> dict[str, Any]:
    return sql.execute("SELECT * FROM outbox WHERE id = %s", (outbox_id,)).fetchone()  # type: ignore[return-value]


def test_http_function_handlers_import_neither_celery_nor_kombu() -> None:
    code = (
        "import sys, functions.booking.handler, functions.events.handler, "
        "functions.users.handler, functions.relay.handler, shared.notifications.deadletters\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('celery', 'kombu'))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_published_message_is_the_envelope_celery_itself_builds() -> None:
    from functions.notify.worker import app

    ours = envelope.task_message("booking_confirmation", {"outbox_id": 1, "booking_id": 2},
                               queue="notify", task_id="t-1")
    theirs = app.amqp.as_task_v2("t-1", "booking_confirmation", kwargs={"outbox_id": 1,
                                                                         "booking_id": 2})
    assert set(ours["headers"]) == set(theirs.headers)
    assert {k: ours["headers"][k] for k in ("task", "id", "root_id", "retries", "eta")} == {
        k: theirs.headers[k] for k in ("task", "id", "root_id", "retries", "eta")}
    import base64
    args, kwargs, embed = json.loads(base64.b64decode(ours["body"]))
    assert [args, kwargs, embed] == [list(theirs.body[0]), theirs.body[1], theirs.body[2]]


def test_publish_gives_up_within_its_timeout_on_a_redis_that_never_answers(
    fresh_outbox: None, sql: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a "Redis" that accepts connections and then never replies
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
        monkeypatch.setenv("OUTBOX_PUBLISH_TIMEOUT", "0.2")
        monkeypatch.setenv("OUTBOX_PUBLISH", "inline")  # the request waits: the Lambda path
        get_settings.cache_clear()
        first, second = _row(sql), _row(sql)
        # WHEN two committed rows are published
        started = time.monotonic()
        assert outbox.publish([first]) is False
        took_first = time.monotonic() - started
        started = time.monotonic()
        assert outbox.publish([second]) is False
        took_second = time.monotonic() - started
    # THEN the first waits about one timeout, the next skips Redis while it is known down
    assert took_first < 1.0, took_first
    assert took_second < 0.05, took_second
    assert _state(sql, first)["attempts"] == 1 and "Timeout" in _state(sql, first)["last_error"]
    assert _state(sql, second)["attempts"] == 0 and _state(sql, second)["published_at"] is None


def test_relay_skips_rows_another_relay_holds_and_rows_still_in_their_grace_period(
    fresh_outbox: None, sql: psycopg.Connection, database: str
) -> None:
    redis = outbox.redis_client()
    queue = get_settings().notify_queue
    sql.execute("UPDATE outbox SET published_at = now() WHERE published_at IS NULL")
    held, free, young = _row(sql), _row(sql), _row(sql)
    sql.execute("UPDATE outbox SET created_at = now() - interval '1 minute' WHERE id IN (%s, %s)",
                (held, free))
    redis.delete(queue)
    with psycopg.connect(database) as other:  # another relay mid-publish
        other.execute("SELECT 1 FROM outbox WHERE id = %s FOR UPDATE", (held,))
        assert outbox.relay_pending(min_age=5) == 1
    assert _state(sql, free)["published_at"] is not None
    assert _state(sql, held)["published_at"] is None
    assert _state(sql, young)["published_at"] is None
    [message] = [json.loads(m) for m in redis.lrange(queue, 0, -1)]
    assert message["headers"]["task"] == "booking_confirmation"
    assert f"'outbox_id': {free}" in message["headers"]["kwargsrepr"]
    # The command, the Lambda entry point and the worker's beat task run the same relay.
    from functions.notify.tasks import relay_outbox
    from functions.relay import handler as relay
    assert relay.main([]) == 0
    assert _state(sql, held)["published_at"] is not None
    sql.execute("UPDATE outbox SET created_at = now() - interval '1 minute' WHERE id = %s", (young,))
    assert relay_outbox() == 1 and _state(sql, young)["published_at"] is not None
    assert relay.lambda_handler({}, None)["published"] == 0
    redis.delete(queue)


def test_relay_leaves_rows_pending_when_redis_is_down(
    fresh_outbox: None, sql: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    sql.execute("UPDATE outbox SET published_at = now() WHERE published_at IS NULL")
    pending = _row(sql)
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    get_settings.cache_clear()
    assert outbox.relay_pending(min_age=0) == 0
    assert _state(sql, pending)["published_at"] is None
    assert _state(sql, pending)["attempts"] == 1
    sql.execute("UPDATE outbox SET published_at = now() WHERE id = %s", (pending,))


@pytest.mark.parametrize("in_lambda", [True, False])
def test_publish_is_inline_under_lambda_and_batched_in_containers(
    in_lambda: bool, sql: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.clients import LambdaClient
    from tests.support.factories import account, create_event

    client = LambdaClient("v2")
    _, organizer = account(client, "organizer")
    event = create_event(client, organizer, total_tickets=5)
    _, token = account(client, "customer")
    if in_lambda:  # a frozen environment cannot finish work after answering
        monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "booking")
    r = client.request("POST", "/bookings", json_body={"event_id": event["id"]}, token=token)
    assert r.status_code == 201
    if not in_lambda:
        assert outbox.flush_background()
    row = sql.execute(
        "SELECT published_at FROM outbox WHERE task = 'booking_confirmation' AND payload->>'booking_id' = %s",
        (str(r.json()["id"]),),
    ).fetchone()
    assert row is not None and row["published_at"] is not None


def test_a_booking_publishes_what_its_outbox_row_holds_without_reading_it_back(
    fresh_outbox: None, sql: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.ticketing import bookings
    from tests.support.clients import LambdaClient
    from tests.support.factories import account, create_event

    client = LambdaClient("v2")
    _, organizer = account(client, "organizer")
    event = create_event(client, organizer, total_tickets=5)
    user, _ = account(client, "customer")
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "booking")
    redis, queue = outbox.redis_client(), get_settings().notify_queue
    redis.delete(queue)
    booking = bookings.book(user_id=user["id"], event_id=event["id"], quantity=2)
    [message] = [json.loads(m) for m in redis.lrange(queue, 0, -1)]
    stored = sql.execute("SELECT * FROM outbox WHERE id = %s", (booking["outbox_id"],)).fetchone()
    assert stored is not None and stored["published_at"] is not None
    import base64
    _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert message["headers"]["task"] == stored["task"]
    assert kwargs == outbox.row_kwargs(stored)
    redis.delete(queue)
