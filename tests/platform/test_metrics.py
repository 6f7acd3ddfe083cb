"""Metrics: the Prometheus endpoint moves with bookings; Lambda emits EMF lines instead."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.clients import HttpClient, LambdaClient, Response
from tests.support.clock import FakeClock
from tests.support.factories import account, create_event
from tests.support.settings_env import restore_env, set_env
from tests.support.tickets import place_hold


def _get_metrics(client: HttpClient) -> Response:
    return client.request("GET", "/metrics", token=os.environ["METRICS_TOKEN"])


def scrape(client: HttpClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = _get_metrics(client)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def change(before: dict[Any, float], after: dict[Any, float], name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def total(samples: dict[Any, float], name: str) -> float:
    """A counter's value summed over all its labels."""
    return sum(v for (sample, _), v in samples.items() if sample == name)


EXPECTED = [
    "ticketing_http_requests_total",
    "ticketing_http_request_duration_seconds_bucket",
    "ticketing_bookings_total",
    "ticketing_tickets_booked_total",
    "ticketing_booking_refusals_total",
    "ticketing_outbox_backlog",
    "ticketing_outbox_oldest_unpublished_age_seconds",
    "ticketing_outbox_scrape_ok",
]
# Exposed once anything happened; the family's HELP/TYPE lines are always there.
DECLARED = [
    "ticketing_idempotent_replays",
    "ticketing_rate_limited",
    "ticketing_notifications_sent",
    "ticketing_notifications_retried",
    "ticketing_notifications_dead_lettered",
]


def test_metrics_endpoint_exposes_every_family(http_client: HttpClient) -> None:
    http_client.request("GET", "/events")
    samples = scrape(http_client)
    names = {name for name, _ in samples}
    for name in EXPECTED:
        assert name in names, name
    text = _get_metrics(http_client).text
    for name in DECLARED:
        assert f"# TYPE {name}_total counter" in text, name


def test_counters_move_when_a_booking_is_made(http_client: HttpClient, sql: psycopg.Connection) -> None:
    _, organizer = account(http_client, "organizer")
    customer, token = account(http_client, "customer")
    event = create_event(http_client, organizer, total_tickets=3)
    before = scrape(http_client)

    r = http_client.request("POST", "/bookings", json_body={"event_id": event["id"], "quantity": 2},
                            token=token)
    assert r.status_code == 201, r.text
    r = http_client.request("POST", f"/book/{customer['id']}",
                            json_body={"event_id": event["id"], "quantity": 2}, token=token)
    assert r.status_code == 400 and r.json()["code"] == "insufficient_tickets"
    r = http_client.request("POST", "/bookings", json_body={"event_id": event["id"], "quantity": 1},
                            token=token)
    assert r.status_code == 201
    r = http_client.request("POST", "/bookings", json_body={"event_id": event["id"], "quantity": 1},
                            token=token)
    assert r.status_code == 400 and r.json()["code"] == "sold_out"
    after = scrape(http_client)
    delta = functools.partial(change, before, after)

    assert delta("ticketing_bookings_total") == 2
    assert delta("ticketing_tickets_booked_total") == 3
    assert delta("ticketing_booking_refusals_total", reason="sold_out") == 1
    assert delta("ticketing_booking_refusals_total", reason="insufficient_tickets") == 1
    req = {"method": "POST", "route": "/bookings"}
    assert delta("ticketing_http_requests_total", status="201", **req) == 2
    assert delta("ticketing_http_requests_total", status="400", **req) == 1
    assert delta("ticketing_http_requests_total", method="POST", route="/book/{user_id}",
                 status="400") == 1
    assert delta("ticketing_http_request_duration_seconds_count", status="201", **req) == 2
    assert delta("ticketing_http_request_duration_seconds_bucket", status="201", le="+Inf",
                 **req) == 2

    # Outbox figures are read from PostgreSQL at scrape time: they match the table.
    row = sql.execute("SELECT count(*) AS n FROM outbox WHERE published_at IS NULL").fetchone()
    assert row is not None
    assert value(after, "ticketing_outbox_scrape_ok") == 1
    assert value(after, "ticketing_outbox_backlog") == pytest.approx(row["n"], abs=5)
    if row["n"]:
        assert value(after, "ticketing_outbox_oldest_unpublished_age_seconds") >= 0


