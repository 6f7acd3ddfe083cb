"""The crowd the rush books as: many customers, each with its own token and address.

A rush comes from many customers at many addresses through a load balancer, and the
default rate limits (per customer, per address) refuse anything else. So each customer is
registered and logged in through the API from its own ``X-Forwarded-For`` address (the
server trusts the loopback as its load balancer), a few at a time, retrying 503 ``busy``
(the password-hashing slots) with backoff; and every booking goes out as the next
customer in turn, by wrk (bench/wrk_booking.py) or, without wrk, bench/loadgen.py. The
turn carries over from run to run, so each customer's limit is drawn evenly, and
:func:`crowd_size` makes the crowd large enough that the limits never refuse.
"""

from __future__ import annotations

import itertools
import math
import os
import secrets
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import loadgen, wrk_booking

PASSWORD = "bench-pass-1"
ORGANIZER_ADDRESS = "172.16.0.1"
SETUP_THREADS = 6  # below the hashing slots (2 running + 16 queued): few 503 busy to retry
SETUP_ATTEMPTS = 12


@dataclass(frozen=True)
class Customer:
    id: int
    token: str
    address: str


def customer_address(index: int) -> str:
    """Customer ``index``'s own IPv4 address (10.0.0.1 up): its per-address limit is its own."""
    n = index + 1
    return f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def call(api: httpx.Client, method: str, path: str, address: str, **kwargs: Any) -> httpx.Response:
    """One setup request from ``address`` (X-Forwarded-For), retried with backoff on 503 ``busy``
    (the hashing slots are full) and 429; a bounded number of times, then it raises."""
    headers = {**kwargs.pop("headers", {}), "X-Forwarded-For": address}
    delay = 0.05
    for _ in range(SETUP_ATTEMPTS):
        r = api.request(method, path, headers=headers, **kwargs)
        if r.status_code not in (429, 503):
            r.raise_for_status()
            return r
        retry_after = r.headers.get("Retry-After", "")
        time.sleep(min(float(retry_after), 5.0) if retry_after.isdigit() and r.status_code == 429 else delay)
        delay = min(delay * 2, 2.0)
    r.raise_for_status()
    raise RuntimeError(f"{method} {path} answered {r.status_code} after {SETUP_ATTEMPTS} attempts")


def register(api: httpx.Client, role: str, email: str, address: str) -> tuple[int, str]:
    """Register and log in (both rate limited per address, login per account too): id and token."""
    r = call(api, "POST", "/users", address, json={"email": email, "password": PASSWORD, "role": role})
    t = call(api, "POST", "/auth/token", address, data={"username": email, "password": PASSWORD})
    return int(r.json()["id"]), str(t.json()["access_token"])


def create_customers(base_url: str, first: int, count: int) -> list[Customer]:
    """Customers ``first``..``first + count - 1``, each from its own address, a few at a time."""
    stamp = f"{os.getpid()}-{time.time_ns()}"

    def one(index: int) -> Customer:
        address = customer_address(index)
        user_id, token = register(api, "customer", f"bench-customer-{index}-{stamp}@bench.test", address)
        return Customer(user_id, token, address)

    with httpx.Client(base_url=base_url, timeout=30,
                      limits=httpx.Limits(max_connections=SETUP_THREADS)) as api, \
            ThreadPoolExecutor(SETUP_THREADS) as pool:
        return list(pool.map(one, range(first, first + count)))


def organizer_token(base_url: str) -> str:
    with httpx.Client(base_url=base_url, timeout=30) as api:
        return register(api, "organizer", f"bench-organizer-{os.getpid()}-{time.time_ns()}@bench.test",
                        ORGANIZER_ADDRESS)[1]


def create_events(api: httpx.Client, token: str, count: int, tickets: int, title: str,
                  per_customer: int | None = None) -> list[int]:
    ids = []
    for i in range(count):
        body: dict[str, Any] = {"title": f"{title} {i}", "total_tickets": tickets}
        if per_customer is not None:
            body["max_tickets_per_customer"] = per_customer
        r = call(api, "POST", "/events", ORGANIZER_ADDRESS, json=body, headers={"Authorization": f"Bearer {token}"})
        ids.append(int(r.json()["id"]))
    return ids


def contiguous_ids(ids: list[int]) -> tuple[int, int]:
    """The longest run of consecutive user ids (pgbench picks customers with random(lo, hi))."""
    ordered = sorted(ids)
    best = (ordered[0], ordered[0])
    lo = ordered[0]
    for prev, cur in itertools.pairwise(ordered):
        if cur != prev + 1:
            lo = cur
        if cur - lo > best[1] - best[0]:
            best = (lo, cur)
    return best


def _rule(spec: str) -> tuple[int, int]:
    count, period = spec.split("/")
    return int(count), int(period)


