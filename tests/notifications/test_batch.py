"""Fan-out pages: one transaction per page, and a failing send gives back only the unsent."""

from __future__ import annotations

from typing import Any

import pytest

from functions.notify import deliveries
from tests.support.factories import account, create_event


def _outbox_row(sql: Any, event_id: int) -> int:
    return sql.execute(  # type: ignore[no-any-return]
        "INSERT INTO outbox (task, payload) VALUES ('event_update', jsonb_build_object('event_id', %s::bigint)) "
        "RETURNING id",
        (event_id,),
    ).fetchone()["id"]


def test_a_failed_send_keeps_the_sent_and_frees_the_rest(http_client: Any, sql: Any) -> None:
    # GIVEN a page of five users and a channel that fails on the fourth
    _, org = account(http_client, "organizer")
    event = create_event(http_client, org)
    users = [account(http_client, "customer")[0] for _ in range(5)]
    outbox_id = _outbox_row(sql, event["id"])
    sent: list[int] = []

    def send_to(user_id: int, fail: bool) -> Any:
        def send() -> None:
            if fail:
                raise ConnectionError("mail service down")
            sent.append(user_id)

        return send

    items = [(u["id"], u["email"], send_to(u["id"], i == 3)) for i, u in enumerate(users)]

    # WHEN the page is delivered, it raises after keeping what was sent
    with pytest.raises(ConnectionError):
        deliveries.deliver_batch(outbox_id=outbox_id, kind="event_update", channel="test", sends_per_commit=100,
                                 items=items)
    keys = {
        r["user_id"]
        for r in sql.execute(
            "SELECT user_id FROM notification_deliveries WHERE outbox_id = %s", (outbox_id,)
        ).fetchall()
    }
    assert keys == {u["id"] for u in users[:3]} == set(sent)

    # THEN the retry reaches exactly the two users left, once each
    items = [(u["id"], u["email"], send_to(u["id"], False)) for u in users]
    assert deliveries.deliver_batch(
        outbox_id=outbox_id, kind="event_update", channel="test", sends_per_commit=100, items=items
    ) == 2
    assert sorted(sent) == sorted(u["id"] for u in users)
    assert deliveries.deliver_batch(
        outbox_id=outbox_id, kind="event_update", channel="test", sends_per_commit=1, items=items
    ) == 0
    assert len(sent) == 5
