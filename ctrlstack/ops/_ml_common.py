"""Helpers shared by the ML kernel families (clustering, distances, linear models).

Two jobs, both pure of kernel logic:

* **Validation and conversion** of 2-D/1-D float inputs, with errors that name the argument.
  Integer and boolean-free real inputs become float64; float32 stays float32 (perf.md trap 5).
* **BLAS inside ``prange``** (perf.md trap 3): a kernel that calls ``np.dot`` from several Numba
  threads must run with OpenBLAS limited to one thread, or the nested pools oversubscribe the
  cores 3-10x.  :func:`single_threaded_blas` does that with a process-wide reference count, so
  several Python threads (Dask task threads) entering it at once neither fight over the limit nor
  leave BLAS stuck at one thread when the last of them leaves.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

__all__ = [
    "as_float_array",
    "result_dtype",
    "single_threaded_blas",
]

_FLOAT_KINDS = "f"
_INT_KINDS = "iu"


def result_dtype(*arrays: Any) -> np.dtype[Any]:
    """float32 when every input is float32, float64 otherwise (ints promote to float64)."""
    if arrays and all(np.asarray(a).dtype == np.float32 for a in arrays):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def as_float_array(
    name: str,
    x: Any,
    ndim: int,
    *,
    dtype: Any = None,
    allow_empty: bool = True,
) -> np.ndarray:
    """Return ``x`` as a C-contiguous float32/float64 array with ``ndim`` dimensions.

    Raises ``TypeError`` for non-numeric, boolean, complex or float16 data and ``ValueError``
    for the wrong number of dimensions; both messages name the argument.  No copy is made when
    ``x`` is already suitable.
    """
    arr = np.asarray(x)
    kind = arr.dtype.kind
    if kind in _INT_KINDS:
        target = np.dtype(np.float64) if dtype is None else np.dtype(dtype)
    elif kind in _FLOAT_KINDS and arr.dtype in (np.float32, np.float64):
        target = arr.dtype if dtype is None else np.dtype(dtype)
    else:
        raise TypeError(
            f"{name} must hold integers, float32 or float64, got dtype {arr.dtype} "
            "(cast it with .astype(np.float64))"
        )
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if not allow_empty and arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=target)


_blas_lock = threading.Lock()
_blas_users = 0
_blas_limiter: Any = None


@functools.cache
def _blas_controller() -> Any:
    # Scanning the loaded libraries costs ~1 ms, so it is done once.  Numba's np.dot calls scipy's OpenBLAS (through scipy.linalg.cython_blas), which is a
    # different library from numpy's: import it first so threadpoolctl sees and limits both.
    import scipy.linalg.cython_blas  # noqa: F401
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
