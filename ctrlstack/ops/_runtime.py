"""Runtime policy shared by every kernel family: threading layer, thread budget, dispatch.

Why this exists:

* **Threading layer.**  Numba's default priority tries ``tbb``, then ``omp``, then ``workqueue``;
  ``workqueue`` aborts the process when two Python threads enter parallel regions at once, which
  is exactly what a Dask worker with ``nthreads > 1`` does.  Unless the user (or a pinned worker's
  environment) already chose a layer, we ask for ``"threadsafe"`` before the first parallel call,
  so Numba picks ``tbb`` or ``omp`` and never ``workqueue``.
* **Thread budget.**  ``numba.set_num_threads`` is *thread-local*, so each Dask task thread can run
  its parallel kernels with its own share of the worker's CPUs.  :func:`kernel_threads` applies the
  budget from :func:`ctrlstack.topology.budget.thread_budget` before every parallel call.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numba

from ctrlstack.ops._check import check_positive_int
from ctrlstack.topology.budget import thread_budget

#: numba.config is populated at run time; mypy cannot see its attributes.
numba_config: Any = numba.config

__all__ = ["check_threads", "ensure_threading_layer", "is_dask", "is_xarray", "kernel_threads"]


def ensure_threading_layer() -> None:
    """Choose a thread-safe Numba threading layer unless one was chosen explicitly."""
    if "NUMBA_THREADING_LAYER" in os.environ:
        return
    if numba_config.THREADING_LAYER == "default":
        numba_config.THREADING_LAYER = "threadsafe"


def check_threads(threads: Any) -> int:
    """``threads`` as an int >= 1 (for calls that run one task and need no thread switch).

    An integer only: ``int()`` would have taken ``"2"``, ``2.7`` and ``True`` silently.
    """
    return check_positive_int(threads, "threads")


@contextmanager
def kernel_threads(threads: int | None = None) -> Iterator[int]:
    """Run the enclosed parallel Numba calls with ``threads`` (default: the budget) threads.

    Clamped to Numba's pool size; restores the calling thread's previous setting on exit.
    """
    wanted = thread_budget() if threads is None else check_threads(threads)
    n = min(wanted, numba_config.NUMBA_NUM_THREADS)
    previous = numba.get_num_threads()
    if n == previous:  # the common case; set_num_threads costs microseconds per call
        yield n
        return
    numba.set_num_threads(n)
    try:
        yield n
    finally:
        numba.set_num_threads(previous)


def is_dask(x: Any) -> bool:
    """True for dask collections (without importing dask when it is not loaded)."""
    return type(x).__module__.startswith("dask.") and hasattr(x, "__dask_graph__")


def is_xarray(x: Any) -> bool:
    """True for ``xarray.DataArray`` (and ``Dataset``) objects."""
    return type(x).__module__.startswith("xarray.")


ensure_threading_layer()
