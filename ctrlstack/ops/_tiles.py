"""Run per-tile work on several Python threads, with BLAS called from Python, not from Numba.

Why this exists: Numba's ``np.dot`` inside ``@njit`` is bound to SciPy's BLAS
(``scipy.linalg.cython_blas``), so any kernel that calls it needs SciPy at run time, and a plain
``pip install ctrlstack`` does not bring SciPy.  NumPy's own BLAS (``@``) is always there.  So
the BLAS-shaped kernels (k-means E-step, pairwise distances, kNN, MLP forward) are written as
"one cache-sized GEMM tile through NumPy, then one compiled serial Numba pass over that tile while
it is hot" and the tiles are spread over ``threads`` Python threads: every step releases the GIL
(NumPy's matmul and the ``nogil`` kernels), so the threads run in parallel.  BLAS is limited to one
thread meanwhile (perf.md trap 3: nested pools oversubscribe the cores).

Slot ``t`` processes tiles ``t, t + T, t + 2T, ...`` so each slot sees the same mix of the data
and owns its scratch buffers (which it also first-touches: they are allocated by the thread that
uses them).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from ctrlstack.ops._blas import single_threaded_blas

__all__ = ["per_slot", "run_tiles"]

_T = TypeVar("_T")

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    """One process-wide pool; its threads only ever run tile loops (they never submit work)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            size = max(8, 2 * (os.cpu_count() or 1))
            _pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="ctrlstack-ops-tile")
        return _pool


def run_tiles(n_tiles: int, threads: int, body: Callable[[int, int], None]) -> int:
    """Call ``body(slot, tile)`` for every tile in ``range(n_tiles)``; returns the slots used.

    ``threads`` slots at most (never more than there are tiles).  Slot 0 runs in the calling
    thread; the others on a shared pool.  The first exception raised by any slot is re-raised
    here after every slot has stopped.
    """
    slots = max(1, min(int(threads), n_tiles))

    def loop(slot: int) -> None:
        # NaN/inf rows are handled by the kernels themselves (recomputed directly), so BLAS
        # producing inf - inf on them is expected, not a warning for the user.
        with np.errstate(invalid="ignore", over="ignore"):
            for tile in range(slot, n_tiles, slots):
                body(slot, tile)

    with single_threaded_blas():
        if slots == 1:
            loop(0)
            return 1
        pool = _executor()
        futures: list[Future[None]] = [pool.submit(loop, s) for s in range(1, slots)]
        error: BaseException | None = None
        try:
            loop(0)
        except BaseException as exc:  # noqa: BLE001 - re-raised once the other slots stopped
            error = exc
        for fut in futures:
            exc2 = fut.exception()
            if error is None and exc2 is not None:
                error = exc2
        if error is not None:
            raise error
    return slots


def per_slot(slots: int, make: Callable[[], _T]) -> Callable[[int], _T]:
    """``get(slot)``: slot ``slot``'s scratch, made by ``make()`` on its first use.

    The first use is in the thread that runs the slot, so that thread first-touches the pages
    (they land on its NUMA node); later tiles of the slot reuse them.
    """
    made: list[_T | None] = [None] * max(1, slots)

    def get(slot: int) -> _T:
        bufs = made[slot]
        if bufs is None:
            bufs = made[slot] = make()
        return bufs

    return get
