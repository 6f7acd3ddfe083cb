"""The booking Lambda keeps its worker threads between invocations, and still lets a process exit.

Mangum runs each invocation as a task of its own; anyio stops the worker threads a task
started when it ends, so every invocation used to start a thread (functions/booking/handler.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.support.clients import LambdaClient
from tests.support.factories import account, create_event

ROOT = Path(__file__).resolve().parents[2]


def _anyio_workers() -> set[int]:
    return {t.ident for t in threading.enumerate() if t.name == "AnyIO worker thread" and t.ident is not None}


def test_invocations_reuse_the_worker_threads(v2: LambdaClient) -> None:
    _, organizer = account(v2, "organizer")
    _, customer = account(v2, "customer")
    event = create_event(v2, organizer, total_tickets=10)
    seen: list[set[int]] = []
    for _ in range(3):  # each books: the rate-limit check and the booking run on worker threads
        response = v2.request("POST", "/bookings", json_body={"event_id": event["id"]}, token=customer)
        assert response.status_code == 201, response.text
        seen.append(_anyio_workers())
    assert seen[0] and seen[0] == seen[1] == seen[2]  # the same threads, alive between invocations


@pytest.mark.parametrize("invocations", [0, 2])
def test_a_process_that_invoked_the_handler_exits(invocations: int, server_urls: dict[str, str],
                                                   database: str) -> None:
    """Parked worker threads are non-daemon: they are stopped before the interpreter joins them."""
    script = f"""
import json
from functions.booking.handler import handler
from local.lambda_events import LambdaContext, build_lambda_event
from shared.accounts.tokens import issue_token

token = issue_token(1, "customer")[0]
for _ in range({invocations}):
    event = build_lambda_event("POST", "/bookings", headers={{"authorization": f"Bearer {{token}}",
                               "content-type": "application/json"}}, body=json.dumps({{"event_id": 1}}))
    print(handler(event, LambdaContext())["statusCode"])
"""
    env = {**os.environ, "DATABASE_URL": database, "REDIS_URL": server_urls["redis"],
           "AWS_LAMBDA_FUNCTION_NAME": "booking", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    statuses = [line for line in proc.stdout.splitlines() if line.isdigit()]
    assert len(statuses) == invocations  # whatever the answer (user 1 may be anyone): it answered and exited
