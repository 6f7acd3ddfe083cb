"""Per-request correlation id, one JSON log line and metrics, as a pure ASGI middleware.

Pure ASGI rather than ``BaseHTTPMiddleware``: it is on every request's hot path, and
it must not buffer bodies or move the endpoint into another task (that would lose the
context variables the log lines read).

The correlation id is, in order: a well-formed incoming ``X-Request-ID`` (so a caller's
id follows the request through), the API Gateway request id, the Lambda request id,
else a new one. It is bound for every log line of the request and returned in the
``X-Request-ID`` response header. Under Lambda both AWS ids are logged as well, so a
line can be joined with API Gateway access logs and the runtime's REPORT line.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import time
from collections.abc import Iterable
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from shared.platform import metrics
from shared.platform.logging import reset_context, set_context
from shared.web.client_ip import client_ip
from shared.web.http_middleware import HttpMiddleware

log = logging.getLogger(__name__)

HEADER = b"x-request-id"
# ASCII only: ``\w`` is Unicode otherwise, and the id is echoed in a header and logged.
_VALID_ID = re.compile(r"^[\w.:@/+=-]{1,128}$", re.ASCII)
# Probes and scrapes every few seconds: logged at DEBUG so they do not drown the rest.
_QUIET_ROUTES = frozenset({"/health/live", "/health/ready", "/metrics"})
UNMATCHED = "unmatched"
_JSON = (b"content-type", b"application/json")
_INTERNAL_ERROR = json.dumps(
    {"code": "internal_error", "message": "Internal error", "detail": "Internal error"}
).encode()


def _new_id_source() -> None:
    """A random 64-bit prefix per process (and per forked child) and a counter after it."""
    global _id_prefix, _id_counter
    _id_prefix = os.urandom(8).hex()
    _id_counter = itertools.count()


_id_prefix = ""
_id_counter = itertools.count()
_new_id_source()
os.register_at_fork(after_in_child=_new_id_source)  # a forked worker must not repeat its parent's ids


def new_request_id() -> str:
    """32 hex characters, unique across processes, not secret (the shape of a ``uuid4().hex``).

    A random per-process prefix and a counter: about 0.4 us, where ``uuid4`` took 5 us on
    this 2-core machine (an ``os.urandom`` system call on every request).
    Two processes collide only if their 64-bit random prefixes do. The ids are sequential
    within a process, so they must never serve as anything unguessable (they are not).
    """
    return f"{_id_prefix}{next(_id_counter):016x}"


def _with_id(headers: Iterable[tuple[bytes, bytes]] | None, value: bytes) -> list[tuple[bytes, bytes]]:
    """The response headers with ``X-Request-ID: value``, replacing any the app set.

    The usual list without the header gets it appended in place: no copy per response.
    """
    if type(headers) is list:
        for name, _ in headers:  # a loop, not any(): no generator per response
            if name.lower() == HEADER:
                break
        else:
            headers.append((HEADER, value))
            return headers
    rebuilt = [(k, v) for k, v in headers or () if k.lower() != HEADER]
    rebuilt.append((HEADER, value))
    return rebuilt


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers") or ():
        if name == HEADER:
            text = value.decode("latin-1").strip()
            return text if _VALID_ID.match(text) else None
    return None


def _aws_ids(scope: Scope) -> dict[str, str]:
    ids: dict[str, str] = {}
    event = scope.get("aws.event")
    if isinstance(event, dict):
        request_id = (event.get("requestContext") or {}).get("requestId")
        if request_id:
            ids["apigw_request_id"] = str(request_id)
    context = scope.get("aws.context")
    lambda_id = getattr(context, "aws_request_id", None)
    if lambda_id:
        ids["aws_request_id"] = str(lambda_id)
    return ids


def route_template(scope: Scope) -> str:
    """The matched route's path template (bounded label values), or ``unmatched``."""
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return str(path) if path else UNMATCHED


class RequestTelemetry(HttpMiddleware):
    """Correlation id, request log line, request metrics, and the last-line JSON 500.

    The catch-all lives here rather than in a layer of its own: both need to know whether
    the answer has started, and one layer is one frame less on every send of every request.
    It stays outermost, so even the 500 carries ``X-Request-ID`` and is logged and counted.
    Raising out of an ASGI app would make Mangum fail the whole Lambda invocation.
    """

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = _incoming_id(scope)
        # Only Mangum puts these in a scope: a uvicorn request skips the lookups.
        aws = _aws_ids(scope) if "aws.event" in scope or "aws.context" in scope else None
        if request_id is None and aws:
            request_id = aws.get("apigw_request_id") or aws.get("aws_request_id")
        if request_id is None:
            request_id = new_request_id()
        header_value = request_id.encode("latin-1")
        token = set_context(request_id=request_id, **aws) if aws else set_context(request_id=request_id)
        # EMF is for Lambda, where every request comes through Mangum: a server's request
        # reads no environment variable here.
        emf_token = metrics.start_emf_batch() if aws is not None and metrics.emf_enabled() else None
        status = 0  # 0: no answer started yet
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # In place, as Starlette's own middlewares edit a message's headers.
                message["headers"] = _with_id(message.get("headers"), header_value)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if status:
                raise  # the answer is under way: the server closes the connection
            await send_with_id({"type": "http.response.start", "status": 500, "headers": [_JSON]})
            await send_with_id({"type": "http.response.body", "body": _INTERNAL_ERROR})
        finally:
            self._finish(scope, status or 500, time.perf_counter() - started, request_id, emf_token)
            reset_context(token)

    @staticmethod
    def _finish(
        scope: Scope, status: int, seconds: float, request_id: str, emf_token: Any
    ) -> None:
        try:
            route = route_template(scope)
            method = scope.get("method", "")
            metrics.request_finished(method, route, status, seconds)
            if emf_token is not None:
                metrics.finish_emf_batch(emf_token, {"request_id": request_id})
            level = logging.DEBUG if route in _QUIET_ROUTES else logging.INFO
            if status >= 500:
                level = logging.ERROR
            if not log.isEnabledFor(level):  # a probe at INFO: build none of the line
                return
            log.log(
                level,
                "%s %s %d %.1fms", method, route, status, seconds * 1000,
                extra={
                    "method": method,
                    "route": route,
                    "path": scope.get("path", ""),
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                    "client_ip": client_ip(scope),  # an IP address or null, never a header value
                },
            )
        except Exception:  # telemetry must never turn a served request into a failure
            log.exception("request telemetry failed")
