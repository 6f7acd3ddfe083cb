"""Structured logs: one JSON object per line, the correlation id, and no secrets."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import pytest

from local.lambda_events import build_lambda_event, invoke
from shared.platform.logging import REDACTED, bind_context, configure_logging, redact, redact_text
from tests.support.clients import Client
from tests.support.factories import unique_email


@pytest.fixture(autouse=True)
def _json_logs(json_logging: None) -> None:
    """Every test here reads JSON log lines."""


def _json_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line must be one JSON object (EMF lines are JSON too)."""
    lines = [line for line in text.splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]
    assert all(isinstance(entry, dict) for entry in parsed)
    return parsed


def _request_lines(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if e.get("logger") == "shared.web.telemetry"]


def test_request_line_is_json_and_carries_the_given_request_id(
    client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    request_id = f"test-{uuid.uuid4().hex}"
    capsys.readouterr()
    r = client.request("GET", "/events", headers={"X-Request-ID": request_id})
    assert r.status_code == 200
    assert r.headers["x-request-id"] == request_id
    entries = _json_lines(capsys.readouterr().out)
    mine = [e for e in _request_lines(entries) if e.get("request_id") == request_id]
    assert len(mine) == 1, entries
    line = mine[0]
    assert line["level"] == "INFO"
    assert line["route"] == "/events"
    assert line["method"] == "GET"
    assert line["status"] == 200
    assert isinstance(line["duration_ms"], float | int) and line["duration_ms"] >= 0
    assert line["message"].startswith("GET /events 200")


def test_route_is_the_template_not_the_path(client: Client, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    r = client.request("GET", "/events/987654321", headers={"X-Request-ID": "tmpl-check"})
    assert r.status_code == 404
    line = next(e for e in _request_lines(_json_lines(capsys.readouterr().out))
                if e.get("request_id") == "tmpl-check")
    assert line["route"] == "/events/{event_id}"
    assert line["path"] == "/events/987654321"
    assert line["status"] == 404


def test_generated_request_id_when_none_or_malformed(
    http_client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    r1 = http_client.request("GET", "/events")
    r2 = http_client.request("GET", "/events", headers={"X-Request-ID": "bad id\twith spaces"})
    ids = {r1.headers["x-request-id"], r2.headers["x-request-id"]}
    assert len(ids) == 2 and all(len(i) == 32 for i in ids)
    logged = {e.get("request_id") for e in _request_lines(_json_lines(capsys.readouterr().out))}
    assert ids <= logged


@pytest.mark.parametrize("fmt", ["v2", "v1"])
def test_lambda_uses_the_api_gateway_request_id(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    event = build_lambda_event("GET", "/events", fmt=fmt)  # type: ignore[arg-type]
    apigw_id = event["requestContext"]["requestId"]
    capsys.readouterr()
    result = invoke("events", event)
    assert result["statusCode"] == 200
    headers = {k.lower(): v for k, v in (result.get("headers") or {}).items()}
    for k, values in (result.get("multiValueHeaders") or {}).items():
        headers[k.lower()] = values[-1]
    assert headers["x-request-id"] == apigw_id
    line = next(e for e in _request_lines(_json_lines(capsys.readouterr().out))
                if e.get("request_id") == apigw_id)
    assert line["apigw_request_id"] == apigw_id
    assert line["aws_request_id"]  # the Lambda context's id, to join with REPORT lines
    assert line["route"] == "/events"


def test_password_and_token_never_appear_in_logs(
    client: Client, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    configure_logging("DEBUG")
    try:
        password = f"Pw-{uuid.uuid4().hex}"
        email = unique_email("secret")
        r = client.request("POST", "/users", json_body={
            "email": email, "password": password, "role": "customer"})
        assert r.status_code == 201, r.text
        # A rejected body holding the password (validation error path).
        r = client.request("POST", "/users", json_body={
            "email": "not-an-email", "password": password, "role": "customer"})
        assert r.status_code == 422
        r = client.request("POST", "/auth/token", form={"username": email, "password": password + "x"})
        assert r.status_code == 401
        r = client.request("POST", "/auth/token", form={"username": email, "password": password})
        assert r.status_code == 200
        token = r.json()["access_token"]
        assert client.request("GET", "/users/me", token=token).status_code == 200
        assert client.request("GET", "/users/me", token=token + "broken").status_code == 401
    finally:
        configure_logging("INFO")
    captured = capfd.readouterr()
    everything = captured.out + captured.err + caplog.text + "".join(
        json.dumps(vars(rec), default=str) for rec in caplog.records
    )
    assert "shared.web.telemetry" in everything  # logs were captured at all
    assert password not in everything
    assert token not in everything
    assert token.split(".")[2] not in everything  # not even the signature part


def test_redaction_by_field_name_and_by_shape(capsys: pytest.CaptureFixture[str]) -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3In0.c2lnbmF0dXJlLXZhbHVl"
    log = logging.getLogger(__name__)
    capsys.readouterr()
    with bind_context(request_id="redact-1"):
        log.warning("login for %s", {"username": "a@b.c", "password": "hunter2"})
        log.warning("Authorization: Bearer %s", jwt)
        log.warning("connecting to postgresql://app:pgpass@db:5432/x", extra={"api_key": "k-1"})
        try:
            raise ValueError(f"token={jwt}")
        except ValueError:
            log.exception("failed")
    out = capsys.readouterr().out
    entries = [e for e in _json_lines(out) if e.get("request_id") == "redact-1"]
    assert len(entries) == 4
    for secret in ("hunter2", jwt, "pgpass", "k-1"):
        assert secret not in out
    assert entries[2]["api_key"] == REDACTED
    assert "error" in entries[3] and "ValueError" in entries[3]["error"]
    assert redact({"nested": {"client_secret": "x", "ok": 1}}) == {
        "nested": {"client_secret": REDACTED, "ok": 1}}
    assert redact_text("password=abc&user=me") == f"password={REDACTED}&user=me"



@pytest.mark.parametrize(
    ("extra", "leak"),
    [
        ({"headers": {"Cookie": "session-abc123"}}, "session-abc123"),  # nested secret-named key
        ({"upstream": "postgresql://app:hunter22@db/x"}, "hunter22"),  # credentials in a URL
        ({"note": "Bearer abcdef123456"}, "abcdef123456"),
        ({"ids": {1, 2}, "private_key": "k-987"}, "k-987"),  # a set: rendered by the full path
    ],
)
def test_the_fast_path_never_skips_a_line_that_needs_redacting(
    extra: dict[str, Any], leak: str, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    logging.getLogger(__name__).info("plain message", extra=extra)
    (line,) = [e for e in _json_lines(capsys.readouterr().out) if e.get("logger") == __name__]
    assert leak not in json.dumps(line)
    assert REDACTED in json.dumps(line)


def test_a_plain_line_comes_out_whole(capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    logging.getLogger(__name__).info("POST /bookings 201", extra={"status": 201, "route": "/bookings"})
    (line,) = [e for e in _json_lines(capsys.readouterr().out) if e.get("logger") == __name__]
    assert (line["message"], line["status"], line["route"]) == ("POST /bookings 201", 201, "/bookings")
