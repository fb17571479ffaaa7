"""The one input validator and the work-splitting helpers shared by every kernel family.

Kept free of Numba so the wrappers' argument checks run (and fail) before any compile is
triggered.  :func:`as_real_array` is the single dtype rule (integers, float32, float64; never
bool, complex or float16, which would hide a copy or a precision loss);
:func:`as_float_array` is the same rule plus the conversion the BLAS-shaped kernels need.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

__all__ = [
    "as_float_array",
    "as_real_array",
    "as_real_lazy",
    "check_out",
    "check_positive_int",
    "normalize_axis",
    "overlaps",
    "result_dtype",
    "row_segments",
    "split",
]

_REAL_KINDS = "iuf"


def as_real_array(x: Any, name: str, *, allow_int: bool = True) -> np.ndarray:
    """``np.asarray(x)`` restricted to integer/float32/float64 dtypes (TypeError otherwise).

    float16, bool and complex are rejected rather than silently converted: the kernels
    accumulate in float64 and a silent upcast would hide a copy of the caller's (possibly huge)
    array.  The message names the argument and says how to fix it.  Byte-swapped input (a
    big-endian file read with ``np.fromfile``, say) comes back in native order, as a copy: the
    compiled kernels take native numbers only.
    """
    arr = np.asarray(x)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    kind = arr.dtype.kind
    ok_float = kind == "f" and arr.dtype.itemsize in (4, 8)
    ok_int = allow_int and kind in "iu"
    if not (ok_float or ok_int):
        allowed = "integers, float32 or float64" if allow_int else "float32 or float64"
        raise TypeError(
            f"{name} must hold {allowed}, got dtype {arr.dtype} (cast it with .astype(np.float64))"
        )
    return arr


def as_real_lazy(a: Any, name: str) -> Any:
    """:func:`as_real_array`'s dtype rule for a lazy (Dask) array, without computing it.

    Returns ``a``, or ``a`` cast lazily to native byte order when it is byte-swapped (the
    blocks then reach the compiled kernels as native numbers).
    """
    as_real_array(np.empty(0, a.dtype), name)
    return a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))


def as_float_array(
    name: str,
    x: Any,
    ndim: int,
    *,
    dtype: Any = None,
    allow_empty: bool = True,
) -> np.ndarray:
    """:func:`as_real_array`, then a C-contiguous float array with ``ndim`` dimensions.

    Integers become float64 (or ``dtype``); float32 stays float32 unless ``dtype`` says
    otherwise.  No copy is made when ``x`` is already suitable.
    """
    arr = as_real_array(x, name)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if not allow_empty and arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    if dtype is not None:
        target = np.dtype(dtype)
    else:
        target = arr.dtype if arr.dtype.kind == "f" else np.dtype(np.float64)
    return np.ascontiguousarray(arr, dtype=target)


def result_dtype(*arrays: Any) -> np.dtype[Any]:
    """float32 when every input is float32, float64 otherwise (ints promote to float64)."""
    if arrays and all(np.asarray(a).dtype == np.float32 for a in arrays):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def check_positive_int(value: Any, name: str, *, minimum: int = 1) -> int:
    """Return ``value`` as an int, raising TypeError for non-integers and ValueError below minimum."""
    if type(value) is int and value >= minimum:  # the usual case, in a tenth of the time
        return value
    if isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        out = operator.index(value)
    except TypeError as exc:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from exc
    if out < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {out}")
    return out


def normalize_axis(axis: Any, ndim: int, name: str = "axis") -> int:
    """Map a possibly negative ``axis`` into ``range(ndim)`` with a clear error."""
    if isinstance(axis, bool | np.bool_):
        raise TypeError(f"{name} must be an integer, got {axis!r}")
    try:
        ax = operator.index(axis)
    except TypeError as exc:
        raise TypeError(f"{name} must be an integer, got {type(axis).__name__}") from exc
    if not -ndim <= ax < ndim:
        raise ValueError(f"{name}={ax} is out of range for an array with {ndim} dimension(s)")
    return ax % ndim


def check_out(
    out: Any,
    shape: tuple[int, ...],
    dtype: np.dtype,
    name: str = "out",
    *,
    c_contiguous: bool = False,
) -> np.ndarray:
    """Validate a caller-supplied output buffer: exact shape and dtype, writeable, and
    C-contiguous when the kernel writes rows in place (``c_contiguous``).

    The one ``out=`` check of every family: ``TypeError`` for a non-array or the wrong dtype,
    ``ValueError`` for the wrong shape, layout or a read-only buffer.
    """
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {out.shape}")
    if out.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {out.dtype}")
    if c_contiguous and not out.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (np.ascontiguousarray, or order='C')")
    if not out.flags.writeable:
        raise ValueError(f"{name} must be writeable")
    return out


def overlaps(out: np.ndarray, *inputs: Any) -> bool:
    """Whether ``out`` may share memory with one of the NumPy ``inputs``.

    The kernels read inputs after writing outputs (windows, stencil neighbours, GEMM tiles),
    so an ``out`` that overlaps an input would turn into wrong values without an error.
    Callers then compute into a temporary and copy, as NumPy's ufuncs do.  A bounds test
    (``np.may_share_memory``): it can say yes for interleaved views that never touch, which
    only costs that temporary.
    """
    return any(isinstance(a, np.ndarray) and np.may_share_memory(out, a) for a in inputs)


def split(n: int, parts: int) -> np.ndarray:
    """``parts + 1`` boundaries splitting ``range(n)`` into near-equal contiguous pieces."""
    parts = max(1, min(parts, n)) if n > 0 else 1
    return _cuts(n, parts)


def _cuts(n: int, parts: int) -> np.ndarray:
    """``floor(i * n / parts)`` for ``i = 0..parts``, in integers: exact for any ``n``, and a
    few microseconds cheaper per call than ``np.linspace(...).astype(int)``, which every
    kernel call paid twice (measured; it mattered for small inputs)."""
    return np.array([i * n // parts for i in range(parts + 1)], dtype=np.int64)


def row_segments(
    nrows: int, n: int, threads: int, min_segment: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Tasks ``(rows, starts, stops, thread_bounds)`` for ``threads`` workers over ``nrows × n``.

    Rows are the unit of work when there are enough of them; otherwise each row is cut into
    segments of at least ``min_segment`` values, so a few long rows still use every thread.
    ``thread_bounds`` splits the task list into near-equal contiguous runs, one per worker.
    """
    segs = 1
    if 0 < nrows < threads:
        segs = max(1, min(-(-threads // nrows), n // min_segment))
    # Built without repeat/tile: on small inputs this planning was a visible share of a call.
    if segs == 1:
        rows = np.arange(nrows, dtype=np.int64)
        starts = np.zeros(nrows, dtype=np.int64)
        stops = np.full(nrows, n, dtype=np.int64)
    else:  # nrows < threads here: a handful of tasks
        cuts = [i * n // segs for i in range(segs + 1)]
        rows = np.array([r for r in range(nrows) for _ in range(segs)], dtype=np.int64)
        starts = np.array(cuts[:-1] * nrows, dtype=np.int64)
        stops = np.array(cuts[1:] * nrows, dtype=np.int64)
    workers = max(1, min(threads, rows.shape[0]))
    bounds = _cuts(int(rows.shape[0]), workers)
    return rows, starts, stops, bounds
