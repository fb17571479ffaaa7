"""Dask worker preload: load the named kernels from Numba's cache before the worker takes tasks.

Why: with ``cache=True`` a kernel's first call in a new process is a cache load (tens to
hundreds of milliseconds for the ``parallel=True`` ones), not a compile.  In a fresh cluster
every worker pays that load at its first task, and on a small node the workers pay it at the
same moment, competing for the same cores and files: measured here, the slower of two fresh
workers took 0.09-0.18 s longer than a lone process for k-means, histograms and stencils.
Loading the kernels while the worker starts (a Dask preload runs before the worker registers
with the scheduler) moves that cost out of the first task: a task never meets a half-loaded
worker, and the cluster is ready a little later instead.

Which ops: the dask config key ``ctrlstack.ops.preload`` (a list of public op names as
:func:`ctrlstack.ops.warm` takes them, or ``"all"``; env ``DASK_CTRLSTACK__OPS__PRELOAD``).
An empty list (the default) loads nothing.  Every ctrlstack worker runs this after pinning (the
``ctrlstack.topology.pin`` preload calls :func:`dask_setup` when the key is set, so Numba is
imported only after the worker's threads are pinned); plain Dask clusters add it themselves::

    LocalCluster(preload=["ctrlstack.ops.preload"])   # with ctrlstack.ops.preload set

The loads come from the on-disk cache only if something filled it: run ``ctrlstack ops warm``
(or build the stack, which does) once per software stack.  With a cold cache the preload
compiles instead, which takes seconds per op and delays the worker's start by as much.

A bad value never stops a worker: it is logged and recorded as ``worker.ctrlstack_ops_preload``
(also returned by :func:`preload_report` through ``client.run``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

__all__ = ["CONFIG_KEY", "dask_setup", "preload_report", "requested"]

CONFIG_KEY = "ctrlstack.ops.preload"

logger = logging.getLogger("ctrlstack.ops.preload")

_last: dict[str, Any] | None = None


def requested(value: Any = None) -> list[str] | None:
    """The op names asked for: ``None`` for all, ``[]`` for none.

    ``value`` defaults to the dask config key.  Raises ``ValueError`` naming the key for a value
    that is neither ``"all"``, a comma-separated string nor a list of names.
    """
    if value is None:
        import dask.config

        import ctrlstack.config  # noqa: F401  (merges the packaged defaults)

        value = dask.config.get(CONFIG_KEY, default=[])
    if value is None or value == []:
        return []
    if isinstance(value, str):
        if value.strip() == "all":
            return None
        value = [part for part in (p.strip() for p in value.split(",")) if part]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(
            f"{CONFIG_KEY} must be 'all' or a list of op names (e.g. [kmeans, moving_std]), "
            f"got {value!r}"
        )
    return list(value)


def run(value: Any = None) -> dict[str, Any]:
    """Warm the requested ops; return a record ``{"ops", "seconds"}`` or ``{"error"}``."""
    global _last
    try:
        names = requested(value)
        if names == []:
            record: dict[str, Any] = {"ops": [], "seconds": 0.0}
        else:
            from ctrlstack.ops import warm

            t0 = time.perf_counter()
            done = warm(names)
            record = {"ops": done, "seconds": round(time.perf_counter() - t0, 3)}
    except (ValueError, TypeError) as exc:
        record = {"error": str(exc)}
        logger.warning("ctrlstack ops preload skipped: %s", exc)
    else:
        logger.info("ctrlstack ops preload: %s", record)
    _last = record
    return record


def dask_setup(worker: Any) -> None:
    """Dask preload hook: load the configured kernels before the worker takes tasks.

    Runs once per process: listed explicitly next to the ctrlstack pin preload (which also
    calls it), the second call only re-records the first one's result.
    """
    record = _last if _last is not None else run()
    with contextlib.suppress(AttributeError):
        worker.ctrlstack_ops_preload = record


def preload_report() -> dict[str, Any] | None:
    """This process's preload record (``client.run(preload_report)``); None if it never ran."""
    return _last
