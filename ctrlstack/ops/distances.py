"""Pairwise distances and brute-force k-nearest neighbours.

Strategy (perf.md, pairwise section): the fastest known form on this machine is the "BLAS trick"
``|x|^2 - 2 x.y + |y|^2``; what loses time around it is allocating the (m, n) result and the
extra elementwise passes over it.  So each Numba thread takes a block of rows of ``X``, runs one
GEMM for that block straight into the output (or, for kNN, into a per-thread scratch block that
stays in cache), and finishes the block (norms, clamp, sqrt / cosine) while it is hot.  BLAS is
limited to one thread meanwhile (perf.md trap 3); the output is allocated by NumPy in the
wrapper or passed as ``out=`` (trap 1).

Rows holding NaN or inf are computed directly (``sum (x - y)^2``), so they follow
``scipy.spatial.distance.cdist`` (inf stays inf, NaN stays NaN) instead of the trick's ``inf - inf``.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
from numba import prange

from ctrlstack.ops._ml_common import (
    as_float_array,
    result_dtype,
    single_threaded_blas,
)
from ctrlstack.ops._runtime import is_dask, is_xarray, kernel_threads
from ctrlstack.ops._scicheck import check_positive_int

__all__ = ["METRICS", "knn", "pairwise_distances"]

METRICS = ("euclidean", "sqeuclidean", "cosine")
_SQEUCLIDEAN, _EUCLIDEAN, _COSINE = 0, 1, 2
_BLOCK_BYTES = 1 << 20  # one output block per thread: about 1 MiB, in L2 on most x86
_TILE_BYTES = 1 << 19  # kNN: one tile of Y^T (d x tile) stays in L2 across a block of queries


# --------------------------------------------------------------------------------------------
# kernels


@numba.njit(cache=True, nogil=True, inline="always")
def _finish(metric, dot, xn, yn):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Distance from a dot product and the two norms (squared norms for the euclidean family)."""
    if metric == _COSINE:
        den = xn * yn
        sim = dot / den if den > 0.0 else 0.0
        v = 1.0 - sim
        return min(max(v, 0.0), 2.0)
    v = xn + yn - 2.0 * dot
    v = max(v, 0.0)
    if metric == _EUCLIDEAN:
        return math.sqrt(v)
    return v


@numba.njit(cache=True, nogil=True)
def _direct(metric, X, i, Y, j):  # type: ignore[no-untyped-def]  # pragma: no cover
    """One distance computed directly (for rows with NaN/inf, where the trick is wrong)."""
    acc = 0.0
    if metric == _COSINE:
        xx = 0.0
        yy = 0.0
        for q in range(X.shape[1]):
            a = np.float64(X[i, q])
            b = np.float64(Y[j, q])
            acc += a * b
            xx += a * a
            yy += b * b
        den = math.sqrt(xx) * math.sqrt(yy)
        sim = acc / den if den > 0.0 else 0.0
        return 1.0 - sim
    for q in range(X.shape[1]):
        diff = np.float64(X[i, q]) - np.float64(Y[j, q])
        acc += diff * diff
    if metric == _EUCLIDEAN:
        return math.sqrt(acc)
    return acc


