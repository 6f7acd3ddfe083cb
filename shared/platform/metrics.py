"""The service's metrics: Prometheus in containers, CloudWatch EMF log lines in Lambda.

Call sites use the small functions below (``booking_made``, ``notification_sent``...),
never a backend directly. In a container they move prometheus-client collectors in
``REGISTRY``, served by ``GET /metrics`` (API) or ``serve_worker_metrics`` (worker).
In Lambda (``AWS_LAMBDA_FUNCTION_NAME`` set) a scrape is impossible, so the same figures
are printed as Embedded Metric Format JSON lines, which CloudWatch turns into metrics
with no extra network call. Figures recorded during a request are batched into the
request's one EMF line (see ``shared.web.telemetry``).

The outbox backlog and the age of its oldest unpublished row are read from PostgreSQL
at scrape time, so they are right whichever process wrote or published the rows.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.platform.settings import running_in_lambda

log = logging.getLogger(__name__)

NAMESPACE = "ticketing"
EMF_NAMESPACE = "Ticketing"

REGISTRY = CollectorRegistry(auto_describe=True)


def _counter(name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
    """A counter of this service: under ``NAMESPACE``, in ``REGISTRY``."""
    return Counter(name, documentation, labels, namespace=NAMESPACE, registry=REGISTRY)


HTTP_REQUESTS = _counter("http_requests", "HTTP requests by route template and status", ["method", "route", "status"])
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds", "Request latency by route template and status",
    ["method", "route", "status"], namespace=NAMESPACE, registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BOOKINGS = _counter("bookings", "Bookings made")
TICKETS_BOOKED = _counter("tickets_booked", "Tickets taken by bookings")
BOOKING_REFUSALS = _counter(
    "booking_refusals", "Bookings refused for lack of tickets (sold_out, insufficient_tickets)", ["reason"],
)
BOOKING_BATCH_SIZE = Histogram(
    "booking_batch_size", "Bookings coalesced into one transaction (long-running servers)",
    namespace=NAMESPACE, registry=REGISTRY, buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
IDEMPOTENT_REPLAYS = _counter("idempotent_replays", "Requests answered from a stored idempotent response")
RATE_LIMITED = _counter("rate_limited", "Requests refused with 429, by limit", ["limit"])
NOTIFICATIONS_SENT = _counter("notifications_sent", "Notifications delivered", ["task"])
NOTIFICATIONS_SKIPPED = _counter(
    "notifications_skipped", "Notifications not sent because the address is not verified", ["task"],
)
NOTIFICATIONS_RETRIED = _counter(
    "notifications_retried", "Notification attempts that failed and will be retried", ["task"],
)
NOTIFICATIONS_DEAD = _counter("notifications_dead_lettered", "Notifications given up after their last retry", ["task"])

# The error codes counted as booking refusals: the ticketing rules name them
# (count_booking_refusals); this layer cannot import them.
_refusal_codes: set[str] = set()

# -- Embedded Metric Format (Lambda) ------------------------------------------------------

# Figures recorded during a request, flushed as one EMF line when it ends.
_emf_batch: contextvars.ContextVar[list[tuple[str, float, str, dict[str, str]]] | None] = (
    contextvars.ContextVar("emf_batch", default=None)
)


def emf_enabled() -> bool:
    return running_in_lambda()


def emf_document(
    figures: list[tuple[str, float, str, dict[str, str]]], properties: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One EMF object: a directive per dimension set, values as top-level members."""
    function = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "local")
    doc: dict[str, Any] = {**(properties or {}), "Function": function}
    directives: dict[tuple[str, ...], dict[str, Any]] = {}
    for name, value, unit, dims in figures:
        all_dims = {"Function": function, **dims}
        doc.update(all_dims)
        key = tuple(sorted(all_dims))
        directive = directives.setdefault(
            key, {"Namespace": EMF_NAMESPACE, "Dimensions": [list(key)], "Metrics": []}
        )
        if not any(m["Name"] == name for m in directive["Metrics"]):
            directive["Metrics"].append({"Name": name, "Unit": unit})
        previous = doc.get(name)
        if previous is None:
            doc[name] = value
        elif isinstance(previous, list):
            previous.append(value)
        else:
            doc[name] = [previous, value]
    doc["_aws"] = {"Timestamp": int(time.time() * 1000), "CloudWatchMetrics": list(directives.values())}
    return doc


