"""1-D and 2-D histograms with NumPy's exact binning rules, on NumPy and Dask arrays.

Why not ``np.histogram``: it is single-threaded and sorts or ``bincount``s through temporaries
(~1.8 s for 1e8 values here, perf.md §3); one fused pass that computes each bin index and
increments a private per-thread histogram is an order of magnitude faster.

Binning rules (identical to NumPy, so results are equal bin for bin):

* bin ``i`` holds ``edges[i] <= x < edges[i + 1]``; the **last bin is closed** (``x == edges[-1]``
  counts).  Values outside ``[edges[0], edges[-1]]`` and NaN are ignored.
* ``bins`` as an int: edges are ``np.linspace(lo, hi, bins + 1)`` in NumPy's bin dtype; with
  ``range=None`` the range is the data's min/max, and NumPy's error for a non-finite
  (NaN/inf-containing) autodetected range is raised.  Uniform bins compute the index
  arithmetically, then correct it against the edge array (as NumPy does), so rounding can never
  move a value into a different bin than NumPy's.
* ``bins`` as an array: explicit, monotonically non-decreasing edges (binary search).

Parallelism: the input is split into one contiguous piece per thread, each piece fills a private
histogram (allocated by NumPy in the wrapper, perf.md trap 1) and the pieces are summed.  Dask:
per-block histograms (``map_blocks`` with a new bin axis) summed by Dask's tree reduction; the
edges must be known up front, so ``range`` (or explicit edges) is required.
"""

from __future__ import annotations

import operator
from typing import Any, Literal

import numba
import numpy as np

from ctrlstack.ops._check import as_real_array, as_real_lazy, split
from ctrlstack.ops._runtime import is_dask, is_xarray, kernel_threads

__all__ = ["histogram", "histogram2d"]


# --------------------------------------------------------------------------- kernels


@numba.njit(cache=True, nogil=True, inline="always")
def _bin_index(x: Any, edges: Any, norm: float, lut: Any) -> int:  # pragma: no cover
    """Bin of ``x`` under NumPy's rules, or -1 when outside ``[edges[0], edges[-1]]``/NaN.

    ``norm > 0`` selects the arithmetic start guess: the bin itself for uniform edges, or a
    cell of ``lut`` (the bin at each cell's left end) for explicit edges.  The guess is then
    corrected against the edge array, which is what decides (as in NumPy).  ``norm == 0``
    (non-finite explicit edges) falls back to binary search.
    """
    nb = edges.shape[0] - 1
    if not (x >= edges[0] and x <= edges[nb]):
        return -1
    if norm > 0.0:
        cell = int((x - edges[0]) * norm)
        if lut.shape[0] > 0:
            cell = lut[max(min(cell, lut.shape[0] - 1), 0)]
        idx = max(min(cell, nb - 1), 0)
        while idx > 0 and x < edges[idx]:
            idx -= 1
        while idx < nb - 1 and x >= edges[idx + 1]:
            idx += 1
        return idx
    lo = 0
    hi = nb  # invariant: edges[lo] <= x, answer < hi
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if edges[mid] <= x:
            lo = mid
        else:
            hi = mid
    return lo


# Every inner loop runs 0-based over a slice: with ``range(start, stop)`` Numba cannot prove the
# index is non-negative and emits negative-index wraparound code, which cost ~2x here (measured).


@numba.njit(cache=True, nogil=True, parallel=True)
def _hist1d_count(a, edges, norm, lut, bounds, partial):  # type: ignore[no-untyped-def]  # pragma: no cover
    for t in numba.prange(bounds.shape[0] - 1):
        p = partial[t]
        seg = a[bounds[t] : bounds[t + 1]]
        for i in range(seg.shape[0]):  # 0-based: no negative-index wraparound code
            idx = _bin_index(seg[i], edges, norm, lut)
            if idx >= 0:
                p[idx] += 1


@numba.njit(cache=True, nogil=True, parallel=True)
def _hist1d_weighted(a, w, edges, norm, lut, bounds, partial):  # type: ignore[no-untyped-def]  # pragma: no cover
    for t in numba.prange(bounds.shape[0] - 1):
        p = partial[t]
        seg = a[bounds[t] : bounds[t + 1]]
        wseg = w[bounds[t] : bounds[t + 1]]
        for i in range(seg.shape[0]):
            idx = _bin_index(seg[i], edges, norm, lut)
            if idx >= 0:
                p[idx] += wseg[i]


