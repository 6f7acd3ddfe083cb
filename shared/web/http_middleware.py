"""The base of this package's pure ASGI middlewares: HTTP requests only.

Lifespan and websocket scopes pass straight through to the wrapped app, so a middleware
states only what it does to an HTTP request (:meth:`HttpMiddleware.handle`).
"""

from __future__ import annotations

from collections.abc import Awaitable

from starlette.types import ASGIApp, Receive, Scope, Send


class HttpMiddleware:
    """Wraps ``app``; runs :meth:`handle` for HTTP scopes and passes every other scope on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not async: the caller awaits the chosen coroutine itself, so this dispatch adds no
        # frame that every receive and send of the request would have to pass through.
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        return self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError
