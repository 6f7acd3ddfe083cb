"""The client's IP: one rule (TRUSTED_PROXIES) for rate limits and logs; no spoofing.

The HTTP tests go through a real uvicorn (peer 127.0.0.1) started as every deployment
starts it, without uvicorn's own proxy-header handling, and through Lambda events whose
peer is API Gateway's ``sourceIp``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from local.lambda_events import build_lambda_event, invoke
from shared.platform.settings import Settings
from shared.web.client_ip import limit_key, resolve, trusted_networks
from shared.web.ratelimit import limiter
from tests.support.clients import Client, HttpClient
from tests.support.factories import PASSWORD, register, unique_email
from tests.support.settings_env import restore_env, set_env


@pytest.fixture(autouse=True)
def _json_logs(json_logging: None) -> None:
    """Every test here reads JSON log lines."""


@pytest.fixture
def own_limits(database: str) -> Iterator[None]:
    """Limits under a key prefix of this test's own (Redis is shared by the suite)."""
    saved = set_env({"RATE_LIMIT_KEY_PREFIX": f"rl-ip-{uuid.uuid4().hex[:8]}"})
    limiter.reset()  # an earlier test's dead Redis must not leave the limiter failing open
    yield
    restore_env(saved)


def _logged_ips(out: str, marker: str) -> list[Any]:
    lines = [json.loads(line) for line in out.splitlines() if line.strip().startswith("{")]
    return [e.get("client_ip") for e in lines
            if e.get("logger") == "shared.web.telemetry" and e.get("request_id") == marker]


# --- the rule itself ----------------------------------------------------------------------

NETS = trusted_networks("10.0.0.0/8, 192.0.2.1")


@pytest.mark.parametrize(("peer", "xff", "nets", "expected"), [
    # untrusted peer: the header is ignored, whatever it says
    ("203.0.113.5", ["1.2.3.4"], NETS, "203.0.113.5"),
    ("203.0.113.5", ["1.2.3.4"], (), "203.0.113.5"),
    # a trusted proxy's header is honoured: the rightmost untrusted hop is the client
    ("10.1.2.3", ["1.2.3.4"], NETS, "1.2.3.4"),
    ("10.1.2.3", ["6.6.6.6, 1.2.3.4, 10.9.9.9"], NETS, "1.2.3.4"),  # 6.6.6.6 was the client's lie
    ("10.1.2.3", ["6.6.6.6", "1.2.3.4, 192.0.2.1"], NETS, "1.2.3.4"),  # several header lines
    # garbage stops the walk at the last address we could trust
    ("10.1.2.3", ["not-an-ip"], NETS, "10.1.2.3"),
    ("10.1.2.3", ["1.2.3.4, <script>, 10.0.0.7"], NETS, "10.0.0.7"),
    ("10.1.2.3", ["' OR 1=1 --"], NETS, "10.1.2.3"),
    ("10.1.2.3", [""], NETS, "10.1.2.3"),
    # common spellings: ports, brackets, IPv4-mapped IPv6
    ("10.1.2.3", ["1.2.3.4:5678"], NETS, "1.2.3.4"),
    ("10.1.2.3", ["[2001:db8::1]:443"], NETS, "2001:db8::1"),
    ("::ffff:203.0.113.5", [], NETS, "203.0.113.5"),
    # a peer that is no IP address (a unix socket, a test client) logs as null
    ("testclient", ["1.2.3.4"], NETS, None),
    (None, ["1.2.3.4"], NETS, None),
])
def test_resolve(peer: str | None, xff: list[str], nets: Any, expected: str | None) -> None:
    assert resolve(peer, xff, nets) == expected


def test_settings_refuse_bad_proxies_and_the_old_hop_count() -> None:
    assert Settings(trusted_proxies="10.0.0.0/8, 2001:db8::/32 ,192.0.2.1").trusted_proxies
    with pytest.raises(ValidationError, match="not an IP address"):
        Settings(trusted_proxies="10.0.0.0/8, proxy.internal")
    with pytest.raises(ValidationError, match="TRUSTED_PROXIES"):
        Settings(rate_limit_trusted_proxies=1)  # the old count trusted whoever connected


# --- over real HTTP and through Lambda events ---------------------------------------------


def _login(client: Client, email: str, xff: str, marker: str) -> int:
    r = client.request("POST", "/auth/token", form={"username": email, "password": PASSWORD},
                       headers={"X-Forwarded-For": xff, "X-Request-ID": marker})
    return r.status_code


def test_spoofed_forwarded_for_changes_nothing_from_an_untrusted_peer(
    own_limits: None, http_client: HttpClient, capsys: pytest.CaptureFixture[str]
) -> None:
    user = register(http_client, "customer")
    saved = set_env({"RATE_LIMIT_LOGIN_PER_IP": "2/60", "TRUSTED_PROXIES": ""})
    try:
        capsys.readouterr()
        statuses = [_login(http_client, user["email"], f"203.0.113.{i}", f"spoof-{i}") for i in range(3)]
        out = capsys.readouterr().out
    finally:
        restore_env(saved)
    assert statuses == [200, 200, 429]  # a new "client" per request still hits the peer's limit
    for i in range(3):
        assert _logged_ips(out, f"spoof-{i}") == ["127.0.0.1"]