def crowd_size(rate: float, seconds: float, per_customer: str) -> int:
    """Customers enough that ``rate`` bookings/s for ``seconds`` stay within a "COUNT/PERIOD" limit.

    The limit is GCRA (shared/web/ratelimit.py): a burst of COUNT, then COUNT per PERIOD; a
    customer's turn comes round evenly (the generator rotates), so each may take
    COUNT + seconds x COUNT / PERIOD.
    """
    count, period = _rule(per_customer)
    return max(1, math.ceil(rate * seconds / (count + seconds * count / period)))




@dataclass
class Load:
    """What a generator saw in one scenario, the same shape from wrk and from bench/loadgen.py."""

    generator: str
    connections: int
    elapsed_s: float
    statuses: Counter[int]
    codes: Counter[str]
    ids_distinct: bool
    unanswered: int = 0
    types: Counter[int] = field(default_factory=Counter)  # successes by the ticket type the answer names
    latency_ms: dict[str, float | None] = field(default_factory=dict)  # p50, p99, max
    transport_errors: dict[str, int] = field(default_factory=dict)
    loadgen_cpu_s: list[float] = field(default_factory=list)

    @property
    def successes(self) -> int:
        return sum(n for s, n in self.statuses.items() if 200 <= s < 300)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def from_wrk(r: wrk_booking.WrkResult) -> Load:
    return Load("wrk", r.connections, r.duration_s, r.statuses, r.codes,
                ids_distinct=r.duplicate_ids == 0 and r.distinct_ids == r.successes, unanswered=r.unanswered,
                types=r.types,
                latency_ms={"p50": _ms(r.p50_ms), "p99": _ms(r.p99_ms), "max": _ms(r.max_ms)},
                transport_errors=dict(r.socket_errors))


def from_loadgen(r: loadgen.Result, *, sellout: bool = False) -> Load:
    # A sell-out ends at its last booking; a timed run when its last answer arrived.
    elapsed = r.last_success_at - r.started_at if sellout and r.successes else r.wall_s
    errors = {k: v for k, v in (("connection", r.conn_errors), ("timeout", r.timeouts)) if v}
    return Load("python", r.connections, elapsed, r.statuses, r.codes,
                ids_distinct=len(set(r.booking_ids)) == len(r.booking_ids) == r.successes, types=r.types,
                latency_ms={"p50": _ms(loadgen.percentile(r.latencies_ms, 50)),
                            "p99": _ms(loadgen.percentile(r.latencies_ms, 99)),
                            "max": _ms(max(r.latencies_ms) if r.latencies_ms else None)},
                transport_errors=errors, loadgen_cpu_s=list(r.cpu_s))


class Crowd:
    """Posts bookings as the crowd's customers in turn, with one generator; the turn carries
    over from run to run, so every customer's rate-limit budget is drawn evenly."""

    def __init__(self, customers: list[Customer], generator: str, out_dir: Path, procs: int) -> None:
        self.customers, self.generator, self.procs = customers, generator, procs
        self.fixtures = out_dir / f"crowd-{os.getpid()}.txt"  # tokens: deleted after the run
        self.fixtures.write_text("".join(f"{c.token} {c.address}\n" for c in customers))
        self.turn = 0

    def book(self, port: int, event_ids: list[int], *, connections: int, duration: float,
             key_prefix: str | None = None, ticket_types: list[tuple[int, int]] | None = None) -> Load:
        """``key_prefix``: every request carries a unique ``Idempotency-Key`` starting with it.
        ``ticket_types``: (type id, weight): one ticket of a type drawn per request, by weight."""
        prefix = key_prefix
        if self.generator == "wrk":
            r = wrk_booking.run(port, self.fixtures, event_ids, connections=connections, duration=duration,
                                key_prefix=prefix, start=self.turn, ticket_types=ticket_types)
            self.turn = r.turn_end
            return from_wrk(r)
        spec = loadgen.Spec(host="127.0.0.1", port=port, method="POST", path="/bookings",
                            tokens=tuple(c.token for c in self.customers),
                            forwarded_for=tuple(c.address for c in self.customers),
                            event_ids=tuple(event_ids), idempotency_prefix=prefix,
                            ticket_types=tuple(ticket_types or ()))
        return from_loadgen(loadgen.run(spec, connections=connections, duration=duration, procs=self.procs))

    def close(self) -> None:
        self.fixtures.unlink(missing_ok=True)


def key_prefix() -> str:
    """A prefix of Idempotency-Keys no other run uses."""
    return f"bench-{secrets.token_hex(6)}-"


def sellout_load(customers: list[Customer], port: int, event: int, *, connections: int, timeout: float,
                 procs: int) -> Load:
    """The sell-out always runs on bench/loadgen.py: each connection stops at its first
    ``sold_out`` and its answers are all awaited, so the rush ends exactly (wrk only stops at a deadline)."""
    spec = loadgen.Spec(host="127.0.0.1", port=port, method="POST", path="/bookings",
                        tokens=tuple(c.token for c in customers), forwarded_for=tuple(c.address for c in customers),
                        event_ids=(event,), stop_codes=("sold_out",))
    result = loadgen.run(spec, connections=connections, duration=timeout, procs=procs)
    return from_loadgen(result, sellout=True)
