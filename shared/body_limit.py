"""Request bodies above ``MAX_BODY_BYTES`` are refused with 413 before anything parses them.

A pure ASGI middleware, so one rule covers every way a request arrives: uvicorn (the local
router, containers), where a body may stream in chunks of unknown total length, and Mangum
(Lambda), where the whole body is already in the event and arrives as one message.

- A ``Content-Length`` above the limit is refused at once: nothing of the body is read.
- Otherwise the body is read here, counting as it streams (chunked uploads, a header that
  lies), and refused as soon as the count passes the limit; at most ``limit`` bytes plus one
  chunk are ever held. A body within the limit is handed to the app as one message.

Why read it here instead of counting while the app reads: FastAPI turns any exception from
``receive`` into its own 400, and a JSON parser must never start on a body that may be too
large. Every route reads its whole body before running anyway, so buffering up to the limit
(64 KiB by default) costs no latency and no more memory than the app would use.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.settings import get_settings

_CONTENT_LENGTH = b"content-length"


def _declared_length(scope: Scope) -> int | None:
    """The Content-Length header as a number; None when absent or not a number."""
    for name, value in scope.get("headers") or ():
        if name == _CONTENT_LENGTH:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(message: Message, receive: Receive) -> Receive:
    """A receive that returns ``message`` first, then whatever the server sends next."""
    pending: Message | None = message

    async def replay() -> Message:
        nonlocal pending
        if pending is not None:
            first, pending = pending, None
            return first
        return await receive()

    return replay


class BodyLimit:
    """Refuse request bodies larger than ``MAX_BODY_BYTES`` with the app's JSON 413."""

    def __init__(self, app: ASGIApp, too_large: Callable[[int], ASGIApp]) -> None:
        self.app = app
        self.too_large = too_large  # builds the 413 response for a limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = get_settings().max_body_bytes
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await self.too_large(limit)(scope, receive, send)
            return
        message = await self._read(receive, limit)
        if message is None:
            await self.too_large(limit)(scope, receive, send)
            return
        await self.app(scope, _replay(message, receive), send)

    @staticmethod
    async def _read(receive: Receive, limit: int) -> Message | None:
        """The whole body as one message, or None as soon as it passes ``limit`` bytes."""
        message = await receive()
        if message["type"] != "http.request":
            return message  # a disconnect: the app sees it as it would have
        body = message.get("body", b"")
        if len(body) > limit:
            return None
        if not message.get("more_body", False):
            return message  # the usual case, and always the case under Mangum
        chunks, size = [body], len(body)
        while message.get("more_body", False):
            message = await receive()
            if message["type"] != "http.request":
                return message
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
