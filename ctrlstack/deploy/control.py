"""Talking to a running supervisor over its scheduler's comm (client side of the handlers).

The calls are synchronous because their callers are: the CLI, notebook cells, and the Jupyter
server extension (which runs them in an executor).  Each call runs its own short-lived event loop
in a worker thread, so it also works from inside a running loop (a Jupyter kernel).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

__all__ = ["ClusterUnreachableError", "call"]


class ClusterUnreachableError(ConnectionError):
    """The cluster's scheduler did not answer (stopped, dead, or a stale address)."""


async def _acall(address: str, op: str, timeout: float, kwargs: dict[str, Any]) -> Any:
    from distributed.core import rpc

    r = rpc(address, timeout=timeout)
    try:
        return await asyncio.wait_for(getattr(r, op)(**kwargs), timeout)
    finally:
        await r.close_rpc()


def call(address: str, op: str, *, timeout: float = 10.0, **kwargs: Any) -> Any:
    """Call handler ``op`` on the scheduler at ``address``; handler errors are re-raised here."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ctrlstack-rpc") as pool:
        future = pool.submit(asyncio.run, _acall(address, op, timeout, kwargs))
        try:
            return future.result()
        except (TimeoutError, OSError) as exc:
            raise ClusterUnreachableError(
                f"cluster scheduler at {address} did not answer {op!r}: {exc}"
            ) from exc
