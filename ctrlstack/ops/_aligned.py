"""Scratch and accumulator arrays that start on a cache-line boundary.

Why this exists: NumPy aligns a small allocation to 16 bytes only (what ``malloc`` gives), and
the vector loops of the kernels read and write their per-thread accumulators and tiles in
32- or 64-byte steps.  On a 16-byte boundary every such access that is a whole vector wide
straddles two cache lines.  The cost is large where a loop updates a small accumulator once per
row: ``logistic_loss_grad``'s gradient partial (32 float64, rewritten for every row of ``X``) ran
13.1 ms with 64-byte alignment and 19.2 ms when the same buffer sat 16 bytes off (1e6 x 32
float32, 1 thread, Zen 4, AVX-512; 14.7 against 15.8 ms with AVX2 code).  Which case a user got
depended on where ``malloc`` happened to put the buffer.  Rows of a 2-D array are padded to whole
cache lines as well, so per-thread partials (one row each) never share a line either.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["LINE", "empty", "line_rows"]

#: Bytes per cache line on the CPUs this project runs on (x86-64; also most arm64 cores).
LINE = 64


def _aligned_flat(nbytes: int, dtype: np.dtype, zero: bool = True) -> np.ndarray:
    """A 1-D array of ``nbytes // itemsize`` elements whose data starts on a line."""
    raw = (np.zeros if zero else np.empty)(nbytes + LINE, dtype=np.uint8)
    off = (-raw.ctypes.data) % LINE
    return raw[off : off + nbytes].view(dtype)


def empty(shape: int | tuple[int, ...], dtype: Any = np.float64) -> np.ndarray:
    """``np.empty(shape, dtype)`` starting on a cache line; its pages stay untouched until used,
    so a large output is first touched by the kernel threads that write it."""
    dt = np.dtype(dtype)
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    count = int(np.prod(dims, dtype=np.int64))
    return _aligned_flat(count * dt.itemsize, dt, zero=False).reshape(dims)


def line_rows(rows: int, width: int, dtype: Any = np.float64) -> np.ndarray:
    """A zeroed C-contiguous ``(rows, padded)`` array, ``padded >= width`` a whole number of lines.

    Every row starts on its own cache line, so per-thread partials (one row each) never share
    a line.  Columns from ``width`` on are padding: callers use ``out[:, :width]``.
    """
    dt = np.dtype(dtype)
    per_line = LINE // dt.itemsize
    padded = max(1, -(-width // per_line)) * per_line
    return _aligned_flat(rows * padded * dt.itemsize, dt).reshape(rows, padded)
