"""The OpenAPI document and the server agree: a schemathesis run with every check.

The run is in-process against the local router (every router, one document), bounded by
example count so it takes seconds, with a token of the right role for each operation so
the protected routes are exercised past authentication.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events, from_schema

from tests.clients import LambdaClient
from tests.factories import account

# Bounded: ~10 s on 2 cores. The seed makes a failure reproducible from its report.
FUZZ_CONFIG = {
    "seed": 20261129,
    "generation": {"max-examples": 10, "mode": "all"},
    "phases": {"stateful": {"enabled": False}},
}


def _role(operation: Any) -> str:
    """Which token an operation needs: organizers manage events, customers everything else."""
    path, method = operation.path, operation.method.upper()
    organizer = path == "/events/{event_id}/bookings" or (
        path.startswith("/events") and method != "GET" and not path.endswith("/holds")
    )
    return "organizer" if organizer else "customer"


def _documented_refusal(operation: Any, status: int, body: bytes) -> bool:
    """A schema-valid request refused by a rule the schema cannot state (a sold-out event,
    end before start, a reused Idempotency-Key): fine when the code is documented there.

    ``validation_error`` never is: it means the schema allowed what validation refuses.
    """
    try:
        code = json.loads(body)["code"]
    except (ValueError, KeyError, TypeError):
        return False
    documented = operation.definition.raw.get("responses", {}).get(str(status), {}).get("description", "")
    return code != "validation_error" and f"`{code}`" in documented


def _failures(schema: Any) -> list[str]:
    found: list[str] = []
    for event in from_schema(schema).execute():
        if isinstance(event, events.NonFatalError):
            found.append(f"{event.label}: {event.value!r}")
        if not isinstance(event, events.ScenarioFinished):
            continue
        recorder = event.recorder
        for case_id, checks in recorder.checks.items():
            for check in checks:
                if check.failure_info is None:
                    continue
                case = recorder.cases[case_id].value
                interaction = recorder.interactions.get(case_id)
                response = interaction.response if interaction else None
                if (
                    check.name == "positive_data_acceptance"
                    and response is not None
                    and _documented_refusal(case.operation, response.status_code, response.content or b"")
                ):
                    continue
                status = response.status_code if response is not None else None
                found.append(
                    f"{check.name} {case.method} {case.formatted_path} -> {status}: "
                    f"{check.failure_info.failure.title}\n{check.failure_info.code_sample}"
                )
    return found


@pytest.mark.slow
def test_schemathesis_finds_nothing(database: str) -> None:
    from local.app import app

    client = LambdaClient("v2")
    tokens = {role: account(client, role)[1] for role in ("organizer", "customer")}
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=SchemathesisConfig.from_dict(FUZZ_CONFIG))

    class BearerForRole:
        def get(self, case: Any, ctx: Any) -> dict[str, str]:
            return tokens

        def set(self, case: Any, data: dict[str, str], ctx: Any) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data[_role(case.operation)]}"}

    schema.auth()(BearerForRole)
    failures = _failures(schema)
    assert not failures, "\n\n".join(dict.fromkeys(failures))
