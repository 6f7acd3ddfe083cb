"""The FastAPI app factory every function and the local router use, with one error mapping."""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Iterable
from typing import Any

import psycopg
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import AppError
from shared.logging import configure_logging
from shared.request_telemetry import RequestTelemetry
from shared.schemas import ErrorOut
from shared.settings import require_safe_start

log = logging.getLogger("ticketing.web")

_HTTP_CODES = {
    400: "bad_request",
    401: "not_authenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}

# Documented on every route that can fail with these.
COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    415: {"model": ErrorOut, "description": "A JSON body sent as a form or text (`unsupported_media_type`)"},
    422: {"model": ErrorOut, "description": "Validation failed (`validation_error`)"},
    503: {"model": ErrorOut, "description": "Database unreachable (`database_unavailable`)"},
}


def error_response(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message, "detail": message}
    if details:
        body["details"] = details
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Never echo "input": it may hold a password.
    return [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in exc.errors()
    ]


async def _on_app_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return error_response(exc.status_code, exc.code, exc.message, exc.details, exc.headers)


def _sent_as_json(request: Request) -> bool:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return not media_type or media_type == "application/json" or media_type.endswith("+json")


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = _validation_errors(exc)
    if any(err["type"] == "json_invalid" for err in errors):
        return error_response(400, "invalid_json", "The request body is not valid JSON")
    if not _sent_as_json(request) and any(err["loc"] == ["body"] for err in errors):
        # e.g. `curl -d '{...}'` without -H: the body arrives as a form, not as JSON.
        return error_response(
            415, "unsupported_media_type", "Send the body as JSON with 'Content-Type: application/json'"
        )
    names = [".".join(str(p) for p in err["loc"][1:]) or "body" for err in errors]
    fields = ", ".join(dict.fromkeys(names))  # each field once, in order
    return error_response(
        422, "validation_error", f"Invalid request: {fields}", {"errors": errors}
    )


async def _on_http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, message, headers=dict(exc.headers or {}) or None)


async def _on_database_down(_: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable: %s", exc)
    return error_response(
        503, "database_unavailable", "The database is not reachable", headers={"Retry-After": "2"}
    )


async def _on_bad_value(_: Request, exc: Exception) -> JSONResponse:
    return error_response(422, "invalid_value", "A value is out of range or malformed")


class CatchAllErrors:
    """Last line: an unexpected exception becomes a JSON 500 instead of escaping to the runtime.

    Raising out of an ASGI app would make Mangum fail the whole Lambda invocation.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            body = json.dumps(
                {"code": "internal_error", "message": "Internal error", "detail": "Internal error"}
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})


def create_app(title: str, routers: Iterable[APIRouter], description: str = "") -> FastAPI:
    """Build an app from routers; the same routers serve a Lambda function or the local router."""
    configure_logging()
    require_safe_start()  # every app verifies tokens: no usable secret or policy, no start
    # No 307 to the slash-less path: an unknown path is a JSON 404 like everything else.
    # strict_content_type=False: a JSON body without a Content-Type header is read as JSON
    # (FastAPI's strict default guards cookie sessions against CSRF; tokens here are bearer).
    app = FastAPI(
        title=title, description=description, version="0.1.0", redirect_slashes=False, strict_content_type=False
    )
    for router in routers:
        app.include_router(router)
    app.add_exception_handler(AppError, _on_app_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(PoolTimeout, _on_database_down)
    app.add_exception_handler(psycopg.OperationalError, _on_database_down)
    app.add_exception_handler(psycopg.DataError, _on_bad_value)
    app.add_middleware(CatchAllErrors)
    # Outermost: even the JSON 500 above carries X-Request-ID and is logged and counted.
    app.add_middleware(RequestTelemetry)
    # Everything built so far (modules, routes, schemas, settings) lives as long as the
    # process: move it out of the garbage collector's scans. A full collection walking it
    # all was the long tail of a rush (p99 58-77 ms without, 30-33 ms with; see
    # docs/benchmarks.md).
    gc.freeze()
    return app