def write_emf(
    figures: list[tuple[str, float, str, dict[str, str]]], properties: dict[str, Any] | None = None
) -> None:
    """Print one EMF line on stdout (the Lambda runtime ships it to CloudWatch Logs)."""
    if figures:
        sys.stdout.write(json.dumps(emf_document(figures, properties), default=str) + "\n")
        sys.stdout.flush()


def start_emf_batch() -> contextvars.Token[Any]:
    return _emf_batch.set([])


def finish_emf_batch(
    token: contextvars.Token[Any], properties: dict[str, Any] | None = None
) -> None:
    figures = _emf_batch.get() or []
    _emf_batch.reset(token)
    write_emf(figures, properties)


def _emf(name: str, value: float, unit: str = "Count", **dims: str) -> None:
    batch = _emf_batch.get()
    if batch is None:
        write_emf([(name, value, unit, dims)])
    else:
        batch.append((name, value, unit, dims))


# -- What call sites use -------------------------------------------------------------------


def _count(counter: Counter, emf_name: str, amount: int = 1, **label: str) -> None:
    """One count: an EMF record under Lambda, else the Prometheus counter (``label``: its one
    label, named as the EMF dimension)."""
    if emf_enabled():
        _emf(emf_name, amount, **label)
        return
    (counter.labels(*label.values()) if label else counter).inc(amount)


# The labelled children of the request metrics, looked up once per (method, route, status):
# ``labels()`` takes a lock and builds a key on every call, and this runs on every request.
# Routes are templates and statuses few, so the cache is as bounded as the label sets.
_request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def request_finished(method: str, route: str, status: int, seconds: float) -> None:
    if emf_enabled():
        dims = {"Route": f"{method} {route}", "Status": str(status)}
        _emf("Requests", 1, "Count", **dims)
        _emf("Latency", seconds * 1000, "Milliseconds", **dims)
        return
    children = _request_children.get((method, route, status))
    if children is None:
        labels = (method, route, str(status))
        children = _request_children[(method, route, status)] = (
            HTTP_REQUESTS.labels(*labels), HTTP_LATENCY.labels(*labels)
        )
    children[0].inc()
    children[1].observe(seconds)


def booking_made(quantity: int) -> None:
    if emf_enabled():
        _emf("Bookings", 1)
        _emf("TicketsBooked", quantity)
        return
    BOOKINGS.inc()
    TICKETS_BOOKED.inc(quantity)


def booking_batch(size: int) -> None:
    """Coalescing runs only in long-running servers, so Prometheus only."""
    BOOKING_BATCH_SIZE.observe(size)


def count_booking_refusals(codes: Iterable[str]) -> None:
    """Count bookings refused with these error codes (the tickets-left rule's, declared by
    ``shared.ticketing.coalescing``), each present at 0 before its first refusal."""
    for code in codes:
        _refusal_codes.add(code)
        BOOKING_REFUSALS.labels(code)


def booking_refused(reason: str) -> None:
    """``reason`` is the error code, one of those given to :func:`count_booking_refusals`."""
    _count(BOOKING_REFUSALS, "BookingRefusals", Reason=reason)


@contextmanager
def counting_refusals() -> Iterator[None]:
    """Count a refusal for lack of tickets raised inside the block (a code declared by
    :func:`count_booking_refusals`); other errors pass uncounted."""
    from shared.platform.errors import AppError

    try:
        yield
    except AppError as exc:
        if exc.code in _refusal_codes:
            booking_refused(exc.code)
        raise


