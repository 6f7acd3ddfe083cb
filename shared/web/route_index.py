"""Route dispatch by the path's first segment: a request walks only the routes that can match it.

FastAPI tries an app's routes in order, and an included router is walked twice (once to
find it, once inside it), each route costing a regex and some bookkeeping: ``POST
/bookings`` came after every users and events route, 40-47 us of matching per booking in
process (9 us through the index). The index groups the app's top-level routes by the
literal first segment of their paths (``/bookings/{id}`` -> ``bookings``), in their order,
and FastAPI's own dispatch (``APIRouter.app``, on a copy of the router) walks that group.

Answers stay those of the full walk: a route whose path starts with a literal segment can
match (fully, or by path alone for a 405, or after a slash redirect) only a path with that
segment, so the routes left out would not have answered. A route of unknown shape (a
mount, a host, a parameter in the first segment) belongs to every group; a path whose
segment no route names, and every non-HTTP scope, goes through the full walk. The router,
its routes and the OpenAPI document are untouched.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, APIRouter, iter_route_contexts
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

_ANY = None  # the group of routes that may match whatever the first segment


def first_segment(path: str) -> str | None:
    """``/bookings/{id}`` -> ``bookings``; None when the first segment is not a literal."""
    if not path.startswith("/"):
        return None
    segment = path[1:].split("/", 1)[0]
    return None if "{" in segment else segment


def _segments(route: BaseRoute) -> set[str | None]:
    """The first segments of every path ``route`` can match; None among them: any path."""
    found: set[str | None] = set()
    for context in iter_route_contexts([route]):
        inner = context.original_route
        path = context.path
        if not isinstance(inner, APIRoute | Route) or not isinstance(path, str):
            return {_ANY}  # a mount, a host, a websocket route...: may match anything
        found.add(first_segment(path))
    return found


class FirstSegmentDispatch:
    """Stands in for ``router.app``: a request whose first segment some route names is
    dispatched by a copy of the router holding only that segment's routes (and the routes
    that may match any path), in their order; any other request by the router itself."""

    def __init__(self, router: APIRouter) -> None:
        self.router = router
        self.full: Callable[[Scope, Receive, Send], Coroutine[Any, Any, None]] = router.app
        self._built_for = -1
        self._views: dict[str, APIRouter] = {}

    def _build(self) -> None:
        routes = self.router.routes
        segments = [_segments(route) for route in routes]
        names = {s for found in segments for s in found if s is not None}
        views: dict[str, APIRouter] = {}
        for name in names:
            view = copy.copy(self.router)  # FastAPI's own dispatch, over the group's routes only
            view.routes = [r for r, found in zip(routes, segments, strict=True) if name in found or _ANY in found]
            views[name] = view
        self._views = views
        self._built_for = len(routes)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Coroutine[Any, Any, None]:
        # Not async: the chosen coroutine is awaited by the caller, no frame of this layer.
        if scope["type"] != "http" or scope.get("root_path"):
            return self.full(scope, receive, send)
        if self._built_for != len(self.router.routes):  # built on first use, rebuilt on change
            self._build()
        path: str = scope["path"]
        end = path.find("/", 1)
        view = self._views.get(path[1:] if end < 0 else path[1:end])
        if view is None:
            return self.full(scope, receive, send)
        scope.setdefault("router", self.router)  # url_for still sees every route
        return view.app(scope, receive, send)


def _has_fallback_routes(router: APIRouter) -> bool:
    """FastAPI's low-priority routes (``router.frontend``): tried after every route, by paths
    the index does not know; an app with any keeps FastAPI's walk."""
    iterate = getattr(router, "_iter_low_priority_routes", None)
    return iterate is not None and any(True for _ in iterate())


def index_routes(app: FastAPI) -> None:
    """Dispatch ``app``'s requests through a :class:`FirstSegmentDispatch`.

    Only when the router's stack is its bare dispatch (no router-level middleware or body
    limit in between, which the index would skip) and it has no low-priority routes.
    """
    router = app.router
    if router.middleware_stack == router.app and not _has_fallback_routes(router):
        router.middleware_stack = FirstSegmentDispatch(router)
