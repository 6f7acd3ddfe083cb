"""An HTTP/1.1 keep-alive load generator: several processes, each an asyncio event loop.

One Python process tops out well below what a server on the same machine can answer, so
the connections are split over ``procs`` processes (uvloop when installed) that speak
HTTP/1.1 over raw asyncio streams: one request in flight per connection, latency measured
from write to the last body byte. All connections open first, then every process starts
at the same instant and stops issuing requests at the same deadline. Each process also
reports its own CPU time, so a reader can tell whether the generator was saturated.
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import random
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

CONNECT_TIMEOUT_S = 10.0
STRAGGLER_GRACE_S = 30.0


@dataclass(frozen=True)
class Spec:
    """What every connection sends.

    ``tokens`` are spread over connections (connection i uses token i mod n, or, with more
    tokens than connections, tokens i, i + c, i + 2c... in turn, so no customer books more
    than its share: the per-customer limit); ``event_ids`` are chosen at random per request.
    ``forwarded_for``: one ``X-Forwarded-For`` address per token (a customer's own address
    behind a trusted load balancer), sent with it. ``idempotency_prefix``: every request
    carries ``Idempotency-Key: <prefix><connection>-<n>``, unique in the run.
    ``ticket_types``: (type id, weight) pairs: each request books one ticket of a type drawn
    in proportion to its weight (``lines``); without them, ``quantity`` of the default type.
    ``stop_codes``: a connection stops after receiving
    an error with one of these codes (a sell-out rush ends when every client has seen
    ``sold_out``).
    """

    host: str
    port: int
    method: str
    path: str
    tokens: tuple[str, ...] = ()
    event_ids: tuple[int, ...] = ()
    quantity: int = 1
    stop_codes: tuple[str, ...] = ()
    forwarded_for: tuple[str, ...] = ()
    idempotency_prefix: str | None = None
    ticket_types: tuple[tuple[int, int], ...] = ()


@dataclass
class Result:
    """Merged outcome of all processes."""

    connections: int
    procs: int
    started_at: float
    deadline: float
    statuses: Counter[int] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    success_latencies_ms: list[float] = field(default_factory=list)
    booking_ids: list[int] = field(default_factory=list)
    types: Counter[int] = field(default_factory=Counter)  # successes by the answer's first line's type
    last_success_at: float = 0.0
    last_response_at: float = 0.0
    conn_errors: int = 0
    timeouts: int = 0
    cpu_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def successes(self) -> int:
        return sum(n for s, n in self.statuses.items() if 200 <= s < 300)

    @property
    def responses(self) -> int:
        return sum(self.statuses.values())


def _request_head(spec: Spec, token: str | None, address: str | None = None) -> bytes:
    head = f"{spec.method} {spec.path} HTTP/1.1\r\nHost: {spec.host}:{spec.port}\r\n"
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    if address:
        head += f"X-Forwarded-For: {address}\r\n"
    return head.encode()


def _request_tail(spec: Spec, event_id: int | None, ticket_type_id: int | None = None) -> bytes:
    if event_id is None:
        return b"\r\n"
    payload: dict[str, Any] = {"event_id": event_id, "quantity": spec.quantity}
    if ticket_type_id is not None:
        payload = {"event_id": event_id, "lines": [{"ticket_type_id": ticket_type_id, "quantity": 1}]}
    body = json.dumps(payload, separators=(",", ":")).encode()
    return f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def reduced_weights(ticket_types: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """(type id, weight) pairs with the weights divided by their common divisor: both generators
    repeat a type's request body that many times, so a uniform pick is a weighted one."""
    if any(weight < 1 for _, weight in ticket_types):
        raise ValueError(f"ticket type weights must be positive: {ticket_types}")
    divisor = math.gcd(*(w for _, w in ticket_types)) if ticket_types else 1
    return [(type_id, weight // divisor) for type_id, weight in ticket_types]


def _weighted(ticket_types: tuple[tuple[int, int], ...]) -> list[int | None]:
    """Each type id repeated its reduced weight; ``[None]`` (the default type) without types."""
    if not ticket_types:
        return [None]
    return [type_id for type_id, weight in reduced_weights(ticket_types) for _ in range(weight)]


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at < 0:
        raise ConnectionError("response without Content-Length")
    end = lower.find(b"\r\n", at + 2)
    length = int(lower[at + 17 : end].strip())
    body = await reader.readexactly(length) if length else b""
    if b"\r\nconnection: close" in lower:
        raise _Closing(status, body)
    return status, body


class _Closing(Exception):
    """The server answered and then closes the connection: count the answer, reconnect."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status, self.body = status, body


class _Connection:
    def __init__(self, spec: Spec, index: int, connections: int, out: dict[str, Any]) -> None:
        self.spec, self.out, self.index = spec, out, index
        # This connection's customers: indices into tokens (and their addresses), or no token.
        mine: list[int | None] = [None]
        if spec.tokens:
            mine = list(range(index, len(spec.tokens), connections)) or [index % len(spec.tokens)]
        addresses = spec.forwarded_for
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        # Pre-rendered parts: a head per token, a tail per event id (a few thousand at most).
        self.heads = [_request_head(spec, None if i is None else spec.tokens[i],
                                    addresses[i] if i is not None and addresses else None) for i in mine]
        ids = spec.event_ids or (None,)
        self.tails = [_request_tail(spec, e, t) for e in ids for t in _weighted(spec.ticket_types)]

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection(self.spec.host, self.spec.port), CONNECT_TIMEOUT_S
        )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _record(self, status: int, body: bytes, sent: float, now: float) -> bool:
        """Count one answer; True when this connection should stop."""
        out = self.out
        out["statuses"][status] += 1
        latency = (now - sent) * 1000
        out["latencies"].append(latency)
        out["last_response"] = now
        if 200 <= status < 300:
            out["success_latencies"].append(latency)
            out["last_success"] = now
            if body.startswith(b"{"):
                answer = json.loads(body)
                booking_id = answer.get("id")
                if isinstance(booking_id, int):
                    out["ids"].append(booking_id)
                lines = answer.get("lines")
                if lines and isinstance(lines, list):
                    out["types"][lines[0].get("ticket_type_id")] += 1
            return False
        try:
            code = str(json.loads(body).get("code", status))
        except (ValueError, AttributeError):
            code = str(status)
        out["codes"][code] += 1
        return code in self.spec.stop_codes

    async def run(self, start_at: float, deadline: float) -> None:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        heads, tails, pick = self.heads, self.tails, random.choice
        turn = 0
        while time.time() < deadline:
            head = heads[0] if len(heads) == 1 else heads[turn % len(heads)]
            turn += 1
            if self.spec.idempotency_prefix is not None:
                head += f"Idempotency-Key: {self.spec.idempotency_prefix}{self.index}-{turn}\r\n".encode()
            request = head + (tails[0] if len(tails) == 1 else pick(tails))
            sent = time.time()
            try:
                if self.writer is None:
                    await self.connect()
                assert self.writer is not None and self.reader is not None
                self.writer.write(request)
                status, body = await _read_response(self.reader)
            except _Closing as closing:
                self.close()
                if self._record(closing.status, closing.body, sent, time.time()):
                    return
                continue
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, TimeoutError):
                self.out["conn_errors"] += 1
                self.close()
                await asyncio.sleep(0.01)
                continue
            if self._record(status, body, sent, time.time()):
                return


async def _process_main(
    spec: Spec, indices: list[int], connections: int, ready: Any, go: Any, window: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "statuses": Counter(), "codes": Counter(), "types": Counter(), "latencies": [], "success_latencies": [],
        "ids": [],
        "last_success": 0.0, "last_response": 0.0, "conn_errors": 0, "timeouts": 0,
    }
    conns = [_Connection(spec, i, connections, out) for i in indices]
    await asyncio.gather(*(c.connect() for c in conns))
    ready.wait()  # blocks the loop on purpose: nothing runs until every process is connected
    go.wait()
    start_at, deadline = window[0], window[1]
    cpu0 = time.process_time()
    tasks = [asyncio.ensure_future(c.run(start_at, deadline)) for c in conns]
    _done, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.time()) + STRAGGLER_GRACE_S)
    for task in pending:
        task.cancel()
    out["timeouts"] = len(pending)
    out["cpu_s"] = time.process_time() - cpu0
    for c in conns:
        c.close()
    return out


def _child(
    spec: Spec, indices: list[int], connections: int, ready: Any, go: Any, window: Any, results: Any
) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        results.put(asyncio.run(_process_main(spec, indices, connections, ready, go, window)))
    except BaseException as exc:
        ready.abort()
        go.abort()
        results.put({"error": f"{type(exc).__name__}: {exc}"})


def run(spec: Spec, *, connections: int, duration: float, procs: int = 2) -> Result:
    """Drive ``connections`` keep-alive connections for ``duration`` seconds (or until stopped)."""
    procs = max(1, min(procs, connections))
    ctx = multiprocessing.get_context("spawn")
    ready, go = ctx.Barrier(procs + 1), ctx.Barrier(procs + 1)
    window = ctx.Array("d", 2)
    results = ctx.Queue()
    children = []
    for p in range(procs):
        indices = list(range(p, connections, procs))
        child = ctx.Process(
            target=_child, args=(spec, indices, connections, ready, go, window, results), daemon=True
        )
        child.start()
        children.append(child)
    try:
        ready.wait(timeout=60)
        start_at = time.time() + 0.05
        window[0], window[1] = start_at, start_at + duration
        go.wait(timeout=10)
    except Exception:
        parts = [results.get(timeout=5) for _ in children if not results.empty()]
        for child in children:
            child.kill()
        raise RuntimeError(f"load generator processes failed to start: {parts}") from None
    parts = [results.get(timeout=duration + STRAGGLER_GRACE_S + 60) for _ in children]
    for child in children:
        child.join(timeout=10)
    errors = [p["error"] for p in parts if "error" in p]
    if errors:
        raise RuntimeError(f"load generator failed: {errors}")
    merged = Result(connections=connections, procs=procs, started_at=start_at, deadline=start_at + duration)
    for part in parts:
        merged.statuses.update(part["statuses"])
        merged.codes.update(part["codes"])
        merged.types.update(part["types"])
        merged.latencies_ms.extend(part["latencies"])
        merged.success_latencies_ms.extend(part["success_latencies"])
        merged.booking_ids.extend(part["ids"])
        merged.last_success_at = max(merged.last_success_at, part["last_success"])
        merged.last_response_at = max(merged.last_response_at, part["last_response"])
        merged.conn_errors += part["conn_errors"]
        merged.timeouts += part["timeouts"]
        merged.cpu_s.append(part["cpu_s"])
    merged.wall_s = max(merged.last_response_at, start_at) - start_at
    return merged


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


_CANNED = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{"status":"ok"}'


class _CannedProtocol(asyncio.Protocol):
    """Answers every request with the same bytes: a server that costs next to nothing."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(_CANNED * data.count(b"\r\n\r\n"))


def _serve_canned(port: int, ready: Any) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_CannedProtocol, "127.0.0.1", port)
        ready.set()
        await server.serve_forever()

    asyncio.run(main())


@contextmanager
def canned_server() -> Iterator[int]:
    """A canned-response server process on a free port: what a generator reaches with no app behind."""
    from local.embedded import free_port

    ctx = multiprocessing.get_context("spawn")
    port, ready = free_port(), ctx.Event()
    server = ctx.Process(target=_serve_canned, args=(port, ready), daemon=True)
    server.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("the canned-response server did not start")
        yield port
    finally:
        server.kill()
        server.join(5)


def self_ceiling(*, connections: int, duration: float, procs: int) -> Result:
    """The generator alone: the same clients against a canned-response server process."""
    with canned_server() as port:
        return run(Spec(host="127.0.0.1", port=port, method="GET", path="/"), connections=connections,
                   duration=duration, procs=procs)
