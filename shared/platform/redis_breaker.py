"""One Redis client per concern that degrades without Redis, with a circuit breaker.

Rate limits and the session check each make one small Redis call per request and must
never fail a request because Redis is down or slow: short socket timeouts, no retries, and
after a failure the breaker skips Redis for a few seconds (the caller falls back), so a
rush does not pay a timeout per request.

A concern called from async code (the booking routes) gets an asyncio client too, so its
call costs no thread-pool hop. An asyncio client's connections belong to the event loop
that opened them, and under Mangum (Lambda, the emulator, handler tests) requests may come
on several loops, one after another or at once: each running loop gets a client of its own,
at most :data:`MAX_LOOP_CLIENTS` kept (closed loops dropped first). The breaker's state
(open for a few seconds after any failure, sync or async) is one per concern.

What a call can raise when the server or the connection under it goes away: redis-py's own
errors, and, for a connection closed under a concurrent caller, ``ValueError`` ("I/O
operation on closed file") or ``OSError``. Every caller that degrades catches all of
:data:`REDIS_FAILURES`, so none turns into a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.platform.settings import Settings, get_settings

if TYPE_CHECKING:
    import redis.asyncio

REDIS_FAILURES: tuple[type[Exception], ...] = (redis.RedisError, OSError, ValueError)

BREAKER_SECONDS = 5.0
# Event loops with an asyncio client at once. A server has one loop per worker and Lambda one
# per environment; the emulator runs one per invocation thread (16), tests a few more.
MAX_LOOP_CLIENTS = 32
# Connections per loop's client: a call holds one for a round trip; more callers wait for one,
# at most the call's timeout (then it counts as Redis trouble).
LOOP_CLIENT_CONNECTIONS = 64

log = logging.getLogger(__name__)


class RedisBreaker:
    """A lazily made client for ``REDIS_URL``, or None while the breaker is open."""

    def __init__(self, name: str, timeout: Callable[[Settings], float]) -> None:
        self.name = name  # what degrades, for the log line
        self._timeout = timeout
        self._lock = threading.Lock()
        self._client: redis.Redis | None = None
        self._loop_clients: dict[asyncio.AbstractEventLoop, redis.asyncio.Redis] = {}
        self._url = ""
        self._down_until = 0.0

    def client(self) -> redis.Redis | None:
        settings = get_settings()
        with self._lock:
            self._follow(settings.redis_url)
            if self._client is None:
                timeout = self._timeout(settings)
                self._client = redis.Redis.from_url(
                    settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout,
                    retry=Retry(NoBackoff(), 0), health_check_interval=30,
                )
            if time.monotonic() < self._down_until:
                return None
            return self._client

    def async_client(self) -> redis.asyncio.Redis | None:
        """The running event loop's asyncio client (same settings as :meth:`client`), or None while open."""
        settings = get_settings()
        loop = asyncio.get_running_loop()
        with self._lock:
            self._follow(settings.redis_url)
            if time.monotonic() < self._down_until:
                return None
            client = self._loop_clients.get(loop)
            if client is None:
                self._make_room()
                client = self._loop_clients[loop] = _async_client(settings.redis_url, self._timeout(settings))
            return client

    def _follow(self, url: str) -> None:
        """A new REDIS_URL (tests change it): new clients, the breaker closed. Under the lock."""
        if url == self._url:
            return
        # The old sync client is dropped, not closed: another thread may be mid-call on it.
        self._client, self._url, self._down_until = None, url, 0.0
        for loop, client in self._loop_clients.items():
            _close_on(loop, client)
        self._loop_clients.clear()

    def _make_room(self) -> None:
        """Room for one more loop's client: closed loops' go first, then the oldest. Under the lock."""
        for loop in [loop for loop in self._loop_clients if loop.is_closed()]:
            # Its sockets close with its transports, which nothing else holds once this goes.
            del self._loop_clients[loop]
        while len(self._loop_clients) >= MAX_LOOP_CLIENTS:
            loop = next(iter(self._loop_clients))
            _close_on(loop, self._loop_clients.pop(loop))

    def trip(self, exc: Exception, fallback: str) -> None:
        """Skip Redis for a few seconds after a failure; ``fallback`` says what happens meanwhile.

        Logged when the breaker opens, not by every call that was in flight when Redis went away.
        """
        now = time.monotonic()
        was_closed, self._down_until = now >= self._down_until, now + BREAKER_SECONDS
        if was_closed:
            log.warning("%s: Redis unavailable (%s); %s for %.0fs", self.name, type(exc).__name__, fallback,
                        BREAKER_SECONDS)

    def reset(self) -> None:
        """Forget a past failure: the next call asks Redis again (tests use it)."""
        self._down_until = 0.0