def test_a_hold_confirmation_counts_as_a_booking_once(http_client: HttpClient, fake_clock: FakeClock) -> None:
    _, organizer = account(http_client, "organizer")
    _, token = account(http_client, "customer")
    _, rival = account(http_client, "customer")
    event = create_event(http_client, organizer, total_tickets=3)
    kept = place_hold(http_client, token, event["id"], 2).json()
    lapsed = place_hold(http_client, token, event["id"], 1, ttl_seconds=5).json()
    before = scrape(http_client)

    confirm = f"/holds/{kept['id']}/confirm"
    assert http_client.request("POST", confirm, token=token).status_code == 201
    assert http_client.request("POST", confirm, token=token).status_code == 200  # the same booking again
    fake_clock.advance(6)
    assert http_client.request("POST", "/bookings", json_body={"event_id": event["id"]}, token=rival).status_code == 201
    r = http_client.request("POST", f"/holds/{lapsed['id']}/confirm", token=token)
    assert r.status_code == 409 and r.json()["code"] == "hold_expired"
    after = scrape(http_client)

    # The first confirmation and the rival's booking; the repeat and the expired hold count nothing.
    assert change(before, after, "ticketing_bookings_total") == 2
    assert change(before, after, "ticketing_tickets_booked_total") == 3
    assert total(after, "ticketing_booking_refusals_total") == total(before, "ticketing_booking_refusals_total")


def test_outbox_age_reflects_the_oldest_unpublished_row(
    http_client: HttpClient, sql: psycopg.Connection
) -> None:
    row = sql.execute(
        "INSERT INTO outbox (task, payload, created_at) VALUES "
        "('ops_metrics_probe', '{}'::jsonb, now() - interval '1 day') RETURNING id"
    ).fetchone()
    assert row is not None
    try:
        samples = scrape(http_client)
        assert value(samples, "ticketing_outbox_oldest_unpublished_age_seconds") >= 86_400
        assert value(samples, "ticketing_outbox_backlog") >= 1
    finally:
        sql.execute("DELETE FROM outbox WHERE id = %s", (row["id"],))


def test_lambda_emits_embedded_metric_format(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], http_client: HttpClient
) -> None:
    _, organizer = account(http_client, "organizer")
    _, token = account(http_client, "customer")
    event = create_event(http_client, organizer, total_tickets=1)
    before = scrape(http_client)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "booking")
    capsys.readouterr()
    client = LambdaClient("v2")
    r = client.request("POST", "/bookings", json_body={"event_id": event["id"], "quantity": 1},
                       token=token)
    assert r.status_code == 201, r.text
    r = client.request("POST", "/bookings", json_body={"event_id": event["id"], "quantity": 1},
                       token=token)
    assert r.status_code == 400
    out = capsys.readouterr().out
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME")

    docs = [json.loads(line) for line in out.splitlines() if '"_aws"' in line]
    assert len(docs) == 2, out  # one EMF line per request
    made, refused = docs
    for doc in docs:
        directives = doc["_aws"]["CloudWatchMetrics"]
        assert all(d["Namespace"] == "Ticketing" for d in directives)
        for d in directives:
            for dims in d["Dimensions"]:
                assert all(dim in doc for dim in dims)  # every dimension has its value
            for metric in d["Metrics"]:
                assert metric["Name"] in doc
        assert doc["Function"] == "booking"
        assert doc["Route"] == "POST /bookings"
        assert doc["request_id"]
    assert made["Bookings"] == 1 and made["TicketsBooked"] == 1 and made["Status"] == "201"
    assert refused["BookingRefusals"] == 1 and refused["Reason"] == "sold_out"
    assert refused["Status"] == "400" and refused["Latency"] >= 0

    # In Lambda mode the figures went to EMF, not into the process's Prometheus registry.
    after = scrape(http_client)
    assert value(after, "ticketing_bookings_total") == value(before, "ticketing_bookings_total")


