"""Long-lived TLS control connections to the supervisors, one per cluster, for the server.

Why: :func:`ctrlstack.deploy.control.call` is made for one-off callers (CLI, a notebook cell): a
new thread, a new event loop and a new TLS connection per call, tens of ms of handshake and
thread start on a busy login node.  The Jupyter server asks every running cluster for its
status about once a second, forever; here each cluster keeps one ``distributed`` rpc (which
keeps its comm open between calls) on one private event loop in a daemon thread, so a status is
one message on an open connection.  A failed call drops that cluster's connection, so the next
call reconnects (a restarted cluster has a new address and credentials anyway).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from typing import TYPE_CHECKING, Any

from ctrlstack.deploy.control import CLOSE_GRACE, ClusterUnreachableError

if TYPE_CHECKING:
    from distributed.core import rpc
    from distributed.security import Security

__all__ = ["Channels"]


class Channels:
    """Blocking :meth:`call` for executor threads; the connections live on a private loop."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="ctrlstack-control", daemon=True
        )
        self._thread.start()
        self._rpcs: dict[str, tuple[str, rpc]] = {}  # name -> (address, rpc)

    def call(
        self, name: str, address: str, security: Security, op: str, timeout: float = 10.0, **kw: Any
    ) -> Any:
        future = asyncio.run_coroutine_threadsafe(
            self._acall(name, address, security, op, timeout, kw), self._loop
        )
        try:
            return future.result(timeout + CLOSE_GRACE)
        except (TimeoutError, concurrent.futures.TimeoutError, OSError) as exc:
            future.cancel()
            raise ClusterUnreachableError(
                f"cluster scheduler at {address} did not answer {op!r} "
                f"within {timeout:g} s: {exc or type(exc).__name__}"
            ) from exc

    async def _acall(
        self, name: str, address: str, security: Security, op: str, timeout: float, kw: Any
    ) -> Any:
        from distributed.core import rpc

        known = self._rpcs.get(name)
        if known is not None and known[0] != address:
            await self._drop(name)
            known = None
        if known is None:
            args = security.get_connection_args("client")
            known = (address, rpc(address, timeout=timeout, connection_args=args))
            self._rpcs[name] = known
        try:
            return await asyncio.wait_for(getattr(known[1], op)(**kw), timeout)
        except Exception:
            await self._drop(name)  # next call reconnects; handler errors re-raise unchanged
            raise

    async def _drop(self, name: str) -> None:
        known = self._rpcs.pop(name, None)
        if known is not None:
            # A dead peer leaves nothing to close; closing must not fail the call that failed.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(known[1].close_rpc(), CLOSE_GRACE)

    def forget(self, name: str) -> None:
        """Close ``name``'s connection (the cluster was stopped or forgotten)."""
        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._drop(name), self._loop)

    def close(self) -> None:
        async def close_all() -> None:
            for name in list(self._rpcs):
                await self._drop(name)

        if self._loop.is_running():
            with contextlib.suppress(Exception):  # closing on shutdown is best effort
                asyncio.run_coroutine_threadsafe(close_all(), self._loop).result(CLOSE_GRACE)
            self._loop.call_soon_threadsafe(self._loop.stop)
