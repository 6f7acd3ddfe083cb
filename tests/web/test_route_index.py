"""The first-segment route index (shared/web/route_index.py) answers as FastAPI's full walk does.

Two apps from the same routers, one dispatching through the index and one through FastAPI
alone, must give the same status, body and ``Allow`` for every request: the first match in
router order, 405s naming every method, 404s, parameters in the first segment, url_for
across groups.
"""

from __future__ import annotations

import json

import pytest
from fastapi import APIRouter, FastAPI, Request
from fastapi.testclient import TestClient

from shared.web.app import create_app
from shared.web.route_index import FirstSegmentDispatch, first_segment


def _routers() -> list[APIRouter]:
    a, b = APIRouter(), APIRouter()

    @a.get("/items")
    async def items(request: Request) -> dict[str, str]:
        return {"route": "a /items", "part": str(request.url_for("part", part_id=7))}

    @a.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, str]:
        return {"route": f"a /items/{item_id}"}

    @a.post("/items/{item_id}")
    async def change(item_id: int) -> dict[str, str]:
        return {"route": f"a POST /items/{item_id}"}

    @a.get("/shadow/{name}")
    async def shadow(name: str) -> dict[str, str]:
        return {"route": f"a /shadow/{name}"}

    @b.delete("/items/{item_id}")
    async def remove(item_id: int) -> dict[str, str]:
        return {"route": f"b DELETE /items/{item_id}"}

    @b.get("/items/{item_id}/parts")
    async def parts(item_id: int) -> dict[str, str]:
        return {"route": f"b /items/{item_id}/parts"}

    @b.get("/shadow/fixed")
    async def fixed() -> dict[str, str]:
        return {"route": "b /shadow/fixed"}  # never: a's /shadow/{name} comes first

    @b.get("/parts/{part_id}", name="part")
    async def part(part_id: int) -> dict[str, str]:
        return {"route": f"b /parts/{part_id}"}

    @b.get("/{anything}")
    async def anything(anything: str) -> dict[str, str]:
        return {"route": f"b /{{anything}}={anything}"}

    return [a, b]


def _app(indexed: bool) -> FastAPI:
    app = create_app("route index", _routers())
    assert isinstance(app.router.middleware_stack, FirstSegmentDispatch)
    if not indexed:
        app.router.middleware_stack = app.router.app  # FastAPI's own walk
    return app


REQUESTS = [
    ("GET", "/items"), ("GET", "/items/3"), ("POST", "/items/3"), ("DELETE", "/items/3"),
    ("PUT", "/items/3"), ("PUT", "/items"), ("OPTIONS", "/items/3"), ("GET", "/items/x"),
    ("GET", "/items/3/parts"), ("POST", "/items/3/parts"), ("GET", "/items/"), ("GET", "/shadow/fixed"),
    ("GET", "/parts/7"), ("GET", "/parts"), ("GET", "/zzz"), ("POST", "/zzz"), ("GET", "/items2"),
    ("GET", "/nothing/here"), ("GET", "/"), ("GET", "//items"), ("GET", "/openapi.json"),
    ("GET", "/docs"), ("HEAD", "/items"),
]


@pytest.mark.parametrize(("method", "path"), REQUESTS)
def test_the_index_answers_as_the_full_walk(method: str, path: str) -> None:
    answers = []
    for indexed in (True, False):
        with TestClient(_app(indexed)) as client:
            r = client.request(method, path)
        answers.append((r.status_code, r.content, r.headers.get("allow")))
    assert answers[0] == answers[1]


def test_first_segment() -> None:
    assert first_segment("/bookings") == "bookings"
    assert first_segment("/events/{event_id}/holds") == "events"
    assert first_segment("/{anything}") is None
    assert first_segment("/x{id}") is None
    assert first_segment("/") == ""


def test_plain_routers_become_the_apps_own_routes_with_the_same_document(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probes and the scrape route skip FastAPI's included-router bookkeeping; the
    OpenAPI document stays byte for byte the one of the app that includes every router."""
    from functions.booking.routes import router as booking_router
    from functions.events.routes import router as events_router
    from functions.users.routes import router as users_router
    from shared.web import app as app_module
    from shared.web.health import router as health_router
    from shared.web.metrics_route import router as metrics_router

    routers = [health_router, metrics_router, users_router, events_router, booking_router]
    flat = create_app("doc", routers)
    assert {"/health/live", "/health/ready", "/metrics"} <= {getattr(r, "path", None) for r in flat.router.routes}
    monkeypatch.setattr(app_module, "_plain_router", lambda router: False)
    included = create_app("doc", routers)
    assert not {"/health/live", "/metrics"} & {getattr(r, "path", None) for r in included.router.routes}
    assert json.dumps(flat.openapi()) == json.dumps(included.openapi())
