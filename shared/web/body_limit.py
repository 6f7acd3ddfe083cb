"""Request bodies above ``MAX_BODY_BYTES`` are refused with 413 before anything parses them.

A pure ASGI middleware, so one rule covers every way a request arrives: uvicorn (the local
router, containers), where a body may stream in chunks of unknown total length, and Mangum
(Lambda), where the whole body is already in the event and arrives as one message.

- A ``Content-Length`` above the limit is refused at once: nothing of the body is read.
- Otherwise the body is read here, counting as it streams (chunked uploads, a header that
  lies), and refused as soon as the count passes the limit; at most ``limit`` bytes plus one
  chunk are ever held. A body within the limit is handed to the app as one message.

- The whole body must arrive within ``BODY_READ_TIMEOUT_SECONDS``: a client that announces
  a body and then trickles or stalls (slowloris) gets 408 ``request_timeout`` instead of
  holding a connection and a coroutine for ever (uvicorn has no body-read timeout).

Why read it here instead of counting while the app reads: FastAPI turns any exception from
``receive`` into its own 400, and a JSON parser must never start on a body that may be too
large. Every route reads its whole body before running anyway, so buffering up to the limit
(64 KiB by default) costs no latency and no more memory than the app would use.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.platform.settings import get_settings
from shared.web.http_middleware import HttpMiddleware

_CONTENT_LENGTH = b"content-length"
_TRANSFER_ENCODING = b"transfer-encoding"
_BODILESS_METHODS = frozenset({"GET", "HEAD"})


def _framing(scope: Scope) -> tuple[int | None, bool]:
    """(The first Content-Length as a number, None when absent or not a number; whether a
    Transfer-Encoding is named), in one pass over the headers."""
    declared: int | None = None
    seen = encoded = False
    for name, value in scope.get("headers") or ():
        if name == _CONTENT_LENGTH and not seen:
            seen = True
            try:
                declared = int(value)
            except ValueError:
                declared = None
        elif name == _TRANSFER_ENCODING:
            encoded = True
    return declared, encoded


def _declared_length(scope: Scope) -> int | None:
    """The Content-Length header as a number; None when absent or not a number."""
    return _framing(scope)[0]


def _has_no_body(scope: Scope, declared: int | None, encoded: bool | None = None) -> bool:
    """The server's framing proves the body empty, so there is nothing to bound or time.

    Skipping the read saves a timed ``receive`` (a task and a timer per request) on every
    probe and GET. Only an HTTP server's framing counts: under Mangum the body comes from
    the event whatever the headers say, so an ``aws.event`` scope is always read. A POST
    without framing headers is read too (an ASGI caller may stream one without them), and
    so is any request that names a ``Transfer-Encoding`` (``encoded``: already known).
    """
    if "aws.event" in scope:
        return False
    if declared != 0 and (declared is not None or scope.get("method") not in _BODILESS_METHODS):
        return False
    return not (_framing(scope)[1] if encoded is None else encoded)


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


class BodyLimit(HttpMiddleware):
    """Refuse request bodies larger than ``MAX_BODY_BYTES`` (413) or slower than
    ``BODY_READ_TIMEOUT_SECONDS`` (408) with the app's JSON errors."""

    def __init__(self, app: ASGIApp, too_large: Callable[[int], ASGIApp], too_slow: Callable[[], ASGIApp]) -> None:
        super().__init__(app)
        self.too_large = too_large  # builds the 413 response for a limit
        self.too_slow = too_slow  # builds the 408 response

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A request whose framing proves it bodiless (every probe and GET) goes straight to
        # the app: no coroutine of this layer stays in the chain for the request's lifetime.
        if scope["type"] == "http":
            (declared, encoded), limit = _framing(scope), get_settings().max_body_bytes
            if declared is not None and declared > limit:
                return self.too_large(limit)(scope, receive, send)  # nothing of the body is read
            if _has_no_body(scope, declared, encoded):
                return self.app(scope, receive, send)
        return super().__call__(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A request that may carry a body within the limit: read it, bounded and timed."""
        settings = get_settings()
        limit = settings.max_body_bytes
        # One deadline for the whole body, as one timer: ``asyncio.wait_for`` on each receive
        # made a task and a timer per chunk (12 us against 4 us per request, in process).
        deadline = asyncio.get_running_loop().time() + settings.body_read_timeout_seconds
        try:
            async with asyncio.timeout_at(deadline):
                message = await self._read(receive, limit)
        except TimeoutError:
            await self.too_slow()(scope, receive, send)
            return
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