def test_registration_limit_cannot_be_dodged_with_forwarded_for(
    own_limits: None, http_client: HttpClient
) -> None:
    saved = set_env({"RATE_LIMIT_REGISTER_PER_IP": "2/600"})
    try:
        statuses = []
        for i in range(3):
            r = http_client.request(
                "POST", "/users", headers={"X-Forwarded-For": f"198.51.100.{i}"},
                json_body={"email": unique_email(), "password": PASSWORD, "role": "customer"})
            statuses.append(r.status_code)
    finally:
        restore_env(saved)
    assert statuses == [201, 201, 429], statuses
    assert r.json()["details"]["limit"] == "register_per_ip"


def test_a_trusted_proxys_header_is_honoured(
    own_limits: None, http_client: HttpClient, capsys: pytest.CaptureFixture[str]
) -> None:
    user = register(http_client, "customer")
    saved = set_env({"RATE_LIMIT_LOGIN_PER_IP": "1/60", "TRUSTED_PROXIES": "127.0.0.1"})
    try:
        capsys.readouterr()
        first = _login(http_client, user["email"], "6.6.6.6, 203.0.113.10", "proxied-a")
        other = _login(http_client, user["email"], "203.0.113.11", "proxied-b")
        again = _login(http_client, user["email"], "203.0.113.10", "proxied-c")
        out = capsys.readouterr().out
    finally:
        restore_env(saved)
    assert (first, other, again) == (200, 200, 429)  # one limit per real client, not per proxy
    assert _logged_ips(out, "proxied-a") == ["203.0.113.10"]
    assert _logged_ips(out, "proxied-b") == ["203.0.113.11"]


@pytest.mark.parametrize("garbage", ["not-an-ip", "1.2.3.4\\r\\nX-Injected: 1", "${jndi:ldap://x}",
                                     "\"><img src=x>", "1.2.3.4.5", "x" * 500])
def test_garbage_in_the_header_never_reaches_the_logs(
    own_limits: None, http_client: HttpClient, capsys: pytest.CaptureFixture[str], garbage: str
) -> None:
    saved = set_env({"TRUSTED_PROXIES": "127.0.0.1"})
    marker = f"garbage-{uuid.uuid4().hex[:8]}"
    try:
        capsys.readouterr()
        r = http_client.request("GET", "/events", headers={"X-Forwarded-For": garbage, "X-Request-ID": marker})
        out = capsys.readouterr().out
    finally:
        restore_env(saved)
    assert r.status_code == 200
    assert _logged_ips(out, marker) == ["127.0.0.1"]  # the proxy: the last address known good
    assert garbage not in out


@pytest.mark.parametrize(("trusted", "expected"), [("", "198.51.100.9"),
                                                   ("198.51.100.0/24", "203.0.113.77")])
def test_lambda_peer_is_api_gateways_source_ip(
    trusted: str, expected: str, database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = f"lambda-{uuid.uuid4().hex[:8]}"
    event = build_lambda_event("GET", "/events", fmt="v2", source_ip="198.51.100.9",
                        headers={"x-forwarded-for": "203.0.113.77", "x-request-id": marker})
    saved = set_env({"TRUSTED_PROXIES": trusted})
    try:
        capsys.readouterr()
        assert invoke("events", event)["statusCode"] == 200
        out = capsys.readouterr().out
    finally:
        restore_env(saved)
    assert _logged_ips(out, marker) == [expected]


# --- limits count an IPv6 /64 as one client; zone ids and non-ASCII are no addresses ------


@pytest.mark.parametrize(("ip", "key"), [
    ("203.0.113.5", "203.0.113.5"),
    ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
    ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
    ("::ffff:203.0.113.5", "203.0.113.5"),
    ("fe80::1%eth0", "unknown"),
    (None, "unknown"),
])
def test_limit_key(ip: str | None, key: str) -> None:
    assert limit_key(ip) == key


@pytest.mark.parametrize("hop", [
    "fe80::1%eth0", "fe80::1%\u202eevil\" injected=1", "[fe80::1%25x]:443", "\uff11.2.3.4", "1.2.3.4" + " " * 80,
])
def test_resolve_refuses_zone_ids_non_ascii_and_overlong_hops(hop: str) -> None:
    assert resolve("10.1.2.3", [hop], NETS) == "10.1.2.3"
    assert resolve(hop, [], ()) is None


def test_25_registrations_from_one_ipv6_64_are_limited_like_one_address(own_limits: None) -> None:
    saved = set_env({"RATE_LIMIT_REGISTER_PER_IP": "3/600"})
    try:
        statuses = []
        for n in range(1, 26):
            body = json.dumps({"email": unique_email(), "password": PASSWORD, "role": "customer"})
            event = build_lambda_event("POST", "/users", headers={"content-type": "application/json"}, body=body,
                                source_ip=f"2001:db8:5:6:{n:x}::{n * 7:x}")
            statuses.append(invoke("users", event)["statusCode"])
    finally:
        restore_env(saved)
    assert statuses == [201] * 3 + [429] * 22, statuses


@pytest.mark.parametrize("zone", ["\u202eevil\" injected=1", "evil\" injected=1"])
def test_a_zone_id_in_the_header_never_reaches_the_logs(
    own_limits: None, http_client: HttpClient, capsys: pytest.CaptureFixture[str], zone: str
) -> None:
    saved = set_env({"TRUSTED_PROXIES": "127.0.0.1"})
    marker = f"zone-{uuid.uuid4().hex[:8]}"
    try:
        capsys.readouterr()
        r = http_client.request("GET", "/events", headers={
            "X-Forwarded-For": f"fe80::1%{zone}".encode(), "X-Request-ID": marker})
        out = capsys.readouterr().out
    finally:
        restore_env(saved)
    assert r.status_code == 200
    assert _logged_ips(out, marker) == ["127.0.0.1"]
    assert "evil" not in out and "injected" not in out
