"""``python -m local.invoke``: a handler invoked from the command line answers exactly as
the same request over HTTP does (status and body), in both event formats."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from local import invoke as cli
from local.lambda_events import build_lambda_event
from tests.support.clients import HttpClient
from tests.support.factories import PASSWORD, account, create_event

REPO_ROOT = Path(__file__).resolve().parents[2]


def _invoke(_: Any, *argv: str) -> dict[str, Any]:
    out = io.StringIO()
    assert cli.main(list(argv), out=out) == 0
    return json.loads(out.getvalue())


def _body(response: dict[str, Any]) -> Any:
    text = response["body"]
    if response.get("isBase64Encoded"):
        text = base64.b64decode(text).decode()
    return json.loads(text)


@pytest.fixture
def event_and_token(http_client: HttpClient) -> tuple[dict[str, Any], str]:
    _, token = account(http_client, "organizer")
    return create_event(http_client, token, title="Invoke me", total_tickets=7), token


@pytest.mark.parametrize("fmt", ["--v2", "--v1"])
def test_get_matches_http(fmt: str, http_client: HttpClient, event_and_token: Any,
                          capsys: pytest.CaptureFixture[str]) -> None:
    event, _ = event_and_token
    over_http = http_client.request("GET", f"/events/{event['id']}")
    response = _invoke(capsys, "GET", f"/events/{event['id']}", fmt)
    assert response["statusCode"] == over_http.status_code == 200
    assert _body(response) == over_http.json()


@pytest.mark.parametrize(
    ("method", "path", "extra"),
    [
        ("GET", "/events/999999999", []),
        ("POST", "/users", ["--json", '{"email": "not-an-email", "password": "x"}']),
        ("POST", "/users", ["-d", "{not json", "-H", "Content-Type: application/json"]),
        ("POST", "/auth/token", ["--form", "username=nobody@test.com", "--form",
                                 f"password={PASSWORD}"]),
        ("GET", "/events?limit=0", []),
    ],
)
def test_errors_match_http(method: str, path: str, extra: list[str], http_client: HttpClient,
                           capsys: pytest.CaptureFixture[str]) -> None:
    args = iter(extra)
    headers: dict[str, str] = {}
    content: bytes | None = None
    form: dict[str, str] | None = None
    for flag in args:
        value = next(args)
        if flag == "--json":
            content, headers["content-type"] = value.encode(), "application/json"
        elif flag == "-d":
            content = value.encode()
        elif flag == "-H":
            name, _, val = value.partition(":")
            headers[name.strip().lower()] = val.strip()
        elif flag == "--form":
            key, _, val = value.partition("=")
            form = {**(form or {}), key: val}
    base, _, query = path.partition("?")
    params = dict(item.split("=") for item in query.split("&")) if query else None
    over_http = http_client.request(method, base, content=content, headers=headers, form=form,
                                    params=params)
    response = _invoke(capsys, method, path, *extra)
    assert 400 <= over_http.status_code < 500
    assert response["statusCode"] == over_http.status_code
    assert _body(response) == over_http.json()


def test_authenticated_write_through_invoke(http_client: HttpClient, event_and_token: Any,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    event, token = event_and_token
    response = _invoke(capsys, "PUT", f"/events/{event['id']}", "--token", token,
                       "--json", '{"title": "Renamed by invoke"}')
    assert response["statusCode"] == 200
    assert http_client.request("GET", f"/events/{event['id']}").json()["title"] == \
        "Renamed by invoke"


def test_event_file_is_invoked_as_given(tmp_path: Path, http_client: HttpClient,
                                        event_and_token: Any,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    event, _ = event_and_token
    path = tmp_path / "event.json"
    path.write_text(json.dumps(build_lambda_event("GET", f"/events/{event['id']}", fmt="v1")))
    response = _invoke(capsys, "--event", str(path))
    assert response["statusCode"] == 200
    assert _body(response) == http_client.request("GET", f"/events/{event['id']}").json()


def test_body_only_prints_the_decoded_body(event_and_token: Any,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    event, _ = event_and_token
    out = io.StringIO()
    assert cli.main(["GET", f"/events/{event['id']}", "--body"], out=out) == 0
    assert json.loads(out.getvalue())["id"] == event["id"]


@pytest.mark.parametrize(
    "argv",
    [
        ["GET", "/no/such/route"],
        [],
        ["POST", "/users", "--json", "{broken"],
        ["GET", "/events", "-H", "no-colon-here"],
        ["--event", "/nonexistent/event.json"],
    ],
)
def test_bad_arguments_exit_2_with_a_message(argv: list[str],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_command_line_process_matches_http(http_client: HttpClient,
                                           event_and_token: Any) -> None:
    """The real command, as a developer types it, against the same database."""
    event, _ = event_and_token
    over_http = http_client.request("GET", f"/events/{event['id']}")
    done = subprocess.run(
        [sys.executable, "-m", "local.invoke", "GET", f"/events/{event['id']}"],
        cwd=REPO_ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    response = json.loads(done.stdout)
    assert response["statusCode"] == over_http.status_code
    assert _body(response) == over_http.json()
    assert f"events: GET /events/{event['id']} -> 200" in done.stderr


def test_an_invoked_booking_publishes_its_notification_before_the_process_ends(
    http_client: HttpClient, event_and_token: Any, sql: Any, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A one-shot process has no later moment for a background publisher: like Lambda, it
    pushes the outbox row before it answers (else only the relay's next round sends it)."""
    event, _ = event_and_token
    _, token = account(http_client, "customer")
    monkeypatch.delenv("OUTBOX_PUBLISH", raising=False)
    from shared.platform.settings import get_settings

    get_settings.cache_clear()
    try:
        body = json.dumps({"event_id": event["id"]})
        response = _invoke(capsys, "POST", "/bookings", "--token", token, "--json", body)
        assert response["statusCode"] == 201
        booking_id = _body(response)["id"]
        row = sql.execute("SELECT published_at FROM outbox WHERE payload->>'booking_id' = %s",
                          (str(booking_id),)).fetchone()
        assert row["published_at"] is not None
    finally:
        get_settings.cache_clear()


def test_database_commands_of_dev_py_find_the_running_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`dev.py relay | deadletters | migrate` use `dev.py up`'s servers when none are configured."""
    sys.path.insert(0, str(REPO_ROOT))
    import dev

    (tmp_path / ".local-data").mkdir()
    (tmp_path / ".local-data" / "stack.env").write_text(
        "DATABASE_URL=postgresql://postgres@127.0.0.1:1/ticketing\nREDIS_URL=redis://127.0.0.1:2/0\n"
    )
    monkeypatch.setattr(dev, "ROOT", tmp_path)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    dev._use_running_stack()
    assert os.environ["DATABASE_URL"] == "postgresql://postgres@127.0.0.1:1/ticketing"
    assert os.environ["REDIS_URL"] == "redis://127.0.0.1:2/0"
