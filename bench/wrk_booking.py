"""wrk posting bookings as a crowd of customers (bench/wrk_booking.lua), and what it counted.

``wrk -t1``: one thread, so the generator takes one core at most and leaves the rest to the
server it measures. The Lua script rotates customers (token + X-Forwarded-For address) per
request, adds a unique ``Idempotency-Key`` when asked, counts statuses and refusal codes and
distinct booking ids, and prints them with wrk's latency percentiles as one JSON line.
Given weighted ticket types, each request books one ticket of a type drawn per request
(``lines``), and the script counts successes by the type each answer names.

wrk stops at its deadline with requests still in flight: the server may commit those
bookings after wrk stopped listening. The script counts requests generated and answered,
so the rush checks ``2xx <= bookings rows <= 2xx + unanswered`` instead of equality.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench import loadgen

SCRIPT = Path(__file__).resolve().with_name("wrk_booking.lua")
MARK = "BENCH_JSON "
TIMEOUT = "30s"  # wrk's default (2 s) would count a slow answer at 1,024 connections as an error


def available() -> bool:
    return shutil.which("wrk") is not None


@dataclass
class WrkResult:
    connections: int
    duration_s: float
    statuses: Counter[int] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    types: Counter[int] = field(default_factory=Counter)  # successes by the answer's ticket_type_id
    sent: int = 0  # requests the script generated (a reconnect may regenerate one)
    answered: int = 0
    distinct_ids: int = 0
    duplicate_ids: int = 0
    turn_end: int = 0  # where the customer rotation stopped: the next run starts there
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    socket_errors: dict[str, int] = field(default_factory=dict)

    @property
    def successes(self) -> int:
        return sum(n for s, n in self.statuses.items() if 200 <= s < 300)

    @property
    def unanswered(self) -> int:
        return max(0, self.sent - self.answered)


def parse(stdout: str, connections: int) -> WrkResult:
    """The script's JSON line (``done()``) as a result; raises if wrk printed none."""
    line = next((x for x in stdout.splitlines() if x.startswith(MARK)), None)
    if line is None:
        raise RuntimeError(f"wrk printed no {MARK.strip()} line:\n{stdout[-2000:]}")
    data = json.loads(line[len(MARK):])
    lat = data.get("latency_us") or {}

    def ms(key: str) -> float | None:
        value = lat.get(key)
        return None if value is None or not data.get("answered") else round(float(value) / 1000, 2)

    return WrkResult(
        connections=connections,
        duration_s=float(data["duration_us"]) / 1e6,
        statuses=Counter({int(k): int(v) for k, v in data["statuses"].items()}),
        codes=Counter({str(k): int(v) for k, v in data["codes"].items()}),
        types=Counter({int(k): int(v) for k, v in (data.get("types") or {}).items()}),
        sent=int(data["sent"]), answered=int(data["answered"]),
        distinct_ids=int(data["distinct_ids"]), duplicate_ids=int(data["duplicate_ids"]),
        turn_end=int(data["turn_end"]),
        p50_ms=ms("p50"), p99_ms=ms("p99"), max_ms=ms("max"),
        socket_errors={k: int(v) for k, v in (data.get("socket_errors") or {}).items() if int(v)},
    )


def weights_arg(ticket_types: list[tuple[int, int]] | None) -> str:
    """The script's TYPES argument, "ID:WEIGHT,..." (the script repeats each type's body WEIGHT
    times), or "-" for the default type."""
    if not ticket_types:
        return "-"
    return ",".join(f"{type_id}:{weight}" for type_id, weight in loadgen.reduced_weights(ticket_types))


def run(
    port: int, fixtures: Path, event_ids: list[int], *, connections: int, duration: float,
    key_prefix: str | None = None, start: int = 0, ticket_types: list[tuple[int, int]] | None = None,
) -> WrkResult:
    """One wrk run posting bookings for ``duration`` seconds (whole seconds: wrk's unit).

    ``ticket_types``: (type id, weight) pairs: each request books one ticket of a type drawn
    in proportion to its weight; without them, ``quantity: 1`` of the default type.
    """
    seconds = max(1, round(duration))
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", f"--timeout={TIMEOUT}", "-s", str(SCRIPT),
           f"http://127.0.0.1:{port}", "--", str(fixtures), ",".join(map(str, event_ids)), key_prefix or "-",
           str(start), weights_arg(ticket_types)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 90, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return parse(proc.stdout, connections)
