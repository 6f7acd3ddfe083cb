"""Build API Gateway events and find the function that serves a path, as AWS would.

Used by the tests (direct handler invocation), the invoke command and the emulating
router. Templates are real API Gateway payloads kept in ``tests/lambda_events/``.
"Lambda event" here always means such a payload, never a ticketed event.
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

from fastapi import APIRouter
from starlette.routing import Match

LAMBDA_EVENTS_DIR = Path(__file__).resolve().parent.parent / "tests" / "lambda_events"
HTTP_FUNCTIONS = ("users", "events", "booking")
PayloadFormat = Literal["v2", "v1"]  # API Gateway payload format: HTTP API 2.0, REST API 1.0


@cache
def _template(fmt: PayloadFormat) -> dict[str, Any]:
    return json.loads((LAMBDA_EVENTS_DIR / f"apigw_{fmt}.json").read_text())


def build_lambda_event(
    method: str,
    path: str,
    *,
    fmt: PayloadFormat = "v2",
    headers: Mapping[str, str] | None = None,
    body: bytes | str | None = None,
    query: str = "",
    cookies: list[str] | None = None,
    source_ip: str = "127.0.0.1",
) -> dict[str, Any]:
    """An API Gateway Lambda event (HTTP API payload 2.0, or REST API v1) for one request."""
    method = method.upper()
    raw = body.encode() if isinstance(body, str) else (body or b"")
    try:
        text, is_b64 = raw.decode("utf-8"), False
    except UnicodeDecodeError:
        text, is_b64 = base64.b64encode(raw).decode(), True
    header_map = {k.lower(): v for k, v in (headers or {}).items()}
    if raw:
        header_map["content-length"] = str(len(raw))
    lambda_event = copy.deepcopy(_template(fmt))
    request_id = str(uuid.uuid4())
    if fmt == "v2":
        lambda_event["headers"] = {**lambda_event["headers"], **header_map}
        lambda_event.update(rawPath=path, rawQueryString=query, cookies=list(cookies or []))
        lambda_event["requestContext"]["http"].update(method=method, path=path, sourceIp=source_ip)
        lambda_event["requestContext"]["requestId"] = request_id
    else:
        merged = {**{k.lower(): v for k, v in lambda_event["headers"].items()}, **header_map}
        if cookies:
            merged["cookie"] = "; ".join(cookies)
        pairs = parse_qsl(query, keep_blank_values=True)
        lambda_event.update(
            path=path,
            httpMethod=method,
            headers=merged,
            multiValueHeaders={k: [v] for k, v in merged.items()},
            queryStringParameters=dict(pairs) or None,
            multiValueQueryStringParameters={k: [v for kk, v in pairs if kk == k] for k, _ in pairs} or None,
        )
        lambda_event["requestContext"].update(httpMethod=method, path=path, requestId=request_id)
        lambda_event["requestContext"]["identity"]["sourceIp"] = source_ip
    lambda_event["body"] = text if raw else None
    lambda_event["isBase64Encoded"] = is_b64
    return lambda_event


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


def router_of(function: str) -> APIRouter:
    """The routes of one HTTP function, as its app serves them."""
    router: APIRouter = importlib.import_module(f"functions.{function}.routes").router
    return router


def function_for(method: str, path: str, *, any_method: bool = False) -> str | None:
    """The HTTP function whose routes serve ``method path``, like API Gateway's routing.

    With ``any_method``, a path that a function owns only under other methods still goes
    to that function (a proxy integration does the same), so the app itself answers 405.
    """
    scope = {"type": "http", "method": method.upper(), "path": path}
    for wanted in (Match.FULL, Match.PARTIAL) if any_method else (Match.FULL,):
        for name in HTTP_FUNCTIONS:
            if any(route.matches(scope)[0] == wanted for route in router_of(name).routes):
                return name
    return None


def handler_of(function: str) -> Any:
    return importlib.import_module(f"functions.{function}.handler").handler


def invoke(function: str, lambda_event: dict[str, Any]) -> dict[str, Any]:
    """Call a function's Lambda handler in-process, as the Lambda runtime would."""
    context = LambdaContext(function_name=function, aws_request_id=str(uuid.uuid4()))
    return handler_of(function)(lambda_event, context)
