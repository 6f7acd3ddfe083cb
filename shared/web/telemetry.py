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

import logging
import re
import time
import uuid
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
    """Correlation id, request log line, request metrics."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        aws = _aws_ids(scope)
        request_id = (
            _incoming_id(scope)
            or aws.get("apigw_request_id")
            or aws.get("aws_request_id")
            or uuid.uuid4().hex
        )
        header_value = request_id.encode("latin-1")
        token = set_context(request_id=request_id, **aws)
        emf_token = metrics.start_emf_batch() if metrics.emf_enabled() else None
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != HEADER]
                headers.append((HEADER, header_value))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._finish(scope, status, time.perf_counter() - started, request_id, emf_token)
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