def test_dashboard_and_prometheus_config_match_the_exposed_metrics(http_client: HttpClient) -> None:
    import re

    import yaml

    root = Path(__file__).resolve().parents[2] / "infra"
    dashboard = json.loads((root / "grafana" / "dashboards" / "ticketing.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bticketing_[a-z_]+", target["expr"])
    }
    exposed = _get_metrics(http_client).text
    missing = {name for name in queried if f"# TYPE {name.removesuffix('_bucket')}" not in exposed
               and f"\n{name}" not in exposed}
    assert not missing, missing
    assert {"ticketing_bookings_total", "ticketing_outbox_backlog"} <= queried

    config = yaml.safe_load((root / "prometheus" / "prometheus.yml").read_text())
    api = next(job for job in config["scrape_configs"] if job["job_name"] == "api")
    assert api["metrics_path"] == "/metrics"
    assert api["static_configs"][0]["targets"] == ["api:8000"]
    datasource = yaml.safe_load(
        (root / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uids = {panel["datasource"]["uid"] for panel in dashboard["panels"]}
    assert uids == {datasource["datasources"][0]["uid"]}


def test_metrics_are_served_only_to_the_token(http_client: HttpClient, tmp_path: Path) -> None:
    token = os.environ["METRICS_TOKEN"]
    assert _get_metrics(http_client).status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong-token-of-some-length"},
                    {"Authorization": f"Basic {token}"}, {"Authorization": f"Bearer {token}x"},
                    {"Authorization": "Bearer"}):
        r = http_client.request("GET", "/metrics", headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.json()["code"] == "not_authenticated" and "ticketing_" not in r.text
        assert r.headers["www-authenticate"] == "Bearer"

    # No token configured (the default): not served at all, as if the route did not exist.
    saved = set_env({"METRICS_TOKEN": "", "METRICS_TOKEN_FILE": ""})
    try:
        for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": f"Bearer {token}"}):
            r = http_client.request("GET", "/metrics", headers=headers)
            assert r.status_code == 404 and r.json()["code"] == "not_found", r.text
    finally:
        restore_env(saved)

    # From a file (compose's generated token), read per scrape: a rotation applies at once.
    token_file = tmp_path / "token"
    token_file.write_text("first-token-0123456789\n")
    saved = set_env({"METRICS_TOKEN": "", "METRICS_TOKEN_FILE": str(token_file)})
    try:
        assert http_client.request("GET", "/metrics", token="first-token-0123456789").status_code == 200
        token_file.write_text("second-token-0123456789")
        assert http_client.request("GET", "/metrics", token="first-token-0123456789").status_code == 401
        assert http_client.request("GET", "/metrics", token="second-token-0123456789").status_code == 200
        token_file.write_text("short")  # too short to be a secret: off, whatever is sent
        assert http_client.request("GET", "/metrics", token="short").status_code == 404
    finally:
        restore_env(saved)


def test_a_short_metrics_token_is_refused_at_startup() -> None:
    from pydantic import ValidationError

    from shared.platform.settings import Settings

    with pytest.raises(ValidationError, match="METRICS_TOKEN"):
        Settings(metrics_token="metrics")


def test_worker_metrics_listen_on_loopback_unless_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's /metrics has no token: by default only the host itself reaches it."""
    import prometheus_client

    from functions.notify import worker
    from local.embedded import free_port

    started: list[Any] = []
    real_start = prometheus_client.start_http_server

    def spy(*args: Any, **kwargs: Any) -> Any:
        started.append(real_start(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(prometheus_client, "start_http_server", spy)
    port = free_port()
    saved = set_env({"WORKER_METRICS_PORT": str(port)})
    os.environ.pop("WORKER_METRICS_ADDR", None)
    try:
        worker._observability()  # the worker's own start-up hook, default settings
        (server, _), = started
        try:
            assert server.server_address[0] == "127.0.0.1"
        finally:
            server.shutdown()
            server.server_close()
    finally:
        restore_env(saved)
    from shared.platform.settings import Settings

    assert Settings(_env_file=None, worker_metrics_addr="0.0.0.0").worker_metrics_addr == "0.0.0.0"  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="WORKER_METRICS_ADDR"):
        Settings(_env_file=None, worker_metrics_addr="everywhere")  # type: ignore[call-arg]


def test_compose_opens_worker_metrics_only_on_its_network() -> None:
    import yaml

    root = Path(__file__).resolve().parents[2]
    compose = yaml.safe_load((root / "docker-compose.yml").read_text())
    worker = compose["services"]["worker"]
    assert worker["environment"]["WORKER_METRICS_ADDR"] == "0.0.0.0"  # Prometheus scrapes worker:9100
    assert "ports" not in worker
