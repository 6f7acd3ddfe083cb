"""The OpenAPI document and the server agree: a schemathesis run with every check.

The run is in-process against the local router (every router, one document), bounded by
example count so it takes seconds, with a token of the right role for each operation so
the protected routes are exercised past authentication.
"""

from __future__ import annotations

import importlib
import json
import re
from typing import Any

import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events, from_schema

from local.lambda_events import build_lambda_event, invoke
from tests.support.clients import Client, HttpClient, LambdaClient
from tests.support.factories import account

APPS = ["local.app", "functions.users.app", "functions.events.app", "functions.booking.app"]

# Bounded: ~15 s on 2 cores. The seed makes a failure reproducible from its report. The
# stateful phase stays off: its inferred links feed nullable response fields into path
# parameters (a booking's null hold_id becomes DELETE /holds/None, rightly a 422), which
# the positive-data check then reports as the server's fault.
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

    A ``validation_error`` means the schema allowed what validation refuses, unless every
    error is of a type declared as such a rule (UNSTATED_RULES: a look-alike email, a
    common password).
    """
    from shared.web.schemas import UNSTATED_RULES

    try:
        payload = json.loads(body)
        code = payload["code"]
    except (ValueError, KeyError, TypeError):
        return False
    if code == "validation_error":
        errors = payload.get("details", {}).get("errors", [])
        return bool(errors) and all(err.get("type") in UNSTATED_RULES for err in errors)
    documented = operation.definition.raw.get("responses", {}).get(str(status), {}).get("description", "")
    return f"`{code}`" in documented


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


def _document(module: str) -> dict[str, Any]:
    return importlib.import_module(module).app.openapi()  # type: ignore[no-any-return]


@pytest.mark.parametrize("module", APPS)
def test_every_operation_documents_the_errors_the_factory_answers(module: str) -> None:
    for path, item in _document(module)["paths"].items():
        for method, operation in item.items():
            expected = {"422", "503"} | ({"400", "413", "415"} if "requestBody" in operation else set())
            assert expected <= operation["responses"].keys(), (method, path)
            if "requestBody" in operation:
                assert "`invalid_json`" in operation["responses"]["400"]["description"], (method, path)
                assert "`payload_too_large`" in operation["responses"]["413"]["description"], (method, path)


@pytest.mark.parametrize("module", APPS)
def test_one_variable_name_per_path_position(module: str) -> None:
    # OpenAPI (and API Gateway) take /events/{a} and /events/{b} for one path.
    shapes: dict[str, str] = {}
    for path in _document(module)["paths"]:
        shape = re.sub(r"\{[^}]*\}", "{}", path)
        assert shapes.setdefault(shape, path) == path, f"{path} and {shapes[shape]}"


ALLOW = [
    ("/events", "GET, POST, OPTIONS"),
    ("/events/1", "GET, POST, PUT, OPTIONS"),
    ("/bookings", "GET, POST, OPTIONS"),
    ("/holds/1", "GET, DELETE, OPTIONS"),
]


@pytest.fixture(params=["http", "emulated"])
def server(request: pytest.FixtureRequest) -> HttpClient:
    """The local router and the Lambda emulator (API Gateway itself 404s undeclared methods)."""
    return request.getfixturevalue(f"{request.param}_client")  # type: ignore[no-any-return]


@pytest.mark.parametrize(("path", "allow"), ALLOW)
def test_options_and_405_name_every_method_of_the_path(server: HttpClient, path: str, allow: str) -> None:
    r = server.request("OPTIONS", path)
    assert (r.status_code, r.headers["allow"], r.text) == (204, allow, "")
    r = server.request("PATCH", path, json_body={})
    assert r.status_code == 405 and r.headers["allow"] == allow
    assert r.json()["code"] == "method_not_allowed"


@pytest.mark.parametrize(("path", "allow"), ALLOW)
def test_each_lambda_function_names_every_method_of_its_paths(path: str, allow: str) -> None:
    function = "booking" if path.startswith(("/bookings", "/holds")) else "events"
    result = invoke(function, build_lambda_event("DELETE" if "DELETE" not in allow else "PATCH", path))
    assert result["statusCode"] == 405 and result["headers"]["allow"] == allow


def test_the_text_pattern_is_the_text_rule() -> None:
    import sys

    from shared.web.schemas import TEXT_PATTERN, unsafe_text

    pattern = re.compile(TEXT_PATTERN)
    for code in range(sys.maxunicode + 1):
        if 0xD800 <= code <= 0xDFFF:
            continue  # surrogates: no JSON string holds one, the validator refuses them
        ch = chr(code)
        assert bool(pattern.fullmatch(ch)) == (unsafe_text(ch) is None), hex(code)  # as JSON Schema reads $


@pytest.mark.parametrize(
    "content", [b'{"email": "\xff"}', b"\xfe\xff\x00{", b'{"email": '], ids=["bad-utf8", "utf16-bom", "truncated"]
)
def test_one_code_for_an_unparsable_body(client: Client, content: bytes) -> None:
    r = client.request("POST", "/users", content=content, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_json"
