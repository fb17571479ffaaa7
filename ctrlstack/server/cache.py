"""Polled reads answered from memory: stale-while-revalidate, one call per key at a time.

Why: every open sidebar polls the cluster list and each cluster's status about once a second.
A status is a round trip to the cluster's supervisor (a fresh TLS connection, tens of ms, and
~100 ms on a loaded login node), and the list judges every record's liveness.  If a request
waited for that, the REST latency would be the supervisor's latency plus the machine's load.

So a read is answered from the last result while it is younger than ``stale`` seconds; once it
is older than ``ttl``, the answer still comes from memory and one refresh starts in the
background (concurrent requests share it).  A polling sidebar therefore never waits for a
supervisor, yet sees results at most about ``ttl`` plus one refresh old.  Only a key nobody
asked for within ``stale`` seconds (or never) makes a request wait.

Never stale where it matters: actions (launch, scale, adapt, stop) replace or drop the entries
they change, so the requester sees its own change at once; a failed refresh drops the entry, so
a cluster stopped elsewhere turns into its error (404) on the next poll.  Errors are never
cached.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

__all__ = ["Fresh"]

_T = TypeVar("_T")


class Fresh(Generic[_T]):
    def __init__(self, ttl: float, stale: float | None = None) -> None:
        self.ttl = ttl
        self.stale = ttl if stale is None else max(stale, ttl)
        self._values: dict[str, tuple[float, _T]] = {}
        self._pending: dict[str, asyncio.Future[_T]] = {}
        self._generation: dict[str, int] = {}

    def age(self, key: str) -> float | None:
        """Seconds since the cached answer for ``key`` was fetched (``None``: nothing cached)."""
        hit = self._values.get(key)
        return None if hit is None else time.monotonic() - hit[0]

    async def get(self, key: str, fetch: Callable[[], Awaitable[_T]]) -> _T:
        hit = self._values.get(key)
        age = None if hit is None else time.monotonic() - hit[0]
        if hit is not None and age is not None and age < self.ttl:
            return hit[1]
        pending = self._pending.get(key)
        if pending is None:
            started = time.monotonic()
            generation = self._generation.get(key, 0)
            pending = asyncio.ensure_future(fetch())
            self._pending[key] = pending
            pending.add_done_callback(lambda f: self._settle(key, started, generation, f))
        if hit is not None and age is not None and age < self.stale:
            return hit[1]  # the refresh runs in the background for the next request
        return await asyncio.shield(pending)

    def _settle(
        self, key: str, started: float, generation: int, future: asyncio.Future[Any]
    ) -> None:
        if self._pending.get(key) is future:
            del self._pending[key]
        if future.cancelled() or self._generation.get(key, 0) != generation:
            return  # an action changed this key while the refresh ran: its answer is newer
        if future.exception() is None:
            self._values[key] = (started, future.result())
        else:
            self._values.pop(key, None)

    def put(self, key: str, value: _T) -> None:
        self._bump(key)
        self._values[key] = (time.monotonic(), value)

    def forget(self, key: str | None = None) -> None:
        """Drop ``key`` (or everything); a refresh under way then answers its waiters only."""
        if key is None:
            for k in set(self._values) | set(self._pending):
                self._bump(k)
            self._values.clear()
        else:
            self._bump(key)
            self._values.pop(key, None)

    def _bump(self, key: str) -> None:
        self._generation[key] = self._generation.get(key, 0) + 1
        self._pending.pop(key, None)
