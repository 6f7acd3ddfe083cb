"""The apps of the framework floor (bench/floor.py), each served by uvicorn as ``bench.floor_apps:<name>``.

``hello`` is FastAPI alone: one async route, nothing of the project imported. The two
diagnostic variants split the distance between it and ``local.app:app``:

- ``fastapi_health``: a plain FastAPI app with only the project's health router (the
  route itself, FastAPI's defaults);
- ``create_app_health``: ``shared.web.app.create_app`` with only the health router (our
  middlewares, exception handlers and logging, one router).

The variants are built on first access (a module ``__getattr__``), so a server process
builds only the app it serves: ``create_app`` configures logging and freezes the garbage
collector process-wide, which must not leak into the plain variant or into hello-world.
"""

from __future__ import annotations

from fastapi import FastAPI

hello = FastAPI()


@hello.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "ok"}


def _fastapi_health() -> FastAPI:
    from shared.web.health import router

    app = FastAPI()
    app.include_router(router)
    return app


def _create_app_health() -> FastAPI:
    from shared.web.app import create_app
    from shared.web.health import router

    return create_app(title="Framework floor: create_app + health router", routers=[router])


_BUILDERS = {"fastapi_health": _fastapi_health, "create_app_health": _create_app_health}
_built: dict[str, FastAPI] = {}


def __getattr__(name: str) -> FastAPI:
    if name not in _BUILDERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _built:
        _built[name] = _BUILDERS[name]()
    return _built[name]
