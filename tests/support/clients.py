"""One request API over three transports: Lambda v2 events, Lambda v1 events, real HTTP.

Flow tests take a ``client`` fixture parametrised over all three, so the same assertions
hold whether a request reaches the code through API Gateway or through the local router.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlencode

import httpx

from local.embedded import free_port
from local.lambda_events import PayloadFormat, build_lambda_event, encode_query, function_for, invoke


@dataclass
class Response:
    status_code: int
    headers: dict[str, str]
    text: str
    raw: dict[str, Any] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.text)


class Client(Protocol):
    name: str

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        form: dict[str, str] | None = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        token: str | None = None,
    ) -> Response: ...


def _encode(
    json_body: Any, form: dict[str, str] | None, content: bytes | None, headers: dict[str, str]
) -> bytes | None:
    if json_body is not None:
        headers.setdefault("content-type", "application/json")
        return json.dumps(json_body).encode()
    if form is not None:
        headers.setdefault("content-type", "application/x-www-form-urlencoded")
        return urlencode(form).encode()
    return content


class LambdaClient:
    """Invokes the function handler that API Gateway would route the request to."""

    def __init__(self, fmt: PayloadFormat) -> None:
        self.fmt = fmt
        self.name = f"lambda-{fmt}"

    def request(
        self, method, path, *, json_body=None, form=None, content=None, headers=None, params=None, token=None
    ) -> Response:  # type: ignore[no-untyped-def]
        hdrs = {k.lower(): v for k, v in (headers or {}).items()}
        if token:
            hdrs["authorization"] = f"Bearer {token}"
        body = _encode(json_body, form, content, hdrs)
        function = function_for(method, path)
        if function is None:
            # API Gateway answers unknown routes itself.
            return Response(404, {}, json.dumps({"message": "Not Found"}))
        event = build_lambda_event(method, path, fmt=self.fmt, headers=hdrs, body=body, query=encode_query(params))
        result = invoke(function, event)
        text = result.get("body") or ""
        if result.get("isBase64Encoded"):
            text = base64.b64decode(text).decode()
        headers_out = {k.lower(): v for k, v in (result.get("headers") or {}).items()}
        for k, values in (result.get("multiValueHeaders") or {}).items():
            headers_out[k.lower()] = values[-1]
        return Response(result["statusCode"], headers_out, text, result)


class HttpClient:
    """Real HTTP to a uvicorn server running an ASGI app in a background thread."""

    def __init__(self, app: Any, name: str = "http") -> None:
        import uvicorn

        self.name = name
        self.port = free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
            proxy_headers=False,  # as every deployment runs it: TRUSTED_PROXIES decides
            limit_concurrency=1000,
            backlog=2048,
            # Longer than any pause between two requests of a test: uvicorn closing an idle
            # connection (5 s by default) as a rush reuses it answers nothing ("Server disconnected").
            timeout_keep_alive=300,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        self.base_url = f"http://127.0.0.1:{self.port}"
        # Rush tests share this client among hundreds of threads: with httpx's defaults
        # (100 connections, 20 kept alive) it closes sockets other threads are about to
        # read ("Bad file descriptor"); room for every thread avoids that.
        self.http = httpx.Client(
            base_url=self.base_url,
            timeout=30,
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=1000),
        )

    def request(
        self, method, path, *, json_body=None, form=None, content=None, headers=None, params=None, token=None
    ) -> Response:  # type: ignore[no-untyped-def]
        hdrs = dict(headers or {})
        if token:
            hdrs["authorization"] = f"Bearer {token}"
        body = _encode(json_body, form, content, hdrs)
        r = self.http.request(
            method, path, content=body, headers=hdrs, params={k: v for k, v in (params or {}).items() if v is not None}
        )
        return Response(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.text)

    def close(self) -> None:
        self.http.close()
        self.server.should_exit = True
        self.thread.join(10)