@numba.njit(cache=True, nogil=True)
def _finish_row(metric, o, i, dots, X, Y, xn, yn, bad_y, same):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Turn row ``dots`` (x_i . y_j for all j) into distances, written to ``o`` (may alias).

    One branch-free, vectorisable loop per metric; the rare NaN/inf rows (``bad_y``, or a bad
    ``x_i``) are then recomputed directly.
    """
    xi = xn[i]
    n = Y.shape[0]
    if not math.isfinite(xi):
        for j in range(n):
            o[j] = _direct(metric, X, i, Y, j)
        return
    if metric == _EUCLIDEAN:
        for j in range(n):
            o[j] = math.sqrt(max(xi + yn[j] - 2.0 * np.float64(dots[j]), 0.0))
    elif metric == _SQEUCLIDEAN:
        for j in range(n):
            o[j] = max(xi + yn[j] - 2.0 * np.float64(dots[j]), 0.0)
    else:
        for j in range(n):
            o[j] = _finish(_COSINE, np.float64(dots[j]), xi, yn[j])
    for q in range(bad_y.shape[0]):
        o[bad_y[q]] = _direct(metric, X, i, Y, bad_y[q])
    if same:
        o[i] = 0.0


@numba.njit(cache=True, parallel=True, nogil=True)
def _pairwise(X, Y, YT, xn, yn, bad_y, out, metric, same, block):  # type: ignore[no-untyped-def]  # pragma: no cover
    """``out[i, j] = dist(X[i], Y[j])``: per row block one GEMM into ``out``, then finish."""
    m = X.shape[0]
    n_blocks = (m + block - 1) // block
    for b in prange(n_blocks):
        s = b * block
        e = min(s + block, m)
        o = out[s:e]
        np.dot(X[s:e], YT, o)
        for r in range(e - s):
            _finish_row(metric, o[r], s + r, o[r], X, Y, xn, yn, bad_y, same)


@numba.njit(cache=True, nogil=True, inline="always")
def _insert(key, fv, j, keys, vals, idx, filled):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Insert candidate ``j`` into the sorted top-k (after equal keys); returns new ``filled``."""
    k = keys.shape[0]
    q = filled if filled < k else k - 1
    while q > 0 and key < keys[q - 1]:
        keys[q] = keys[q - 1]
        vals[q] = vals[q - 1]
        idx[q] = idx[q - 1]
        q -= 1
    keys[q] = key
    vals[q] = fv
    idx[q] = j
    return filled + 1 if filled < k else filled


