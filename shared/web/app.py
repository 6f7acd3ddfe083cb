"""The FastAPI app factory every function and the local router use, with one error mapping."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Scope

from shared.platform.errors import AppError
from shared.platform.logging import configure_logging
from shared.platform.settings import get_settings, require_safe_start
from shared.web.body_limit import BodyLimit
from shared.web.error_docs import document_errors
from shared.web.route_index import index_routes
from shared.web.schemas import RULE_CODES
from shared.web.telemetry import RequestTelemetry

log = logging.getLogger(__name__)

_HTTP_CODES = {
    # The framework raises a 400 only when it cannot parse a body (bad encoding, a broken
    # form): the same code as a JSON syntax error, so clients branch on one.
    400: "invalid_json",
    401: "not_authenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}

INVALID_BODY_MESSAGE = "The request body is not valid JSON"


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
        return error_response(400, "invalid_json", INVALID_BODY_MESSAGE)
    if not _sent_as_json(request) and any(err["loc"] == ["body"] for err in errors):
        # e.g. `curl -d '{...}'` without -H: the body arrives as a form, not as JSON.
        return error_response(
            415, "unsupported_media_type", "Send the body as JSON with 'Content-Type: application/json'"
        )
    rules = {err["type"] for err in errors}
    if len(rules) == 1 and rules <= RULE_CODES:  # one cross-field rule, e.g. invalid_time_range
        return error_response(422, rules.pop(), errors[0]["msg"], {"errors": errors})
    names = [".".join(str(p) for p in err["loc"][1:]) or "body" for err in errors]
    fields = ", ".join(dict.fromkeys(names))  # each field once, in order
    return error_response(
        422, "validation_error", f"Invalid request: {fields}", {"errors": errors}
    )


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(routes: Iterable[BaseRoute], scope: Scope) -> list[str]:
    """Every method some route serves on this request's path.

    Starlette's 405 names only the methods of the first route that matched the path, and
    FastAPI has one route per method: ``/events`` advertised ``POST`` without ``GET``. Each
    method is asked of every route through ``matches``, the one interface routes of every
    kind (and FastAPI's lazily included routers) share.
    """
    routes = list(routes)
    probe = {"type": "http", "path": scope["path"], "root_path": scope.get("root_path", "")}
    return [
        method
        for method in _METHODS
        if any(route.matches({**probe, "method": method})[0] == Match.FULL for route in routes)
    ]


def allow_header(methods: Iterable[str]) -> str:
    """The ``Allow`` value: the methods in one fixed order, and OPTIONS, which every path answers."""
    served = set(methods)
    return ", ".join([*(m for m in _METHODS if m in served), "OPTIONS"])


def _method_not_allowed(request: Request, exc: StarletteHTTPException) -> Response:
    """405 and OPTIONS, both with ``Allow`` naming every method of the path across routers."""
    allow = allow_header(allowed_methods(request.app.router.routes, request.scope))
    if request.method == "OPTIONS":
        return Response(status_code=204, headers={"Allow": allow})
    message = f"{request.method} is not allowed here; allowed: {allow}"
    return error_response(405, "method_not_allowed", message, headers={**(exc.headers or {}), "Allow": allow})


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        return _method_not_allowed(request, exc)
    code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    if exc.status_code == 400:
        message = INVALID_BODY_MESSAGE
    else:
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, message, headers=dict(exc.headers or {}) or None)


async def _on_database_down(_: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable: %s", exc)
    return error_response(
        503, "database_unavailable", "The database is not reachable", headers={"Retry-After": "2"}
    )


async def _on_bad_value(_: Request, exc: Exception) -> JSONResponse:
    return error_response(422, "invalid_value", "A value is out of range or malformed")


async def _on_check_violation(request: Request, exc: Exception) -> JSONResponse:
    """A value the database's range checks refuse (``*_in_range``): the client's, so a 422.

    Input validation refuses such values first; this is the net under a path that forgot.
    Any other check failing is a bug and stays a 500.
    """
    assert isinstance(exc, psycopg.errors.CheckViolation)
    if not str(exc.diag.constraint_name or "").endswith("_in_range"):
        raise exc
    log.warning("database refused an out-of-range value: %s", exc.diag.constraint_name)
    return await _on_bad_value(request, exc)


def _body_too_slow() -> ASGIApp:
    return error_response(
        408, "request_timeout", "The request body did not arrive in time",
        {"timeout_seconds": get_settings().body_read_timeout_seconds},
    )


def _payload_too_large(limit: int) -> ASGIApp:
    return error_response(
        413, "payload_too_large", f"The request body is larger than {limit} bytes", {"limit": limit}
    )


def _documented_openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(generate())
        return app.openapi_schema

    return openapi


def _plain_router(router: APIRouter) -> bool:
    """Its routes can be the app's own: FastAPI's bookkeeping for an included router (about
    5 us per request, in process) buys nothing for them.

    An included route is served under settings of the app that includes it: of those
    ``create_app`` leaves at FastAPI's defaults but two, ``strict_content_type`` (bodies) and
    the app as the provider of ``dependency_overrides`` (dependencies). So a router of plain
    routes that read no body and depend on nothing, with no startup or shutdown hooks,
    answers and is documented the same either way (the probes, the scrape route); the tags,
    responses and operation ids are the route's own from its definition.
    """
    return not router.on_startup and not router.on_shutdown and all(
        type(route) is APIRoute and route.body_field is None and not route.dependant.dependencies
        for route in router.routes
    )


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
        if _plain_router(router):
            app.router.routes.extend(router.routes)  # the app's own routes, as in hello-world
        else:
            app.include_router(router)
    index_routes(app)  # a request walks only the routes of its first path segment
    app.openapi = _documented_openapi(app)  # type: ignore[method-assign]
    app.add_exception_handler(AppError, _on_app_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(PoolTimeout, _on_database_down)
    app.add_exception_handler(psycopg.OperationalError, _on_database_down)
    app.add_exception_handler(psycopg.DataError, _on_bad_value)
    app.add_exception_handler(psycopg.errors.CheckViolation, _on_check_violation)
    # Before anything reads a body: an oversized one is refused unparsed, with a logged 413.
    app.add_middleware(BodyLimit, too_large=_payload_too_large, too_slow=_body_too_slow)
    # Outermost: the id, the log line, the metrics, and the JSON 500 for an unexpected
    # exception (which then carries X-Request-ID and is logged and counted as well).
    app.add_middleware(RequestTelemetry)
    # Everything built so far (modules, routes, schemas, settings) lives as long as the
    # process: move it out of the garbage collector's scans. A full collection walking it
    # all was the long tail of a rush (p99 58-77 ms without, 30-33 ms with; see
    # docs/benchmarks.md).
    gc.freeze()
    return app