@numba.njit(cache=True, nogil=True, parallel=True)
def _hist2d(x, y, w, ex, ey, normx, normy, lx, ly, bounds, partial):  # type: ignore[no-untyped-def]  # pragma: no cover
    weighted = w.shape[0] > 0
    for t in numba.prange(bounds.shape[0] - 1):
        p = partial[t]
        lo = bounds[t]
        xs = x[lo : bounds[t + 1]]
        ys = y[lo : bounds[t + 1]]
        for i in range(xs.shape[0]):
            ix = _bin_index(xs[i], ex, normx, lx)
            if ix < 0:
                continue
            iy = _bin_index(ys[i], ey, normy, ly)
            if iy < 0:
                continue
            if weighted:
                p[ix, iy] += w[lo + i]
            else:
                p[ix, iy] += 1.0


@numba.njit(cache=True, nogil=True, parallel=True)
def _minmax(a, bounds, lo, hi, nan):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Per-piece min/max and a NaN flag, in one pass (for ``range=None``)."""
    for t in numba.prange(bounds.shape[0] - 1):
        seg = a[bounds[t] : bounds[t + 1]]
        mn = seg[0]
        mx = seg[0]
        seen_nan = False
        for i in range(seg.shape[0]):
            v = seg[i]
            if np.isnan(v):
                seen_nan = True
            elif v < mn or np.isnan(mn):
                mn = v
            if v > mx or np.isnan(mx):
                mx = v
        lo[t] = mn
        hi[t] = mx
        nan[t] = seen_nan


# --------------------------------------------------------------------------- edges (pure)


class _Bins:
    """Resolved edges for one dimension, plus what the kernel needs for an O(1) start guess.

    Uniform edges: ``norm = nbins / span`` maps a value straight to its bin.  Explicit edges:
    a lookup table over ``16 * nbins`` equal cells holds the bin at each cell's left end, so the
    kernel starts there and walks a step or two instead of binary-searching (~4x faster for
    100 edges).  The edge comparisons after the guess make the result exact either way.
    """

    def __init__(self, edges: np.ndarray, uniform: bool) -> None:
        self.edges = edges
        self.uniform = uniform
        nb = edges.shape[0] - 1
        lo, hi = float(edges[0]), float(edges[-1])
        span = hi - lo
        self.lut = np.empty(0, dtype=np.int64)
        self.norm = 0.0
        if not (np.isfinite(span) and span > 0):
            return  # degenerate or infinite edges: binary search
        if uniform:
            self.norm = nb / span
            return
        # Fine cells make "a cell holds an edge" (a data-dependent, mispredicted walk) rare,
        # while the table stays cache-resident.
        cells = min(max(16 * nb, 1024), 1 << 18)
        self.norm = cells / span
        left = lo + span * (np.arange(cells) / cells)
        self.lut = np.clip(np.searchsorted(edges, left, side="right") - 1, 0, nb - 1)

    @property
    def nbins(self) -> int:
        return int(self.edges.shape[0] - 1)


def _data_minmax(a: np.ndarray, threads: int | None) -> tuple[Any, Any]:
    """(min, max) like ``a.min(), a.max()``: NaN if any NaN (so NumPy's range error follows)."""
    with kernel_threads(threads) as n:
        bounds = split(a.shape[0], n)
        parts = bounds.shape[0] - 1
        lo = np.empty(parts, dtype=a.dtype)
        hi = np.empty(parts, dtype=a.dtype)
        nan = np.zeros(parts, dtype=np.bool_)
        _minmax(a, bounds, lo, hi, nan)
    if nan.any():
        return a.dtype.type(np.nan), a.dtype.type(np.nan)
    return lo.min(), hi.max()


def _outer_edges(rng: Any, minmax: Any, size: int) -> tuple[Any, Any]:
    """NumPy's ``_get_outer_edges``: validate ``range`` or use the data's; widen empty ranges."""
    if rng is not None:
        try:
            first, last = rng
        except (TypeError, ValueError) as exc:
            raise ValueError(f"range must be a (min, max) pair, got {rng!r}") from exc
        if first > last:
            raise ValueError(f"range must satisfy min <= max, got {rng!r}")
        if not (np.isfinite(first) and np.isfinite(last)):
            raise ValueError(f"supplied range of [{first}, {last}] is not finite")
    elif size == 0:
        first, last = 0, 1
    else:
        first, last = minmax()
        if not (np.isfinite(first) and np.isfinite(last)):
            raise ValueError(
                f"autodetected range of [{first}, {last}] is not finite "
                "(the data contains NaN or inf); pass range=(min, max) to ignore them"
            )
    if first == last:
        first = first - 0.5
        last = last + 0.5
    return first, last


def _explicit_edges(bins: Any, name: str) -> np.ndarray:
    edges = np.asarray(bins)
    if edges.ndim != 1 or edges.shape[0] < 2:
        raise ValueError(f"{name} as an array must be 1-D with at least 2 edges, got {edges.shape}")
    if edges.dtype.kind not in "iuf":
        raise TypeError(f"{name} edges must be numeric, got dtype {edges.dtype}")
    if edges.dtype.kind == "f" and np.isnan(edges).any():  # NaN compares false: test it first
        raise ValueError(f"{name} edges must not be NaN, got {edges.tolist()[:8]}")
    if np.any(edges[:-1] > edges[1:]):
        raise ValueError(f"{name} must increase monotonically, when an array")
    return edges.astype(np.float64, copy=False)


def _count_bins(bins: Any, name: str) -> int:
    if isinstance(bins, bool | np.bool_):
        raise TypeError(f"{name} must be an int or a 1-D array of edges, got {bins!r}")
    try:
        n = operator.index(bins)
    except TypeError as exc:
        raise TypeError(f"{name} must be an int or a 1-D array of edges, got {bins!r}") from exc
    if n < 1:
        raise ValueError(f"{name} must be positive, when an integer (got {n})")
    return n


def _uniform_edges(n: int, first: Any, last: Any, data_dtype: np.dtype, numpy2d: bool) -> _Bins:
    """Edges as NumPy builds them (dtype included): histogram uses the bin dtype, 2-D plain linspace."""
    if numpy2d:
        edges = np.linspace(first, last, n + 1)
    else:
        bin_type = np.result_type(first, last, np.empty(0, dtype=data_dtype))
        if np.issubdtype(bin_type, np.integer):
            bin_type = np.result_type(bin_type, float)
        edges = np.linspace(first, last, n + 1, endpoint=True, dtype=bin_type)
    if np.any(edges[:-1] >= edges[1:]):
        raise ValueError(f"Too many bins for data range. Cannot create {n} finite-sized bins.")
    return _Bins(edges, uniform=True)


# --------------------------------------------------------------------------- 1-D


def histogram(
    a: Any,
    bins: Any = 10,
    range: Any = None,  # NumPy's name, kept for drop-in use
    *,
    weights: Any = None,
    density: bool = False,
    threads: int | None = None,
) -> tuple[Any, np.ndarray]:
    """Drop-in for :func:`numpy.histogram` (int or explicit-edge bins); returns ``(hist, edges)``.

    ``hist`` is int64 counts, or the weights' dtype when weighted (float64 when ``density``).
    Dask input returns a lazy dask ``hist`` and NumPy ``edges``; ``range`` (or explicit edges) is
    then required because edges must be known before any block is read.  An xarray object is
    histogrammed through its underlying (NumPy or Dask) data.
    """
    if is_xarray(a):
        a = a.data
        if weights is not None and is_xarray(weights):
            weights = weights.data
    if is_dask(a) or is_dask(weights):
        return _histogram_dask(a, bins, range, weights, density, threads)
    arr = as_real_array(a, "a")
    w = None if weights is None else as_real_array(weights, "weights")
    if w is not None and w.shape != arr.shape:
        raise ValueError(f"weights must have the same shape as a: {w.shape} != {arr.shape}")
    if w is None:
        flat = arr.ravel(order="K")
    else:
        order: Literal["C", "F"] = "F" if arr.flags.f_contiguous and w.flags.f_contiguous else "C"
        flat, w = arr.ravel(order=order), w.ravel(order=order)
    spec = _resolve_1d(flat, bins, range, threads)
    hist = _hist_numpy(flat, w, spec, threads)
    return _finish_1d(hist, spec.edges, density)


def _resolve_1d(flat: np.ndarray, bins: Any, rng: Any, threads: int | None) -> _Bins:
    if np.ndim(bins) == 1:
        return _Bins(_explicit_edges(bins, "bins"), uniform=False)
    if np.ndim(bins) != 0:
        raise ValueError(f"bins must be an int or a 1-D array of edges, got ndim={np.ndim(bins)}")
    n = _count_bins(bins, "bins")
    first, last = _outer_edges(rng, lambda: _data_minmax(flat, threads), flat.shape[0])
    return _uniform_edges(n, first, last, flat.dtype, numpy2d=False)


def _hist_numpy(flat: np.ndarray, w: np.ndarray | None, spec: _Bins, threads: int | None) -> Any:
    with kernel_threads(threads) as n:
        # Tiny inputs are not worth waking the pool; pieces of >= 64k values amortise the merge.
        bounds = split(flat.shape[0], min(n, max(1, flat.shape[0] // 65536)))
        parts = bounds.shape[0] - 1
        if w is None:
            partial = np.zeros((parts, spec.nbins), dtype=np.int64)
            _hist1d_count(flat, spec.edges, spec.norm, spec.lut, bounds, partial)
            return partial.sum(axis=0)
        acc = np.int64 if w.dtype.kind in "iu" else np.float64
        partial = np.zeros((parts, spec.nbins), dtype=acc)
        _hist1d_weighted(flat, w, spec.edges, spec.norm, spec.lut, bounds, partial)
        return partial.sum(axis=0).astype(w.dtype, copy=False)


def _finish_1d(hist: Any, edges: np.ndarray, density: bool) -> tuple[Any, np.ndarray]:
    if density:
        widths = np.diff(edges)
        return hist / widths / hist.sum(), edges
    return hist, edges


def _histogram_dask(
    a: Any, bins: Any, rng: Any, weights: Any, density: bool, threads: int | None
) -> tuple[Any, np.ndarray]:
    import dask.array as da

    a = da.asarray(a)
    a = as_real_lazy(a, "a")  # the one dtype rule, without computing
    if np.ndim(bins) == 1:
        spec = _Bins(_explicit_edges(bins, "bins"), uniform=False)
    else:
        if rng is None:
            raise ValueError(
                "range=(min, max) is required for a dask array with integer bins "
                "(edges must be known before the blocks are read)"
            )
        n = _count_bins(bins, "bins")
        first, last = _outer_edges(rng, None, 1)
        spec = _uniform_edges(n, first, last, a.dtype, numpy2d=False)
    nb = spec.nbins
    args = [a]
    if weights is not None:
        w = da.asarray(weights)
        if w.shape != a.shape:
            raise ValueError(f"weights must have the same shape as a: {w.shape} != {a.shape}")
        args.append(w.rechunk(a.chunks))
        out_dtype = np.dtype(np.int64 if w.dtype.kind in "iu" else np.float64)
    else:
        out_dtype = np.dtype(np.int64)

    def block(x: np.ndarray, wb: np.ndarray | None = None) -> np.ndarray:
        h = _hist_numpy(x.ravel(), None if wb is None else wb.ravel(), spec, threads)
        return np.asarray(h, dtype=out_dtype).reshape((1,) * x.ndim + (nb,))

    chunks = (*((1,) * len(c) for c in a.chunks), (nb,))
    per_block = da.map_blocks(block, *args, chunks=chunks, new_axis=a.ndim, dtype=out_dtype)
    hist = per_block.sum(axis=tuple(range(a.ndim)))
    if weights is not None:
        hist = hist.astype(args[1].dtype)
    return _finish_1d(hist, spec.edges, density)


# --------------------------------------------------------------------------- 2-D


def histogram2d(
    x: Any,
    y: Any,
    bins: Any = 10,
    range: Any = None,  # NumPy's name
    *,
    weights: Any = None,
    density: bool = False,
    threads: int | None = None,
) -> tuple[Any, np.ndarray, np.ndarray]:
    """Drop-in for :func:`numpy.histogram2d`; returns ``(H, xedges, yedges)`` with float64 ``H``.

    ``bins`` follows NumPy: an int, a pair ``[bx, by]`` (each an int or edges) or one edge array
    used for both axes.  Dask 1-D ``x``/``y`` return a lazy ``H`` (``range`` or edges required).
    """
    if is_xarray(x):
        x = x.data
    if is_xarray(y):
        y = y.data
    if is_xarray(weights):
        weights = weights.data
    if any(is_dask(v) for v in (x, y, weights)):
        return _histogram2d_dask(x, y, bins, range, weights, density, threads)
    xa = as_real_array(x, "x")
    ya = as_real_array(y, "y")
    if xa.ndim != 1 or ya.ndim != 1 or xa.shape != ya.shape:
        raise ValueError(f"x and y must be 1-D of equal length, got {xa.shape} and {ya.shape}")
    w = None if weights is None else as_real_array(weights, "weights")
    if w is not None and w.shape != xa.shape:
        raise ValueError(f"weights must have the shape of x: {w.shape} != {xa.shape}")
    sample_dtype = np.result_type(xa.dtype, ya.dtype)
    bx, by = _split_bins2d(bins)
    rx, ry = _split_range2d(range)
    specs = [
        _resolve_2d_dim(v, b, r, sample_dtype, threads, name)
        for v, b, r, name in ((xa, bx, rx, "bins[0]"), (ya, by, ry, "bins[1]"))
    ]
    xa, ya = np.ascontiguousarray(xa), np.ascontiguousarray(ya)
    w = None if w is None else np.ascontiguousarray(w)
    hist = _hist2d_numpy(xa, ya, w, specs[0], specs[1], threads)
    return _finish_2d(hist, specs[0].edges, specs[1].edges, density)


def _split_bins2d(bins: Any) -> tuple[Any, Any]:
    try:
        n = len(bins)
    except TypeError:
        n = 1
    if n == 1 and np.ndim(bins) == 0:
        return bins, bins
    if n == 2:
        return bins[0], bins[1]
    edges = np.asarray(bins)
    return edges, edges


def _split_range2d(rng: Any) -> tuple[Any, Any]:
    if rng is None:
        return None, None
    try:
        rx, ry = rng
    except (TypeError, ValueError) as exc:
        raise ValueError(f"range must be [[xmin, xmax], [ymin, ymax]], got {rng!r}") from exc
    return rx, ry


def _resolve_2d_dim(
    v: np.ndarray, bins: Any, rng: Any, sample_dtype: np.dtype, threads: int | None, name: str
) -> _Bins:
    if np.ndim(bins) == 1:
        return _Bins(_explicit_edges(bins, name), uniform=False)
    if np.ndim(bins) != 0:
        raise ValueError(f"{name} must be a scalar or 1d array")
    n = _count_bins(bins, name)

    def minmax() -> tuple[Any, Any]:
        lo, hi = _data_minmax(v, threads)
        return sample_dtype.type(lo), sample_dtype.type(hi)

    first, last = _outer_edges(rng, minmax if v.shape[0] else None, v.shape[0])
    return _uniform_edges(n, first, last, sample_dtype, numpy2d=True)


def _hist2d_numpy(
    x: np.ndarray, y: np.ndarray, w: np.ndarray | None, sx: _Bins, sy: _Bins, threads: int | None
) -> np.ndarray:
    wk = np.empty(0, dtype=np.float64) if w is None else w
    with kernel_threads(threads) as n:
        bounds = split(x.shape[0], min(n, max(1, x.shape[0] // 65536)))
        partial = np.zeros((bounds.shape[0] - 1, sx.nbins, sy.nbins), dtype=np.float64)
        _hist2d(x, y, wk, sx.edges, sy.edges, sx.norm, sy.norm, sx.lut, sy.lut, bounds, partial)
    return partial.sum(axis=0)


def _finish_2d(
    hist: Any, ex: np.ndarray, ey: np.ndarray, density: bool
) -> tuple[Any, np.ndarray, np.ndarray]:
    if density:
        total = hist.sum()
        hist = hist / np.diff(ex)[:, None] / np.diff(ey)[None, :] / total
    return hist, ex, ey


def _histogram2d_dask(
    x: Any, y: Any, bins: Any, rng: Any, weights: Any, density: bool, threads: int | None
) -> tuple[Any, np.ndarray, np.ndarray]:
    import dask.array as da

    x, y = da.asarray(x), da.asarray(y)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"x and y must be 1-D of equal length, got {x.shape} and {y.shape}")
    bx, by = _split_bins2d(bins)
    rx, ry = _split_range2d(rng)
    sample_dtype = np.result_type(x.dtype, y.dtype)
    specs = []
    for b, r, name in ((bx, rx, "bins[0]"), (by, ry, "bins[1]")):
        if np.ndim(b) == 1:
            specs.append(_Bins(_explicit_edges(b, name), uniform=False))
            continue
        if r is None:
            raise ValueError(
                f"range is required for dask inputs with integer {name} "
                "(edges must be known before the blocks are read)"
            )
        first, last = _outer_edges(r, None, 1)
        specs.append(_uniform_edges(_count_bins(b, name), first, last, sample_dtype, True))
    sx, sy = specs
    args = [x, y.rechunk(x.chunks)]
    if weights is not None:
        args.append(da.asarray(weights).rechunk(x.chunks))

    def block(xb: np.ndarray, yb: np.ndarray, wb: np.ndarray | None = None) -> np.ndarray:
        return _hist2d_numpy(xb, yb, wb, sx, sy, threads)[None]

    chunks = ((1,) * len(x.chunks[0]), (sx.nbins,), (sy.nbins,))
    per_block = da.map_blocks(block, *args, chunks=chunks, new_axis=[1, 2], dtype=np.float64)
    return _finish_2d(per_block.sum(axis=0), sx.edges, sy.edges, density)
