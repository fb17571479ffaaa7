"""Talking to a running supervisor over its scheduler's comm (client side of the handlers).

The calls are synchronous because their callers are: the CLI, notebook cells, and the Jupyter
server extension (which runs them in an executor).  Each call runs its own short-lived event loop
in a worker thread, so it also works from inside a running loop (a Jupyter kernel).

Every call is bounded: the request itself by ``timeout``, and the thread as a whole by ``timeout``
plus :data:`CLOSE_GRACE` (closing the comm and the private loop), after which the caller gets
:class:`ClusterUnreachableError` and the stuck thread is left to finish on its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import TYPE_CHECKING, Any

from ctrlstack.errors import UnreachableError

if TYPE_CHECKING:
    from distributed.security import Security

__all__ = ["ClusterUnreachableError", "call"]

#: Extra seconds allowed for closing the comm and the private event loop after a call.
CLOSE_GRACE = 5.0


class ClusterUnreachableError(UnreachableError):
    """The cluster's scheduler did not answer (stopped, dead, or a stale address)."""


async def _acall(
    address: str, op: str, timeout: float, security: Security | None, kwargs: dict[str, Any]
) -> Any:
    from distributed.core import rpc

    args = security.get_connection_args("client") if security is not None else {}
    r = rpc(address, timeout=timeout, connection_args=args)
    try:
        return await asyncio.wait_for(getattr(r, op)(**kwargs), timeout)
    finally:
        await r.close_rpc()


def call(
    address: str,
    op: str,
    *,
    security: Security | None = None,
    timeout: float = 10.0,
    **kwargs: Any,
) -> Any:
    """Call handler ``op`` on the scheduler at ``address``; handler errors are re-raised here.

    ``security``: the cluster's TLS credentials (every ctrlstack cluster requires them).
    """
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ctrlstack-rpc")
    try:
        future = pool.submit(asyncio.run, _acall(address, op, timeout, security, kwargs))
        try:
            return future.result(timeout + CLOSE_GRACE)
        except (TimeoutError, OSError) as exc:  # futures.TimeoutError is TimeoutError (3.11)
            raise ClusterUnreachableError(
                f"cluster scheduler at {address} did not answer {op!r} "
                f"within {timeout:g} s: {exc or type(exc).__name__}"
            ) from exc
    finally:
        # Do not join a thread that is stuck (e.g. in a blocking close): that would unbound us.
        pool.shutdown(wait=False)
