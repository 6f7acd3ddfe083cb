"""Notification contracts: what the API can publish is what the worker registers."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from shared.notifications import contracts, outbox
from shared.notifications.contracts import NOTIFICATIONS, BookingConfirmation, EventUpdate, Notification
from tests.support.clients import LambdaClient
from tests.support.factories import account, create_event

ROOT = Path(__file__).resolve().parents[2]
PRODUCER_TREES = ("shared", "functions", "local", "bench")
CONTRACT_NAMES = set(NOTIFICATIONS)
ACCEPTED_NAMES = CONTRACT_NAMES | {alias for c in NOTIFICATIONS.values() for alias in c.aliases}


def _registered() -> set[str]:
    from functions.notify.worker import app

    return set(app.tasks)


def test_every_contract_is_in_the_registry_under_a_name_of_its_own() -> None:
    def named(cls: type[Notification]) -> list[type[Notification]]:
        below = [c for sub in cls.__subclasses__() for c in named(sub)]
        return [*below, cls] if "name" in vars(cls) else below

    defined = [c for c in named(Notification) if c.__module__ == contracts.__name__]
    assert sorted(c.__name__ for c in defined) == sorted(c.__name__ for c in NOTIFICATIONS.values())
    names = [name for c in defined for name in (c.name, *c.aliases)]
    assert len(names) == len(set(names)), names


def test_the_worker_registers_every_contract_name_and_every_old_name() -> None:
    assert _registered() >= ACCEPTED_NAMES


def test_every_notification_the_api_writes_is_a_contract_the_worker_registers(
    v2: LambdaClient, sql: psycopg.Connection
) -> None:
    # GIVEN the outbox as it is now
    before = sql.execute("SELECT coalesce(max(id), 0) AS id FROM outbox").fetchone()["id"]
    # WHEN every endpoint that notifies runs: registration, a resend, a booking, a hold
    # confirmed, a partial cancellation, an event update and an event cancellation
    _, organizer = account(v2, "organizer")
    _, customer = account(v2, "customer")
    assert v2.request("POST", "/users/me/verification", token=customer).status_code == 202
    event = create_event(v2, organizer, total_tickets=10)
    booked = v2.request("POST", "/bookings", json_body={"event_id": event["id"], "quantity": 2},
                        token=customer)
    assert booked.status_code == 201, booked.text
    hold = v2.request("POST", f"/events/{event['id']}/holds", json_body={"quantity": 1}, token=customer)
    assert hold.status_code == 201, hold.text
    confirmed = v2.request("POST", f"/holds/{hold.json()['id']}/confirm", token=customer)
    assert confirmed.status_code == 201, confirmed.text
    cancelled = v2.request("POST", f"/bookings/{booked.json()['id']}/cancel",
                           json_body={"quantity": 1}, token=customer)
    assert cancelled.status_code == 200, cancelled.text
    for method, path, body in (("PUT", f"/events/{event['id']}", {"venue": "Hall B"}),
                               ("POST", f"/events/{event['id']}/cancel", None)):
        r = v2.request(method, path, json_body=body, token=organizer)
        assert r.status_code == 200, r.text
    rows = sql.execute("SELECT task, payload FROM outbox WHERE id > %s", (before,)).fetchall()
    # THEN every notification was written under a contract's name, with exactly its payload
    written = {row["task"] for row in rows}
    published = {contract.published_as: contract for contract in NOTIFICATIONS.values()}
    assert written == set(published)
    for row in rows:
        contract = published[row["task"]]
        assert set(row["payload"]) == set(contract.field_names()), row
        assert contract.parse(row["payload"]).payload() == row["payload"]
    # AND the worker has a task for each of them
    assert written <= _registered()


def test_only_the_outbox_module_inserts_outbox_rows() -> None:
    """Every producer goes through a contract (outbox.write / insert_select_sql)."""
    insert = re.compile(r"INSERT\s+INTO\s+outbox\b", re.IGNORECASE)
    writers = sorted(
        str(path.relative_to(ROOT))
        for tree in PRODUCER_TREES for path in (ROOT / tree).rglob("*.py")
        if insert.search(path.read_text(encoding="utf-8"))
    )
    assert writers == ["shared/notifications/outbox.py"]


def test_insert_select_sql_reads_every_field_and_refuses_unknown_ones() -> None:
    sql = outbox.insert_select_sql(BookingConfirmation, "booking", booking_id="id")
    assert "SELECT 'booking_confirmation', jsonb_build_object('booking_id', id, 'event_id', event_id," in sql
    assert sql.endswith("FROM booking")
    with pytest.raises(ValueError, match="no field"):
        outbox.insert_select_sql(BookingConfirmation, "booking", booking="id")


def test_parse_ignores_fields_a_newer_producer_added() -> None:
    parsed = EventUpdate.parse({"event_id": 3, "changes": {"venue": {"old": "A", "new": "B"}},
                                "outbox_id": 9, "added_later": True})
    assert parsed == EventUpdate(event_id=3, changes={"venue": {"old": "A", "new": "B"}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.event_id = 4  # type: ignore[misc]


def test_a_name_is_refused_when_it_could_not_be_a_sql_literal() -> None:
    with pytest.raises(ValueError, match="must match"):

        @dataclasses.dataclass(frozen=True)
        class Bad(Notification):
            name = "it's"


# What `celery -A MODULE worker` does before it consumes: find the app, then the loader's
# worker start (imports the app's ``include``). A subprocess, so nothing imported here counts.
_WORKER_OF = """
import json, sys
from celery.app.utils import find_app
app = find_app(sys.argv[1])
app.loader.init_worker()
print(json.dumps({"tasks": sorted(app.tasks), "checks": "functions.notify.worker" in sys.modules}))
"""


@pytest.mark.parametrize("module", ["functions.notify", "functions.notify.celery_app",
                                    "functions.notify.worker", "functions.notify.tasks"])
def test_every_dash_a_module_gives_a_worker_that_knows_every_task(module: str) -> None:
    done = subprocess.run([sys.executable, "-c", _WORKER_OF, module], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=True)
    worker = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(worker["tasks"]) >= ACCEPTED_NAMES | {"fanout_chunk", "relay_outbox"}
    assert worker["checks"]  # the start checks and metrics of functions/notify/worker.py too


def test_a_renamed_notification_is_published_under_a_name_older_workers_register() -> None:
    """Rolling deploys update the API before the workers: it must publish the old name."""
    # GIVEN the contracts  THEN each publishes its name or one of its aliases
    for contract in NOTIFICATIONS.values():
        assert contract.published_as in (contract.name, *contract.aliases)
    # AND event updates keep the name every worker before issue 12 registers
    assert EventUpdate.published_as == "notify_event_update"
