"""The Idempotency-Key of a creating route: a route's one service call runs through it.

``once.run(body, holds.create_hold, user_id=...)`` calls the service with
``idempotency=`` the request's :class:`~shared.ticketing.idempotency.KeyLease` (None
without a key) at most once per key; a retry with the same key and body gets the first
answer again, marked with the ``Idempotent-Replayed`` header and counted as a replay.
The key's bookkeeping (lease, stored answer, refusals) is :mod:`shared.ticketing.idempotency`.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, ParamSpec

from fastapi import Header, Request, Response
from pydantic import BaseModel

from shared.platform import metrics
from shared.platform.threads import Offload
from shared.ticketing import idempotency

P = ParamSpec("P")
# What a creating service returns: the resource, or (resource, created) when it may hand
# back one it made before (confirming a hold twice): then the answer is 200, not 201.
Answer = dict[str, Any] | tuple[dict[str, Any], bool]

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="Retry-safe key: the same key and body replay the first answer",
    ),
]


@contextmanager
def _replays_counted() -> Iterator[None]:
    """A stored refusal replays as an exception (with the header): count it like any other replay."""
    try:
        yield
    except idempotency.Replayed:
        metrics.idempotent_replay()
        raise


class Idempotency:
    """One request's key, the fingerprint of what it asks, and its response (status, header)."""

    def __init__(
        self, request: Request, response: Response, user_id: int, key: str | None, offload: Offload
    ) -> None:
        self._request = request
        self._response = response
        self._user_id = user_id
        self._key = key
        self._offload = offload

    def run(
        self, body: BaseModel | None, service: Callable[P, Answer], /, *args: P.args, **kwargs: P.kwargs
    ) -> dict[str, Any]:
        """``service(*args, **kwargs, idempotency=...)`` once per key; ``body`` is what the key must match."""
        call: Callable[..., Answer] = functools.partial(service, *args, **kwargs)  # plus idempotency=
        with _replays_counted():
            result, replayed = idempotency.run(
                action=lambda lease: self._answer(call(idempotency=lease)), **self._keyed(body)
            )
        return self._replayed(result, replayed)

    async def run_async(
        self,
        body: BaseModel | None,
        service: Callable[P, Awaitable[Answer]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> dict[str, Any]:
        """:meth:`run` for an async service: the key's SQL offloaded (the request's ``offload``),
        no thread held meanwhile."""
        call: Callable[..., Awaitable[Answer]] = functools.partial(service, *args, **kwargs)  # plus idempotency=

        async def action(lease: idempotency.KeyLease | None) -> dict[str, Any]:
            return self._answer(await call(idempotency=lease))

        with _replays_counted():
            result, replayed = await idempotency.run_async(action=action, offload=self._offload, **self._keyed(body))
        return self._replayed(result, replayed)

    def _keyed(self, body: BaseModel | None) -> dict[str, Any]:
        """What idempotency.run / run_async need besides the action."""
        return {
            "user_id": self._user_id,
            "key": self._key,
            # Only a keyed request needs its fingerprint: the unkeyed hot path skips the hashing.
            "request_fingerprint": "" if self._key is None else idempotency.fingerprint(
                self._request.method, self._request.url.path, body.model_dump(mode="json") if body else None
            ),
            "success_status": lambda: self._response.status_code or 201,
        }

    def _answer(self, result: Answer) -> dict[str, Any]:
        if isinstance(result, tuple):
            resource, created = result
            if not created:
                self._response.status_code = 200
            return resource
        return result

    def _replayed(self, result: dict[str, Any], replayed_status: int | None) -> dict[str, Any]:
        if replayed_status is not None:
            metrics.idempotent_replay()
            self._response.status_code = replayed_status
            self._response.headers[idempotency.REPLAY_HEADER] = "true"
        return result
