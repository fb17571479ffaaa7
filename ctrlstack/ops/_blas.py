"""BLAS thread limit for the tiled kernels.

perf.md trap 3: BLAS called from several threads at once must run with OpenBLAS limited to one
thread, or the nested pools oversubscribe the cores 3-10x.  :func:`single_threaded_blas` does that
with a process-wide reference count, so several Python threads (Dask task threads) entering it at
once neither fight over the limit nor leave BLAS stuck at one thread when the last of them leaves.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["single_threaded_blas"]

_blas_lock = threading.Lock()
_blas_users = 0
_blas_limiter: Any = None


@functools.cache
def _blas_controller() -> Any:
    # Scanning the loaded libraries costs ~1 ms, so it is done once.  Only NumPy's BLAS is
    # used (no kernel calls BLAS from Numba, which would need SciPy's: see _tiles.py).
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Limit every loaded BLAS to one thread while any caller is inside this block.

    Reference counted across Python threads: the first to enter applies the limit, the last to
    leave restores what was there before.  The limit is process-wide (BLAS has no per-thread
    setting), so BLAS calls made elsewhere in the process meanwhile also run single-threaded.
    """
    global _blas_users, _blas_limiter
    with _blas_lock:
        if _blas_users == 0:
            _blas_limiter = _blas_controller().limit(limits=1, user_api="blas")
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0 and _blas_limiter is not None:
                _blas_limiter.restore_original_limits()
                _blas_limiter = None
