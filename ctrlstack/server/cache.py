"""Fresh-enough answers for polled reads: at most ``ttl`` seconds old, one call per key at a time.

Why: every open sidebar polls the cluster list and each cluster's status about once a second,
and a status is a round trip to the cluster's supervisor (a TLS connection, tens of ms).  With
several tabs or users' browsers polling, the same question would be asked many times a second.
Here concurrent requests for one key share one call, and an answer is reused for ``ttl``
seconds; actions (launch, scale, adapt, stop) replace or drop the entries they change, so the
requester never sees its own change late.  Errors are never cached.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

__all__ = ["Fresh"]

_T = TypeVar("_T")


class Fresh(Generic[_T]):
    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._values: dict[str, tuple[float, _T]] = {}
        self._pending: dict[str, asyncio.Future[_T]] = {}

    async def get(self, key: str, fetch: Callable[[], Awaitable[_T]]) -> _T:
        hit = self._values.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        pending = self._pending.get(key)
        if pending is None:
            started = time.monotonic()
            pending = asyncio.ensure_future(fetch())
            self._pending[key] = pending
            pending.add_done_callback(lambda f: self._settle(key, started, f))
        return await asyncio.shield(pending)

    def _settle(self, key: str, started: float, future: asyncio.Future[Any]) -> None:
        if self._pending.get(key) is future:
            del self._pending[key]
        if not future.cancelled() and future.exception() is None:
            self._values[key] = (started, future.result())

    def put(self, key: str, value: _T) -> None:
        self._values[key] = (time.monotonic(), value)

    def forget(self, key: str | None = None) -> None:
        """Drop ``key`` (or everything); a call under way still answers its waiters."""
        if key is None:
            self._values.clear()
        else:
            self._values.pop(key, None)
