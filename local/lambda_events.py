"""Build API Gateway events and find the function that serves a path, as AWS would.

Used by the tests (direct handler invocation), the invoke command and the emulating
router. Templates are real API Gateway payloads kept in ``tests/lambda_events/``.
"""

from __future__ import annotations

import base64
import copy
import importlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode

from starlette.routing import Match

EVENTS_DIR = Path(__file__).resolve().parent.parent / "tests" / "lambda_events"
HTTP_FUNCTIONS = ("users", "events", "booking")
EventFormat = Literal["v2", "v1"]


@cache
def _template(fmt: EventFormat) -> dict[str, Any]:
    return json.loads((EVENTS_DIR / f"apigw_{fmt}.json").read_text())


def build_event(
    method: str,
    path: str,
    *,
    fmt: EventFormat = "v2",
    headers: Mapping[str, str] | None = None,
    body: bytes | str | None = None,
    query: str = "",
    cookies: list[str] | None = None,
    source_ip: str = "127.0.0.1",
) -> dict[str, Any]:
    """An API Gateway event (HTTP API payload 2.0, or REST API v1) for one request."""
    method = method.upper()
    raw = body.encode() if isinstance(body, str) else (body or b"")
    try:
        text, is_b64 = raw.decode("utf-8"), False
    except UnicodeDecodeError:
        text, is_b64 = base64.b64encode(raw).decode(), True
    header_map = {k.lower(): v for k, v in (headers or {}).items()}
    if raw:
        header_map["content-length"] = str(len(raw))
    event = copy.deepcopy(_template(fmt))
    request_id = str(uuid.uuid4())
    if fmt == "v2":
        event["headers"] = {**event["headers"], **header_map}
        event.update(rawPath=path, rawQueryString=query, cookies=list(cookies or []))
        event["requestContext"]["http"].update(method=method, path=path, sourceIp=source_ip)
        event["requestContext"]["requestId"] = request_id
    else:
        merged = {**{k.lower(): v for k, v in event["headers"].items()}, **header_map}
        if cookies:
            merged["cookie"] = "; ".join(cookies)
        pairs = parse_qsl(query, keep_blank_values=True)
        event.update(
            path=path,
            httpMethod=method,
            headers=merged,
            multiValueHeaders={k: [v] for k, v in merged.items()},
            queryStringParameters=dict(pairs) or None,
            multiValueQueryStringParameters={k: [v for kk, v in pairs if kk == k] for k, _ in pairs} or None,
        )
        event["requestContext"].update(httpMethod=method, path=path, requestId=request_id)
        event["requestContext"]["identity"]["sourceIp"] = source_ip
    event["body"] = text if raw else None
    event["isBase64Encoded"] = is_b64
    return event


def encode_query(params: Mapping[str, Any] | None) -> str:
    return urlencode({k: v for k, v in (params or {}).items() if v is not None})


@dataclass
class LambdaContext:
    """The attributes of the Lambda context object that handlers and Mangum read."""

    function_name: str = "local"
    aws_request_id: str = ""
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:000000000000:function:local"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def function_for(method: str, path: str) -> str | None:
    """The HTTP function whose routes serve ``method path``, like API Gateway's routing."""
    scope = {"type": "http", "method": method.upper(), "path": path}
    for name in HTTP_FUNCTIONS:
        router = importlib.import_module(f"functions.{name}.routes").router
        if any(route.matches(scope)[0] == Match.FULL for route in router.routes):
            return name
    return None


def handler_of(function: str) -> Any:
    return importlib.import_module(f"functions.{function}.handler").handler


def invoke(function: str, event: dict[str, Any]) -> dict[str, Any]:
    """Call a function's Lambda handler in-process, as the Lambda runtime would."""
    context = LambdaContext(function_name=function, aws_request_id=str(uuid.uuid4()))
    return handler_of(function)(event, context)