def _async_client(url: str, timeout: float) -> redis.asyncio.Redis:
    """An asyncio client like the sync one: short timeouts, no retries, a bounded pool."""
    import redis.asyncio  # here: the relay's Lambda never needs it
    from redis.asyncio.retry import Retry as AsyncRetry

    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url, max_connections=LOOP_CLIENT_CONNECTIONS, timeout=timeout, socket_timeout=timeout,
        socket_connect_timeout=timeout, retry=AsyncRetry(NoBackoff(), 0), health_check_interval=30,
    )
    return redis.asyncio.Redis(connection_pool=pool)


_closing: set[asyncio.Future[Any]] = set()  # closes in flight, referenced until done


def _close_on(loop: asyncio.AbstractEventLoop, client: redis.asyncio.Redis) -> None:
    """Close a dropped client on its own loop, where its connections live; a call in flight
    on it (it holds the client) finishes first or fails like Redis trouble."""

    def close() -> None:
        task = asyncio.ensure_future(client.aclose())
        _closing.add(task)
        task.add_done_callback(_closing.discard)

    with contextlib.suppress(RuntimeError):  # closed: its sockets close when its transports are collected
        loop.call_soon_threadsafe(close)


# A batched call waiting for its pipeline: the script's keys and arguments, and its answer.
_Pending = tuple[Sequence[str], Sequence[int | str], "asyncio.Future[Any]"]


class Script:
    """A Lua script run by SHA on a sync or an asyncio client, loaded on first use per server.

    :meth:`run_batched` sends the calls made in one event-loop iteration as one pipeline: a
    call through redis.asyncio costs more CPU around the round trip (lending a connection,
    checking it for unread data, accounting) than Redis spends on the script, and under load
    many requests reach the limiter in the same iteration.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()
        # Per client (by id; the entry holds the client, so the id stays its own): calls not yet sent.
        self._pending: dict[int, tuple[redis.asyncio.Redis, list[_Pending]]] = {}
        self._sending: set[asyncio.Task[None]] = set()  # pipelines in flight, referenced until done

    def __call__(self, client: redis.Redis, keys: Sequence[str], args: Sequence[int | str]) -> Any:
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            client.script_load(self.text)
            return client.evalsha(self.sha, len(keys), *keys, *args)

    async def run_async(
        self, client: redis.asyncio.Redis, keys: Sequence[str], args: Sequence[int | str]
    ) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            await client.script_load(self.text)
            return await client.evalsha(self.sha, len(keys), *keys, *args)

    async def run_batched(
        self, client: redis.asyncio.Redis, keys: Sequence[str], args: Sequence[int | str]
    ) -> Any:
        """:meth:`run_async`, sent with the other calls of this loop iteration as one pipeline.

        Each call gets its own reply; trouble with the round trip (a timeout, a lost
        connection) is every call's, raised to each as if it had gone alone. The bounds are
        the client's: its pool timeout for a connection, its socket timeout for the reply.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        entry = self._pending.get(id(client))
        if entry is None:
            entry = self._pending[id(client)] = (client, [])
            loop.call_soon(self._send, client)
        entry[1].append((keys, args, future))
        return await future

    def _send(self, client: redis.asyncio.Redis) -> None:
        _, batch = self._pending.pop(id(client))
        task = asyncio.ensure_future(self._answer(client, batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _answer(self, client: redis.asyncio.Redis, batch: list[_Pending]) -> None:
        try:
            if len(batch) == 1:  # alone: a pipeline would only add its own cost
                keys, args, _ = batch[0]
                replies: list[Any] = [await self.run_async(client, keys, args)]
            else:
                replies = await self._pipelined(client, [(keys, args) for keys, args, _ in batch])
        except asyncio.CancelledError:
            for _, _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # each caller gets it, as from its own call
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, _, future), reply in zip(batch, replies, strict=True):
            if not future.done():  # its caller may have gone (a cancelled request)
                if isinstance(reply, Exception):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)

    async def _pipelined(
        self, client: redis.asyncio.Redis, calls: list[tuple[Sequence[str], Sequence[int | str]]]
    ) -> list[Any]:
        """One round trip for all ``calls`` (two more if the server lacks the script); errors as replies."""
        async with client.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.evalsha(self.sha, len(keys), *keys, *args)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, redis.exceptions.NoScriptError)]
        if missing:  # NOSCRIPT: those did not run; load it once and run them again
            await client.script_load(self.text)
            again = await self._pipelined(client, [calls[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies
