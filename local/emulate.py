"""The local router in Lambda-emulation mode: every request goes through a function's handler.

The fast path (``local.app``) calls the FastAPI routers directly. This ASGI app instead
does what API Gateway (HTTP API, payload 2.0) and Lambda do in production: it builds a
v2 event from the HTTP request (cookies moved to ``cookies``, repeated headers joined by
commas, binary bodies base64-encoded), invokes the Mangum handler of the function that
owns the route, and turns the Lambda response back into HTTP (``cookies`` become
``Set-Cookie`` headers, base64 bodies are decoded, v1 ``multiValueHeaders`` are honoured).
Bugs that only show up behind Mangum (text/binary content types, header folding, cookies)
therefore show up locally too.

Serve it with ``uvicorn local.emulate:app`` or ``python -m local.stack --emulate-lambda``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from starlette.types import Receive, Scope, Send

from local.lambda_events import HTTP_FUNCTIONS, build_lambda_event, function_for, invoke, router_of

log = logging.getLogger(__name__)

# Served by the local app, never deployed behind API Gateway: docs and probes.
LOCAL_ONLY_PREFIXES = ("/docs", "/redoc", "/openapi.json", "/health")
# Lambda's synchronous invocation payload limit (request and response), in bytes.
LAMBDA_PAYLOAD_LIMIT = 6 * 1024 * 1024
# Hop-by-hop and framing headers that the emulator recomputes itself.
_DROP_RESPONSE_HEADERS = {"content-length", "transfer-encoding", "connection"}

_local = threading.local()


def _thread_loop() -> asyncio.AbstractEventLoop:
    """One event loop per invocation thread: Mangum runs the app with run_until_complete."""
    loop = getattr(_local, "loop", None)
    if loop is None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        _local.loop = loop
    return loop


def _invoke_in_thread(function: str, lambda_event: dict[str, Any]) -> dict[str, Any]:
    _thread_loop()
    return invoke(function, lambda_event)


def request_to_lambda_event(scope: Scope, body: bytes) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) Lambda event for one ASGI HTTP request."""
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for raw_name, raw_value in scope.get("headers", []):
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        if name == "cookie":
            cookies.extend(part.strip() for part in value.split(";") if part.strip())
            continue
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    client = scope.get("client") or ("127.0.0.1", 0)
    server = scope.get("server") or ("127.0.0.1", 80)
    headers.setdefault("host", f"{server[0]}:{server[1]}")
    headers["x-forwarded-proto"] = scope.get("scheme", "http")
    headers["x-forwarded-port"] = str(server[1])
    headers["x-forwarded-for"] = client[0]
    raw_path = scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else scope["path"]
    return build_lambda_event(
        scope["method"],
        path,
        fmt="v2",
        headers=headers,
        body=body,
        query=scope.get("query_string", b"").decode("latin-1"),
        cookies=cookies,
        source_ip=client[0],
    )


def response_from_lambda(result: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and body that API Gateway would send for a Lambda response."""
    body_text = result.get("body") or ""
    body = base64.b64decode(body_text) if result.get("isBase64Encoded") else body_text.encode()
    pairs: list[tuple[str, str]] = []
    multi = {k.lower(): v for k, v in (result.get("multiValueHeaders") or {}).items()}
    for name, value in (result.get("headers") or {}).items():
        if name.lower() not in multi:
            pairs.append((name.lower(), str(value)))
    for name, values in multi.items():
        pairs.extend((name, str(v)) for v in values)
    pairs.extend(("set-cookie", cookie) for cookie in result.get("cookies") or [])
    headers = [
        (k.encode("latin-1"), v.encode("latin-1"))
        for k, v in pairs
        if k not in _DROP_RESPONSE_HEADERS
    ]
    headers.append((b"content-length", str(len(body)).encode()))
    return int(result.get("statusCode", 200)), headers, body


async def _read_body(receive: Receive, limit: int = LAMBDA_PAYLOAD_LIMIT) -> bytes | None:
    """The request body, or None once it passes ``limit`` (API Gateway refuses those too)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _allow_across_functions(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``Allow`` naming the path's methods in every function, not only the one invoked.

    Each function app knows its own routes; a path shared by two functions would otherwise
    advertise half of its methods.
    """
    from shared.web.app import allow_header, allowed_methods

    scope = {"type": "http", "method": method, "path": path, "root_path": ""}
    methods: set[str] = set()
    for name in HTTP_FUNCTIONS:
        methods.update(allowed_methods(router_of(name).routes, scope))
    allow = allow_header(methods).encode()
    return [(k, v) for k, v in headers if k != b"allow"] + [(b"allow", allow)]


async def _send(
    send: Send, status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": list(headers)})
    await send({"type": "http.response.body", "body": body})


async def _gateway_error(send: Send, status: int, message: str) -> None:
    """API Gateway's own error shape (not the app's): what clients see in production."""
    body = json.dumps({"message": message}).encode()
    await _send(
        send,
        status,
        [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        body,
    )


class LambdaEmulator:
    """ASGI app: HTTP request -> API Gateway v2 event -> Mangum handler -> HTTP response."""

    def __init__(self, fallback: Any = None, max_workers: int = 16) -> None:
        self._fallback = fallback
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="lambda")

    @property
    def fallback(self) -> Any:
        if self._fallback is None:
            from local.app import app as local_app

            self._fallback = local_app
        return self._fallback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(LOCAL_ONLY_PREFIXES):
            await self.fallback(scope, receive, send)
            return
        # A path a function owns under other methods goes to it too: the app answers 405.
        function = function_for(scope["method"], scope["path"], any_method=True)
        if function is None:
            await _gateway_error(send, 404, "Not Found")
            return
        body = await _read_body(receive)
        if body is None:
            await _gateway_error(send, 413, "Request Entity Too Large")
            return
        lambda_event = request_to_lambda_event(scope, body)
        if len(json.dumps(lambda_event)) > LAMBDA_PAYLOAD_LIMIT:
            await _gateway_error(send, 413, "Request Entity Too Large")
            return
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._pool, _invoke_in_thread, function, lambda_event)
        except Exception:
            log.exception("function %s failed on %s %s", function, scope["method"], scope["path"])
            await _gateway_error(send, 502, "Internal Server Error")
            return
        if not isinstance(result, dict) or "statusCode" not in result:
            log.error("function %s returned a malformed response: %r", function, result)
            await _gateway_error(send, 502, "Internal Server Error")
            return
        if len(json.dumps(result)) > LAMBDA_PAYLOAD_LIMIT:
            log.error("function %s response exceeds Lambda's 6 MB payload limit", function)
            await _gateway_error(send, 502, "Internal Server Error")
            return
        status, headers, payload = response_from_lambda(result)
        if status == 405 or (scope["method"] == "OPTIONS" and status == 204):
            headers = _allow_across_functions(scope["method"], scope["path"], headers)
        await _send(send, status, headers, payload)


app = LambdaEmulator()