@contextmanager
def counting_booking(quantity: int) -> Iterator[None]:
    """Count the booking made inside the block, or its refusal for lack of tickets."""
    with counting_refusals():
        yield
    booking_made(quantity)


def idempotent_replay() -> None:
    _count(IDEMPOTENT_REPLAYS, "IdempotentReplays")


def rate_limited(limit: str) -> None:
    _count(RATE_LIMITED, "RateLimited", Limit=limit)


def label_notification(task: str) -> None:
    """Show a notification's counters at 0 before it is first sent (the worker, per task)."""
    for counter in (NOTIFICATIONS_SENT, NOTIFICATIONS_RETRIED, NOTIFICATIONS_DEAD):
        counter.labels(task)


def notification_sent(task: str, count: int = 1) -> None:
    _count(NOTIFICATIONS_SENT, "NotificationsSent", count, Task=task)


def notification_skipped(task: str, count: int = 1) -> None:
    _count(NOTIFICATIONS_SKIPPED, "NotificationsSkipped", count, Task=task)


def notification_retried(task: str) -> None:
    _count(NOTIFICATIONS_RETRIED, "NotificationsRetried", Task=task)


def notification_dead_lettered(task: str) -> None:
    _count(NOTIFICATIONS_DEAD, "NotificationsDeadLettered", Task=task)


# -- Scrape-time figures from PostgreSQL ----------------------------------------------------

OUTBOX_SQL = """
SELECT count(*) AS backlog,
       coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_age
  FROM outbox WHERE published_at IS NULL
"""


class OutboxCollector(Collector):
    """Outbox backlog and oldest unpublished age, read when Prometheus scrapes."""

    def describe(self) -> Iterator[Metric]:
        return iter(())  # values come from the database at collect time only

    def collect(self) -> Iterator[Metric]:
        from shared.platform.db import connection

        up = GaugeMetricFamily(
            f"{NAMESPACE}_outbox_scrape_ok", "1 if the outbox figures could be read"
        )
        try:
            with connection() as conn:
                row = conn.execute(OUTBOX_SQL).fetchone()
        except Exception as exc:  # a scrape must answer even with the database down
            log.warning("outbox metrics unavailable: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        assert row is not None
        up.add_metric([], 1)
        yield up
        yield GaugeMetricFamily(
            f"{NAMESPACE}_outbox_backlog", "Outbox rows not yet published", value=row["backlog"]
        )
        yield GaugeMetricFamily(
            f"{NAMESPACE}_outbox_oldest_unpublished_age_seconds",
            "Age of the oldest unpublished outbox row (0 when none)",
            value=row["oldest_age"],
        )


def enable_outbox_metrics() -> None:
    """Register the database-backed collector (the API does; the worker need not)."""
    global _outbox_registered
    if not _outbox_registered:
        REGISTRY.register(OutboxCollector())
        _outbox_registered = True


_outbox_registered = False


def exposition() -> bytes:
    """The Prometheus text exposition of this process (multiprocess-aware)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry) + (
            generate_latest(_db_only_registry()) if _outbox_registered else b""
        )
    return generate_latest(REGISTRY)


def _db_only_registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OutboxCollector())
    return registry


def serve_worker_metrics(port: int, addr: str = "127.0.0.1") -> WSGIServer:
    """Serve /metrics for the worker on ``addr:port`` (once, in the worker's main process).

    Unauthenticated, so loopback unless ``addr`` (WORKER_METRICS_ADDR) says otherwise.

    With Celery's prefork pool each child counts in its own memory: set
    ``PROMETHEUS_MULTIPROC_DIR`` (an empty directory) before start so the children's
    counters land in shared files that this server adds up.
    """
    from prometheus_client import start_http_server

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    server, _ = start_http_server(port, addr=addr, registry=registry)
    return server
