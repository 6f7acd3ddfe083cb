"""The base of this package's pure ASGI middlewares: HTTP requests only.

Lifespan and websocket scopes pass straight through to the wrapped app, so a middleware
states only what it does to an HTTP request (:meth:`HttpMiddleware.handle`).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


class HttpMiddleware:
    """Wraps ``app``; runs :meth:`handle` for HTTP scopes and passes every other scope on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError
