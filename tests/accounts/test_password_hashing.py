"""Password hashing cannot exhaust memory: bounded concurrency, bounded queue, 503 `busy`.

Each argon2id hash holds 64 MiB (the default cost). The burst test runs a real API
process (uvicorn serving ``local.app:app``) with the DEFAULT hashing cost, fires
registrations and logins at it all at once, samples its resident memory throughout, and
checks the documented bound: peak <= baseline + PASSWORD_HASH_CONCURRENCY x 64 MiB + margin.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest

from shared.accounts.password_hashing import HashSlots
from shared.platform.errors import ServiceUnavailable
from shared.web.ratelimit import limiter
from tests.support.api_process import api_process
from tests.support.clients import Client
from tests.support.factories import PASSWORD, unique_email
from tests.support.settings_env import restore_env, set_env

MIB = 1024 * 1024
HASH_MIB = 64  # PASSWORD_HASH_MEMORY_KIB's default, 65536 KiB
CONCURRENCY = 2  # PASSWORD_HASH_CONCURRENCY's default
# Allocator and interpreter noise around the hashes (thread stacks, buffers); far below
# the 64 MiB one more concurrent hash would add.
MARGIN_MIB = 48


# --- the slots themselves -----------------------------------------------------------------


def test_slots_bound_running_and_waiting_then_say_busy() -> None:
    slots = HashSlots(concurrency=1, queue=1, wait_seconds=1.0)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with slots.slot():
            holding.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(5)
    waited: list[float] = []

    def wait_for_turn() -> None:
        started = time.monotonic()
        with slots.slot():
            waited.append(time.monotonic() - started)

    waiter = threading.Thread(target=wait_for_turn)
    waiter.start()
    time.sleep(0.1)  # the waiter is queued now: the queue (1) is full
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as refused, slots.slot():
        pass
    assert time.monotonic() - started < 0.1  # beyond the queue: refused at once, no wait
    assert refused.value.code == "busy" and refused.value.headers["Retry-After"] == "1"
    release.set()
    holder.join(5)
    waiter.join(5)
    assert len(waited) == 1 and waited[0] < 1.0  # the queued one got the freed slot

    # A slot held past the wait: the waiter gives up after wait_seconds, not later.
    slots = HashSlots(concurrency=1, queue=4, wait_seconds=0.3)
    with slots.slot():
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable), slots.slot():
            pass
        assert 0.25 < time.monotonic() - started < 1.0
    with slots.slot():  # and everything was given back
        pass


# --- the registration rate limit ----------------------------------------------------------


def test_registrations_are_limited_per_ip(client: Client) -> None:
    saved = set_env({"RATE_LIMIT_REGISTER_PER_IP": "2/600",
                     "RATE_LIMIT_KEY_PREFIX": f"rl-reg-{uuid.uuid4().hex[:8]}"})
    limiter.reset()  # an earlier test's dead Redis must not leave the limiter failing open
    try:
        answers = [client.request("POST", "/users", json_body={
            "email": unique_email(), "password": PASSWORD, "role": "customer"}) for _ in range(3)]
    finally:
        restore_env(saved)
    assert [r.status_code for r in answers] == [201, 201, 429]
    refused = answers[2].json()
    assert refused["code"] == "rate_limited" and refused["details"]["limit"] == "register_per_ip"
    assert 1 <= int(answers[2].headers["retry-after"]) <= 600


# --- a burst against a real server with the default cost ----------------------------------


@pytest.fixture
def default_cost_server(database: str) -> Iterator[tuple[str, psutil.Process]]:
    """``uvicorn local.app:app`` with the production hashing defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PASSWORD_HASH_")}
    env["RATE_LIMIT_KEY_PREFIX"] = f"rl-burst-{uuid.uuid4().hex[:8]}"
    env["LOG_LEVEL"] = "WARNING"
    with api_process(env) as api:
        yield api.base_url, psutil.Process(api.pid)


class _Sampler(threading.Thread):
    """The server's resident memory every few milliseconds, and /health/live's latency."""

    def __init__(self, process: psutil.Process, base: str) -> None:
        super().__init__(daemon=True)
        self.process, self.base = process, base
        self.peak = 0
        self.live_worst = 0.0
        self.live_failures = 0
        self.stop = threading.Event()
        self.prober = threading.Thread(target=self._probe_liveness, daemon=True)

    def run(self) -> None:
        self.prober.start()
        while not self.stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def _probe_liveness(self) -> None:
        with httpx.Client(base_url=self.base, timeout=5) as http:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    ok = http.get("/health/live").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.live_worst = max(self.live_worst, time.monotonic() - started)
                self.live_failures += not ok
                time.sleep(0.05)


def test_a_burst_of_registrations_and_logins_stays_within_the_memory_bound(
    default_cost_server: tuple[str, psutil.Process],
) -> None:
    base, process = default_cost_server
    email = unique_email("burst")
    with httpx.Client(base_url=base, timeout=30) as http:  # warm up: one hash of each kind
        assert http.post("/users", json={"email": email, "password": PASSWORD,
                                         "role": "customer"}).status_code == 201
        assert http.post("/auth/token", data={"username": email, "password": PASSWORD}).status_code == 200
    time.sleep(0.2)
    baseline = process.memory_info().rss

    def one(i: int) -> httpx.Response:
        with httpx.Client(base_url=base, timeout=30) as http:
            if i % 2:
                return http.post("/auth/token", data={"username": email, "password": PASSWORD})
            return http.post("/users", json={"email": unique_email("burst"), "password": PASSWORD,
                                             "role": "customer"})

    sampler = _Sampler(process, base)
    sampler.start()
    try:
        with ThreadPoolExecutor(max_workers=40) as pool:
            answers = list(pool.map(one, range(40)))
        time.sleep(0.1)
    finally:
        sampler.stop.set()
        sampler.join(5)

    statuses = [r.status_code for r in answers]
    assert set(statuses) <= {200, 201, 503}, statuses  # never a 500
    for r in answers:
        if r.status_code == 503:
            assert r.json()["code"] == "busy" and int(r.headers["retry-after"]) >= 1
    assert statuses.count(200) + statuses.count(201) >= CONCURRENCY, statuses
    grown_mib = (sampler.peak - baseline) / MIB
    assert grown_mib <= CONCURRENCY * HASH_MIB + MARGIN_MIB, (
        f"peak {sampler.peak / MIB:.0f} MiB = baseline {baseline / MIB:.0f} MiB + {grown_mib:.0f} MiB")
    assert sampler.live_failures == 0 and sampler.live_worst < 1.0, sampler.live_worst