@numba.njit(cache=True, nogil=True)
def _select_k(row, offset, skip, keys, vals, idx, filled):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Merge candidates ``row`` (indices ``offset + j``) into the sorted top-k; new ``filled``.

    Candidates are taken in index order and inserted only when strictly below the current
    k-th, so ties keep the lower index first.  NaN ranks after everything (its key is +inf;
    its value, kept in ``vals``, stays NaN).  ``skip`` is a local index to leave out, or -1.
    Once k are held, candidates are screened 32 at a time with a vectorised count of values
    below the k-th; only chunks with a hit are walked one by one.
    """
    k = keys.shape[0]
    n = row.shape[0]
    j = 0
    while j < n and filled < k:
        if j != skip:
            fv = float(row[j])
            filled = _insert(
                np.inf if math.isnan(fv) else fv, fv, offset + j, keys, vals, idx, filled
            )
        j += 1
    while j < n:
        stop = min(j + 32, n)
        worst = keys[k - 1]
        hits = 0
        for jj in range(j, stop):
            hits += row[jj] < worst
        if hits:
            for jj in range(j, stop):
                fv = float(row[jj])
                if fv < keys[k - 1] and jj != skip:
                    filled = _insert(fv, fv, offset + jj, keys, vals, idx, filled)
        j = stop
    return filled


@numba.njit(cache=True, parallel=True, nogil=True)
def _knn(Xg, X, Y, YT, xn, yn, bad_y, metric, exclude_self, scratch, out_d, out_i):  # type: ignore[no-untyped-def]  # pragma: no cover
    """k smallest distances per row of ``X``, tiled over rows of ``X`` and columns of ``Y``.

    ``YT`` is (n_tiles, d, tile): ``Y`` transposed and cut into column tiles that stay in L2
    while a block of query rows is multiplied against them; ``scratch[t]`` is slot ``t``'s
    (block * tile) GEMM output.  ``Xg`` is what goes into the GEMM (``X``, or its normalised
    rows for cosine).  Ranking uses a key monotonic in the distance, one FMA per candidate:
    ``|y|^2 - 2 x.y`` (euclidean family; ``|x|^2`` is constant per row) or ``-x.y`` (cosine).
    Only the k winners become distances.  Candidates in ``bad_y`` (NaN/inf rows) and query rows
    with NaN/inf are computed directly.
    """
    m = X.shape[0]
    n = Y.shape[0]
    k = out_d.shape[1]
    n_tiles, _, tile = YT.shape
    n_slots = scratch.shape[0]
    block = scratch.shape[1] // tile
    n_blocks = (m + block - 1) // block
    cosine = metric == _COSINE
    for t in prange(n_slots):
        keys = np.empty((block, k), dtype=np.float64)
        vals = np.empty((block, k), dtype=np.float64)
        filled = np.zeros(block, dtype=np.int64)
        for b in range(t, n_blocks, n_slots):
            s = b * block
            e = min(s + block, m)
            nr = e - s
            filled[:] = 0
            for ti in range(n_tiles):
                ys = ti * tile
                nc = min(tile, n - ys)
                buf = scratch[t, : nr * tile].reshape((nr, tile))
                np.dot(Xg[s:e], YT[ti], buf)
                for r in range(nr):
                    i = s + r
                    row = buf[r, :nc]
                    xi = xn[i]
                    if not math.isfinite(xi):
                        for j in range(nc):
                            row[j] = _direct(metric, X, i, Y, ys + j)
                    else:
                        if cosine:
                            for j in range(nc):
                                row[j] = -row[j]
                        else:
                            for j in range(nc):
                                row[j] = yn[ys + j] - 2 * row[j]
                        for q in range(bad_y.shape[0]):
                            jj = bad_y[q] - ys
                            if 0 <= jj < nc:
                                row[jj] = _direct(metric, X, i, Y, bad_y[q])
                    skip = i - ys if exclude_self and ys <= i < ys + nc else -1
                    filled[r] = _select_k(row, ys, skip, keys[r], vals[r], out_i[i], filled[r])
            for r in range(nr):
                i = s + r
                xi = xn[i]
                for q in range(k):
                    v = vals[r, q]
                    if not math.isfinite(xi) or not math.isfinite(yn[out_i[i, q]]):
                        out_d[i, q] = v
                    elif cosine:
                        out_d[i, q] = min(max(1.0 + v, 0.0), 2.0)
                    elif metric == _EUCLIDEAN:
                        out_d[i, q] = math.sqrt(max(xi + v, 0.0))
                    else:
                        out_d[i, q] = max(xi + v, 0.0)


# --------------------------------------------------------------------------------------------
# pure helpers


def _metric_code(metric: Any) -> int:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return {"sqeuclidean": _SQEUCLIDEAN, "euclidean": _EUCLIDEAN, "cosine": _COSINE}[metric]


def _norms(A: np.ndarray, code: int) -> np.ndarray:
    """Squared norms (euclidean family) or norms (cosine) in float64; inf/NaN for bad rows."""
    a64 = A.astype(np.float64, copy=False)
    with np.errstate(invalid="ignore", over="ignore"):
        sq = np.einsum("ij,ij->i", a64, a64)
        if not np.isfinite(A).all():
            sq[~np.isfinite(A).all(axis=1)] = np.nan
    return np.sqrt(sq) if code == _COSINE else sq


def _block_rows(n_cols: int, itemsize: int) -> int:
    """Rows per GEMM block so that one block of output stays in L2."""
    return int(min(256, max(16, _BLOCK_BYTES // max(1, n_cols * itemsize))))


def _prepare(X: Any, Y: Any) -> tuple[np.ndarray, np.ndarray, bool]:
    same = Y is None
    dt = result_dtype(X) if same else result_dtype(X, Y)
    Xa = as_float_array("X", X, 2, dtype=dt)
    Ya = Xa if same else as_float_array("Y", Y, 2, dtype=dt)
    if Ya.shape[1] != Xa.shape[1]:
        raise ValueError(f"X has {Xa.shape[1]} columns but Y has {Ya.shape[1]}: they must match")
    return Xa, Ya, same


# --------------------------------------------------------------------------------------------
# public API


def pairwise_distances(
    X: Any,
    Y: Any = None,
    *,
    metric: str = "euclidean",
    out: np.ndarray | None = None,
    threads: int | None = None,
) -> Any:
    """Distances between the rows of ``X`` (m, d) and of ``Y`` (n, d); ``Y=None`` means ``X``.

    ``metric``: ``"euclidean"``, ``"sqeuclidean"`` or ``"cosine"`` (``1 - cos``, clipped to
    [0, 2]; a zero vector has similarity 0 to everything, as in sklearn).  With ``Y=None`` the
    diagonal is exactly 0.  Result dtype: float32 if the inputs are float32, else float64.
    ``out`` (m, n), C-contiguous, of that dtype, avoids the allocation.

    Dask ``X`` (row chunks; ``Y`` must be an in-memory array): lazy ``map_blocks`` result.
    """
    code = _metric_code(metric)
    if is_xarray(X) or is_xarray(Y):
        raise TypeError("pairwise_distances takes NumPy or dask arrays; pass DataArray.data")
    if is_dask(X) or is_dask(Y):
        if out is not None:
            raise TypeError("out= is not supported for dask input")
        return _pairwise_dask(X, Y, metric, threads)
    Xa, Ya, same = _prepare(X, Y)
    m, n = Xa.shape[0], Ya.shape[0]
    out = _check_out(out, (m, n), Xa.dtype)
    if m == 0 or n == 0:
        return out
    xn = _norms(Xa, code)
    yn = xn if same else _norms(Ya, code)
    bad_y = np.flatnonzero(~np.isfinite(yn))
    YT = np.ascontiguousarray(Ya.T)
    block = _block_rows(n, Xa.dtype.itemsize)
    with kernel_threads(threads), single_threaded_blas():
        _pairwise(Xa, Ya, YT, xn, yn, bad_y, out, code, same, block)
    return out


def _check_out(out: np.ndarray | None, shape: tuple[int, int], dtype: np.dtype[Any]) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a NumPy array, got {type(out).__name__}")
    if out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous:
        raise ValueError(
            f"out must be a C-contiguous {dtype} array of shape {shape}, "
            f"got {out.dtype} {out.shape} (c_contiguous={out.flags.c_contiguous})"
        )
    return out


def knn(
    X: Any,
    Y: Any = None,
    k: int | None = None,
    *,
    metric: str = "euclidean",
    threads: int | None = None,
) -> tuple[Any, Any]:
    """The ``k`` nearest rows of ``Y`` for every row of ``X`` (brute force).

    Returns ``(distances, indices)``, both (m, k), sorted by increasing distance; equal distances
    are ordered by increasing index.  ``Y=None`` searches ``X`` among itself *excluding* each
    point (like ``NearestNeighbors().fit(X).kneighbors()``).  ``k`` is required and must not
    exceed the number of candidates.  NaN distances rank last.

    Dask ``X`` (``Y`` in memory): lazy results computed blockwise over row chunks of ``X``.
    """
    if k is None:
        raise TypeError("knn() needs k, the number of neighbours (e.g. knn(X, Y, 5) or k=5)")
    k = check_positive_int(k, "k")
    code = _metric_code(metric)
    if is_xarray(X) or is_xarray(Y):
        raise TypeError("knn takes NumPy or dask arrays; pass DataArray.data")
    if is_dask(X) or is_dask(Y):
        return _knn_dask(X, Y, k, metric, threads)
    Xa, Ya, same = _prepare(X, Y)
    n_cand = Ya.shape[0] - (1 if same else 0)
    if k > n_cand:
        raise ValueError(f"k must be <= the number of candidate rows ({n_cand}), got {k}")
    m = Xa.shape[0]
    out_d = np.empty((m, k), dtype=Xa.dtype)
    out_i = np.empty((m, k), dtype=np.intp)
    if m == 0:
        return out_d, out_i
    xn = _norms(Xa, code)
    yn = xn if same else _norms(Ya, code)
    bad_y = np.flatnonzero(~np.isfinite(yn))
    Xg, Yg = Xa, Ya
    if code == _COSINE:  # rank by -cos: normalise once (zero rows stay zero: similarity 0)
        Xg, Yg = _normalised(Xa, xn), _normalised(Ya, yn)
    YT = _tiled_transpose(Yg)
    block = 64
    with kernel_threads(threads) as nt, single_threaded_blas():
        n_slots = max(1, min(2 * nt, math.ceil(m / block)))
        scratch = np.empty((n_slots, block * YT.shape[2]), dtype=Xa.dtype)
        _knn(Xg, Xa, Ya, YT, xn, yn, bad_y, code, same, scratch, out_d, out_i)
    return out_d, out_i


def _tiled_transpose(Y: np.ndarray) -> np.ndarray:
    """``Y.T`` cut into column tiles (n_tiles, d, tile), zero-padded, each about 512 KiB."""
    n, d = Y.shape
    tile = int(min(4096, max(256, _TILE_BYTES // max(1, d * Y.itemsize))))
    tile = min(tile, max(n, 1))
    n_tiles = max(1, math.ceil(n / tile))
    YT = np.zeros((n_tiles, d, tile), dtype=Y.dtype)
    for ti in range(n_tiles):
        chunk = Y[ti * tile : (ti + 1) * tile]
        YT[ti, :, : chunk.shape[0]] = chunk.T
    return YT


def _normalised(A: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """Rows divided by their norms; zero and non-finite rows are left to the direct path."""
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where((norms > 0) & np.isfinite(norms), 1.0 / norms, 0.0)
    return (A * scale[:, None].astype(A.dtype)).astype(A.dtype, copy=False)


# --------------------------------------------------------------------------------------------
# dask


def _in_memory_y(Y: Any) -> np.ndarray:
    if Y is None:
        raise ValueError(
            "with a dask X, pass Y explicitly as an in-memory array (Y=None would need all of X)"
        )
    if is_dask(Y):
        raise TypeError("Y must be an in-memory (NumPy) array; call Y.compute() if it fits")
    return np.asarray(Y)


def _pairwise_dask(X: Any, Y: Any, metric: str, threads: int | None) -> Any:
    if not is_dask(X):
        raise TypeError("with a dask Y, X must be dask too (Y must be the in-memory side)")
    Ya = _in_memory_y(Y)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D, got shape {X.shape}")
    dt = result_dtype(np.empty(0, X.dtype), Ya)
    Ya = as_float_array("Y", Ya, 2, dtype=dt)
    X = X.rechunk({1: -1})

    def block(xb: np.ndarray) -> np.ndarray:
        return pairwise_distances(xb.astype(dt, copy=False), Ya, metric=metric, threads=threads)

    return X.map_blocks(block, chunks=(X.chunks[0], (Ya.shape[0],)), dtype=dt)


def _knn_dask(X: Any, Y: Any, k: int, metric: str, threads: int | None) -> tuple[Any, Any]:
    if not is_dask(X):
        raise TypeError("with a dask Y, X must be dask too (Y must be the in-memory side)")
    Ya = _in_memory_y(Y)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D, got shape {X.shape}")
    if k > Ya.shape[0]:
        raise ValueError(f"k must be <= the number of candidate rows ({Ya.shape[0]}), got {k}")
    dt = result_dtype(np.empty(0, X.dtype), Ya)
    Ya = as_float_array("Y", Ya, 2, dtype=dt)
    X = X.rechunk({1: -1})

    def block(xb: np.ndarray) -> np.ndarray:
        d, i = knn(xb.astype(dt, copy=False), Ya, k, metric=metric, threads=threads)
        # one task per block returns both results: indices are exact in float64 (< 2**53)
        return np.concatenate([d.astype(np.float64), i.astype(np.float64)], axis=1)

    packed = X.map_blocks(block, chunks=(X.chunks[0], (2 * k,)), dtype=np.float64)
    return packed[:, :k].astype(dt), packed[:, k:].astype(np.intp)
