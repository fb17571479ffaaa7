"""Pairwise distances and brute-force k-nearest neighbours.

Strategy (perf.md, pairwise section): the fastest known form is the "BLAS trick"
``|x|^2 - 2 x.y + |y|^2``; what loses time around it is allocating the (m, n) result and the
extra elementwise passes over it.  So the output is cut into cache-sized tiles; for each tile
NumPy's BLAS writes ``x.y`` straight into the output (or, for kNN, into a per-thread scratch tile)
and one compiled pass finishes it (norms, clamp, sqrt / cosine, or the top-k selection) while it
is hot.  Tiles are spread over Python threads with BLAS limited to one thread
(:mod:`ctrlstack.ops._tiles`, which also says why BLAS is not called from Numba).  With
``Y=None`` only the tiles on and above the diagonal are computed and each is mirrored, as
NumPy's ``X @ X.T`` (SYRK) does: half the flops, and the result is exactly symmetric.

Rows holding NaN or inf are computed directly (``sum (x - y)^2``), so they follow
``scipy.spatial.distance.cdist`` (inf stays inf, NaN stays NaN) instead of the trick's ``inf - inf``.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np

from ctrlstack.ops import _aligned as aligned
from ctrlstack.ops._check import (
    as_float_array,
    check_out,
    check_positive_int,
    overlaps,
    result_dtype,
)
from ctrlstack.ops._dispatch import is_dask, is_xarray, labelled, unpack_rows
from ctrlstack.ops._runtime import kernel_threads
from ctrlstack.ops._simd import (
    DOT_ROWS,
    MASK_WIDTH,
    VECTOR_BYTES,
    below_mask,
    dot_block_below,
    dot_block_cols,
    lowest_bit,
    transpose_block,
)
from ctrlstack.ops._tiles import per_slot, run_tiles

__all__ = ["METRICS", "knn", "pairwise_distances"]

METRICS = ("euclidean", "sqeuclidean", "cosine")
_SQEUCLIDEAN, _EUCLIDEAN, _COSINE = 0, 1, 2
_OUT_TILE_BYTES = 1 << 19  # one square output tile: about 512 KiB, in L2 on most x86
_TILE_BYTES = 1 << 18  # kNN: one tile of Y^T (d x tile) stays in L2 across a block of queries
_KNN_BLOCK = 256  # kNN query rows per block (one GEMM of 256 x d x ~1000 per tile) ...
_KNN_BLOCK_MIN = 128  # ... or half that when there are too few rows to keep every thread busy
#: Longest rows (plus the norm column) the register-blocked kNN takes; BLAS does longer ones.
_FUSED_MAX_DEPTH = 512


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
def _finish_tile(metric, out, r0, c0, nr, nc, X, Y, xn, yn, bad_y, same, mirror):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Turn ``out[r0:r0+nr, c0:c0+nc]`` (holding ``x_i . y_j``) into distances, in place.

    One branch-free, vectorisable loop per row and metric; the rare NaN/inf rows (``bad_y``, or
    a bad ``x_i``) are then recomputed directly.  With ``mirror`` (``Y is X``) the finished tile
    is also written transposed at ``out[c0:, r0:]``; a diagonal tile copies its upper triangle
    onto its lower one, so the result is exactly symmetric with an exact zero diagonal.
    """
    for r in range(nr):
        i = r0 + r
        xi = xn[i]
        o = out[i, c0 : c0 + nc]
        if not math.isfinite(xi):
            for j in range(nc):
                o[j] = _direct(metric, X, i, Y, c0 + j)
            continue
        yy = yn[c0 : c0 + nc]
        if metric == _EUCLIDEAN:
            # The square root in the output's own dtype, in a second pass: for float32 that is
            # 8 lanes per AVX2 register instead of 4 (within 1 ulp of rounding the float64
            # root; finish pass 6.0 -> 2.8 ms for 4000 x 4000, Zen 3).
            for j in range(nc):
                o[j] = max(xi + yy[j] - 2.0 * np.float64(o[j]), 0.0)
            for j in range(nc):
                o[j] = np.sqrt(o[j])
        elif metric == _SQEUCLIDEAN:
            for j in range(nc):
                o[j] = max(xi + yy[j] - 2.0 * np.float64(o[j]), 0.0)
        else:
            for j in range(nc):
                o[j] = _finish(_COSINE, np.float64(o[j]), xi, yn[c0 + j])
        for q in range(bad_y.shape[0]):
            jj = bad_y[q] - c0
            if 0 <= jj < nc:
                o[jj] = _direct(metric, X, i, Y, bad_y[q])
        if same and c0 <= i < c0 + nc:
            o[i - c0] = 0.0
    if mirror:
        if r0 == c0:
            for r in range(nr):
                for j in range(r + 1, nc):
                    out[c0 + j, r0 + r] = out[r0 + r, c0 + j]
        else:
            # Contiguous reads of the finished rows, scattered writes into the columns of the
            # mirror tile (its lines fill over 16 rows while they sit in L1): 9.0 -> 7.2 ms for
            # the off-diagonal tiles of 4000 x 4000 float32 (Zen 3) against the column reads.
            # Blocks of one vector register square go by vector transposes instead
            # (_simd.transpose_block: a store per register, not per value): 4000 x 4000 float32,
            # 1 thread, 24.7 -> 22.0 ms (24.1 -> 21.0 with AVX2 code).  Below 8 x 8 (float64
            # with AVX2 code) they measured 4 % slower, so that case keeps the scalar loop.
            tw = VECTOR_BYTES // out.itemsize  # transpose_width, as the intrinsic blocks
            nrb = nr - nr % tw if tw >= 8 else 0
            ncb = nc - nc % tw if tw >= 8 else 0
            for rb in range(0, nrb, tw):
                for cb in range(0, ncb, tw):
                    transpose_block(out, r0 + rb, c0 + cb, out, c0 + cb, r0 + rb)
            for r in range(nrb):  # the columns right of the blocks
                src = out[r0 + r, c0 : c0 + nc]
                for j in range(ncb, nc):
                    out[c0 + j, r0 + r] = src[j]
            for r in range(nrb, nr):  # the rows under them (all rows when there are none)
                src = out[r0 + r, c0 : c0 + nc]
                for j in range(nc):
                    out[c0 + j, r0 + r] = src[j]


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
    Once k are held, candidates are screened ``MASK_WIDTH`` at a time by a vector compare
    against the k-th (:func:`~ctrlstack.ops._simd.below_mask`); only the set bits are visited.
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
    while j + MASK_WIDTH <= n:
        # One vector compare per register against the k-th at the block's start (a superset
        # of the hits, as inserts only lower it); only its set bits are visited.  Walking a
        # 64-candidate block one by one on any hit cost 15 of kNN's 36 ms of selection
        # (4000 x 20000, k = 10: about 39 blocks per row hit).
        mask = below_mask(row, j, keys[k - 1])
        while mask != 0:
            jj = j + lowest_bit(mask)
            fv = float(row[jj])
            if fv < keys[k - 1] and jj != skip:
                filled = _insert(fv, fv, offset + jj, keys, vals, idx, filled)
            mask &= mask - 1
        j += MASK_WIDTH
    while j < n:
        fv = float(row[j])
        if fv < keys[k - 1] and j != skip:
            filled = _insert(fv, fv, offset + j, keys, vals, idx, filled)
        j += 1
    return filled


@numba.njit(cache=True, nogil=True)
def _knn_tile(buf, ys, nc, s, X, Y, xn, bad_y, metric, exclude_self, keys, vals, out_i, filled):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Merge one GEMM tile ``buf`` (nr, tile) of ranking keys for candidates ``ys:ys + nc``.

    The GEMM already produced the key, monotonic in the distance (see :func:`_knn_operands`):
    ``|y|^2 - 2 x.y`` (euclidean family; ``|x|^2`` is constant per row) or ``-x.y`` (cosine,
    on normalised rows), so this pass only selects.  Candidates in ``bad_y`` (NaN/inf rows)
    and query rows with NaN/inf are computed directly.
    """
    for r in range(filled.shape[0]):
        i = s + r
        row = buf[r, :nc]
        if not math.isfinite(xn[i]):
            for j in range(nc):
                row[j] = _direct(metric, X, i, Y, ys + j)
        else:
            for q in range(bad_y.shape[0]):
                jj = bad_y[q] - ys
                if 0 <= jj < nc:
                    row[jj] = _direct(metric, X, i, Y, bad_y[q])
        skip = i - ys if exclude_self and ys <= i < ys + nc else -1
        filled[r] = _select_k(row, ys, skip, keys[r], vals[r], out_i[i], filled[r])


@numba.njit(cache=True, nogil=True)
def _knn_finish(s, xn, yn, metric, vals, out_i, out_d):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Turn the k winning keys of rows ``s:s + nr`` into distances."""
    k = out_d.shape[1]
    cosine = metric == _COSINE
    for r in range(vals.shape[0]):
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


@numba.njit(cache=True, nogil=True)
def _knn_fused_block(  # type: ignore[no-untyped-def]  # pragma: no cover
    XP, g0, g1, m, YP, n, depth, tile_groups, same, keys, vals, out_i, filled, worst, scratch, masks
):
    """Top-k of query rows ``g0 * DOT_ROWS ..`` (row groups ``g0:g1``) over all packed candidates.

    Keys come from :func:`~ctrlstack.ops._simd.dot_block_below` in registers (see
    :func:`_knn_operands` for why the dot product is the key); only mask bits are visited, in
    candidate order, so ties keep the lower index first as in :func:`_select_k`.  ``YP`` is
    swept in tiles of ``tile_groups`` column groups that stay in L2 while every row group of
    the block passes over them.  Padding rows (``>= m``) and columns (``>= n``) are skipped.
    """
    rows = DOT_ROWS
    cols = scratch.shape[0] // rows
    k = keys.shape[1]
    n_groups = -(-n // cols)
    s = g0 * rows
    for t0 in range(0, n_groups, tile_groups):
        t1 = min(n_groups, t0 + tile_groups)
        for g in range(g0, g1):
            lo = (g - g0) * rows
            for h in range(t0, t1):
                xo, yo = g * depth * rows, h * depth * cols
                if dot_block_below(XP, xo, YP, yo, depth, worst, lo, scratch, masks) == 0:
                    continue
                for r in range(rows):
                    i = g * rows + r
                    if i >= m:
                        break
                    li = i - s
                    mk = masks[r]
                    while mk != 0:
                        c = lowest_bit(mk)
                        mk &= mk - 1
                        j = h * cols + c
                        fv = float(scratch[r * cols + c])
                        if j < n and fv < keys[li, k - 1] and not (same and j == i):
                            filled[li] = _insert(
                                fv, fv, j, keys[li], vals[li], out_i[i], filled[li]
                            )
                    worst[li] = keys[li, k - 1]


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


def _tile_side(itemsize: int) -> int:
    """Side of a square output tile that stays in L2 (a multiple of 64)."""
    side = int(math.sqrt(_OUT_TILE_BYTES / itemsize))
    return max(64, side - side % 64)


def _pairwise_tiles(
    Xa: np.ndarray,
    Ya: np.ndarray,
    xn: np.ndarray,
    yn: np.ndarray,
    out: np.ndarray,
    code: int,
    same: bool,
    threads: int,
) -> None:
    """Fill ``out`` tile by tile: one GEMM into the tile, then the compiled finish."""
    m, n = out.shape
    bad_y = np.flatnonzero(~np.isfinite(yn))
    side = _tile_side(out.itemsize)
    rt, ct = -(-m // side), -(-n // side)
    tiles = [(a, b) for a in range(rt) for b in range(a if same else 0, ct)]

    def body(slot: int, t: int) -> None:
        a, b = tiles[t]
        r0, c0 = a * side, b * side
        r1, c1 = min(r0 + side, m), min(c0 + side, n)
        np.matmul(Xa[r0:r1], Ya[c0:c1].T, out=out[r0:r1, c0:c1])
        _finish_tile(code, out, r0, c0, r1 - r0, c1 - c0, Xa, Ya, xn, yn, bad_y, same, same)

    run_tiles(len(tiles), threads, body)


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
    feature_dim: str | None = None,
) -> Any:
    """Distances between the rows of ``X`` (m, d) and of ``Y`` (n, d); ``Y=None`` means ``X``.

    ``metric``: ``"euclidean"``, ``"sqeuclidean"`` or ``"cosine"`` (``1 - cos``, clipped to
    [0, 2]; a zero vector has similarity 0 to everything, as in sklearn).  With ``Y=None`` the
    result is exactly symmetric with a zero diagonal.  Result dtype: float32 if the inputs are
    float32, else float64.  ``out`` (m, n), C-contiguous, of that dtype, avoids the allocation.

    Dask ``X`` (row chunks; ``Y`` must be an in-memory array): lazy ``map_blocks`` result.
    xarray ``DataArray`` (sample, feature) inputs (``feature_dim`` names the feature dim, default
    the last): a DataArray over ``(X's sample dim, Y's sample dim)`` with their coordinates (Y's
    sample dim gets a ``_2`` suffix when the names clash, as with ``Y=None``).
    """
    code = _metric_code(metric)
    if is_xarray(X) or is_xarray(Y):
        return _pairwise_xarray(X, Y, metric, out, threads, feature_dim)
    if is_dask(X) or is_dask(Y):
        if out is not None:
            raise TypeError("out= is not supported for dask input")
        return _pairwise_dask(X, Y, metric, threads)
    Xa, Ya, same = _prepare(X, Y)
    m, n = Xa.shape[0], Ya.shape[0]
    out = _check_out(out, (m, n), Xa.dtype)
    if m == 0 or n == 0:
        return out
    if overlaps(out, Xa, Ya):  # tiles are written while later tiles still read X and Y
        np.copyto(out, pairwise_distances(Xa, None if same else Ya, metric=metric, threads=threads))
        return out
    xn = _norms(Xa, code)
    yn = xn if same else _norms(Ya, code)
    with kernel_threads(threads) as nt:
        _pairwise_tiles(Xa, Ya, xn, yn, out, code, same, nt)
    return out


def _check_out(out: np.ndarray | None, shape: tuple[int, int], dtype: np.dtype[Any]) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype=dtype)
    return check_out(out, shape, dtype, c_contiguous=True)


def knn(
    X: Any,
    Y: Any = None,
    k: int | None = None,
    *,
    metric: str = "euclidean",
    threads: int | None = None,
    feature_dim: str | None = None,
) -> tuple[Any, Any]:
    """The ``k`` nearest rows of ``Y`` for every row of ``X`` (brute force).

    Returns ``(distances, indices)``, both (m, k), sorted by increasing distance; equal distances
    are ordered by increasing index.  ``Y=None`` searches ``X`` among itself *excluding* each
    point (like ``NearestNeighbors().fit(X).kneighbors()``).  ``k`` is required and must not
    exceed the number of candidates.  NaN distances rank last.

    Dask ``X`` (``Y`` in memory): lazy results computed blockwise over row chunks of ``X``.
    xarray ``DataArray`` (sample, feature) inputs: both results are DataArrays over
    ``(X's sample dim, "neighbor")`` with X's sample coordinates.
    """
    if k is None:
        raise TypeError("knn() needs k, the number of neighbours (e.g. knn(X, Y, 5) or k=5)")
    k = check_positive_int(k, "k")
    code = _metric_code(metric)
    if is_xarray(X) or is_xarray(Y):
        return _knn_xarray(X, Y, k, metric, threads, feature_dim)
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
    # Finite, short rows: keys made in registers; otherwise BLAS tiles (NaN/inf rows are
    # recomputed directly there).
    fused = Xa.shape[1] + 1 <= _FUSED_MAX_DEPTH and np.isfinite(xn).all() and np.isfinite(yn).all()
    with kernel_threads(threads) as nt:
        (_knn_fused if fused else _knn_tiles)(Xa, Ya, xn, yn, code, same, out_d, out_i, nt)
    return out_d, out_i


def _knn_tiles(
    Xa: np.ndarray,
    Ya: np.ndarray,
    xn: np.ndarray,
    yn: np.ndarray,
    code: int,
    same: bool,
    out_d: np.ndarray,
    out_i: np.ndarray,
    threads: int,
) -> None:
    """Blocks of query rows on threads; per block, one GEMM per tile of ``Y`` then the merge
    (rows with NaN/inf, or longer than :func:`_knn_fused` takes)."""
    m = Xa.shape[0]
    n = Ya.shape[0]
    k = out_d.shape[1]
    bad_y = np.flatnonzero(~np.isfinite(yn))
    Xg, Yg = _knn_operands(Xa, Ya, xn, yn, code)
    YT = _tiled_transpose(Yg)
    n_tiles, _, tile = YT.shape
    block = _knn_block(m, threads)
    scratch = per_slot(
        threads,
        lambda: (
            aligned.empty((block, tile), Xa.dtype),  # screened in vector steps
            np.empty((block, k)),
            np.empty((block, k)),
            np.zeros(block, dtype=np.int64),
        ),
    )

    def body(slot: int, b: int) -> None:
        buf_all, keys_all, vals_all, filled_all = scratch(slot)
        s = b * block
        e = min(s + block, m)
        nr = e - s
        buf, keys, vals, filled = buf_all[:nr], keys_all[:nr], vals_all[:nr], filled_all[:nr]
        filled[:] = 0
        for ti in range(n_tiles):
            ys = ti * tile
            np.matmul(Xg[s:e], YT[ti], out=buf)
            _knn_tile(
                buf, ys, min(tile, n - ys), s, Xa, Ya, xn, bad_y, code, same,
                keys, vals, out_i, filled,
            )  # fmt: skip
        _knn_finish(s, xn, yn, code, vals, out_i, out_d)

    run_tiles(-(-m // block), threads, body)


def _knn_fused(
    Xa: np.ndarray,
    Ya: np.ndarray,
    xn: np.ndarray,
    yn: np.ndarray,
    code: int,
    same: bool,
    out_d: np.ndarray,
    out_i: np.ndarray,
    threads: int,
) -> None:
    """The top-k search with the keys made in registers (:func:`_knn_fused_block`).

    Why: through BLAS, a GEMM with an inner dimension of a few dozen writes one key per 2 d
    flops and the merge reads it back; BLAS reached 40-43 of its 53 GFLOP/s on such shapes
    and the merge added 20-35 ms (4000 x 20000, d = 32).  The register block reaches the
    GEMM's rate (docs/ops-ml.md, kNN).  Finite rows only: the BLAS path recomputes NaN/inf
    rows directly.
    """
    m, n = Xa.shape[0], Ya.shape[0]
    k = out_d.shape[1]
    Xg, Yg = _knn_operands(Xa, Ya, xn, yn, code)
    depth = Xg.shape[1]
    rows, cols = DOT_ROWS, dot_block_cols(Xa.itemsize)
    XP = _packed(Xg, rows, None)
    # padding candidates get the key +inf (never below a k-th) in the euclidean family
    YP = _packed(Yg, cols, None if code == _COSINE else np.inf)
    tile_groups = max(1, _TILE_BYTES // (depth * cols * Xa.itemsize))
    block = _knn_block(m, threads)
    scratch = per_slot(
        threads,
        lambda: (
            np.empty((block, k)),
            np.empty((block, k)),
            np.empty(block, dtype=np.int64),
            np.empty(block),
            aligned.empty((rows * cols,), Xa.dtype),  # stored as whole vectors
            np.empty(rows, dtype=np.int64),
        ),
    )

    def body(slot: int, b: int) -> None:
        keys, vals, filled, worst, keys_block, masks = scratch(slot)
        s = b * block
        e = min(s + block, m)
        nr = e - s
        keys.fill(np.inf)
        worst.fill(np.inf)
        filled.fill(0)
        _knn_fused_block(
            XP, s // rows, -(-e // rows), m, YP, n, depth, tile_groups, same,
            keys[:nr], vals[:nr], out_i, filled[:nr], worst, keys_block, masks,
        )  # fmt: skip
        _knn_finish(s, xn, yn, code, vals[:nr], out_i, out_d)

    run_tiles(-(-m // block), threads, body)


def _packed(A: np.ndarray, width: int, fill_last: float | None) -> np.ndarray:
    """Rows of ``A`` (r, depth) in groups of ``width``, each stored depth-major, flattened.

    Element ``[(g * depth + t) * width + c]`` is ``A[g * width + c, t]``: the layout
    :func:`~ctrlstack.ops._simd.dot_block_below` reads as one vector per ``t``.  Padding rows
    are zero, with ``fill_last`` in the last column when given.
    """
    r, depth = A.shape
    groups = max(1, -(-r // width))
    P = np.zeros((groups * width, depth), dtype=A.dtype)
    P[:r] = A
    if fill_last is not None:
        P[r:, -1] = fill_last
    return np.ascontiguousarray(P.reshape(groups, width, depth).transpose(0, 2, 1)).ravel()


def _knn_block(m: int, threads: int) -> int:
    """Query rows per block: large blocks amortise BLAS packing the Y tile once per GEMM
    (256 rows against 128: 3-5 % faster, 4000 x 20000, d = 32), small ones spread few rows
    over every thread (at least two blocks per thread)."""
    return _KNN_BLOCK if -(-m // _KNN_BLOCK) >= 2 * max(1, threads) else _KNN_BLOCK_MIN


def _knn_operands(
    Xa: np.ndarray, Ya: np.ndarray, xn: np.ndarray, yn: np.ndarray, code: int
) -> tuple[np.ndarray, np.ndarray]:
    """GEMM operands whose product is the ranking key itself, so no pass rewrites the tile.

    Euclidean family: ``[-2 x, 1] . [y, |y|^2] = |y|^2 - 2 x.y`` (``-2 x`` is exact); cosine:
    ``-x/|x| . y/|y|``.  Folding the key into the GEMM (one more inner dimension) saved the
    elementwise pass that read and wrote every tile once more (docs/ops-ml.md, kNN).
    Non-finite rows get 0 in the extra column; their keys are recomputed directly anyway.
    """
    if code == _COSINE:  # rank by -cos: normalise once (zero rows stay zero: similarity 0)
        return -_normalised(Xa, xn), _normalised(Ya, yn)
    m, d = Xa.shape
    Xg = np.empty((m, d + 1), dtype=Xa.dtype)
    np.multiply(Xa, -2.0, out=Xg[:, :d])
    Xg[:, d] = 1.0
    Yg = np.empty((Ya.shape[0], d + 1), dtype=Ya.dtype)
    Yg[:, :d] = Ya
    Yg[:, d] = np.where(np.isfinite(yn), yn, 0.0)
    return Xg, Yg


def _tiled_transpose(Y: np.ndarray) -> np.ndarray:
    """``Y.T`` cut into column tiles (n_tiles, d, tile), zero-padded, each about ``_TILE_BYTES``."""
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
# xarray


def _xy_rows(X: Any, Y: Any, feature_dim: str | None) -> tuple[Any, Any, Any, Any]:
    """Unpacked rows of X (and Y) plus Y's sample dim name, renamed if it clashes with X's."""
    if not is_xarray(X):
        raise TypeError("with a DataArray Y, X must be a DataArray too")
    xr_rows = unpack_rows(X, "X", feature_dim)
    yr_rows = xr_rows if Y is None else unpack_rows(Y, "Y", feature_dim) if is_xarray(Y) else None
    if yr_rows is None:
        raise TypeError("with a DataArray X, Y must be a DataArray too (or None)")
    y_dim = yr_rows.sample if yr_rows.sample != xr_rows.sample else f"{yr_rows.sample}_2"
    y_coords = {(y_dim if c == yr_rows.sample else c): v for c, v in yr_rows.sample_coords.items()}
    return xr_rows, yr_rows, y_dim, y_coords


def _pairwise_xarray(
    X: Any, Y: Any, metric: str, out: Any, threads: int | None, feature_dim: str | None
) -> Any:
    xr_rows, yr_rows, y_dim, y_coords = _xy_rows(X, Y, feature_dim)
    y_data = None if Y is None else yr_rows.data
    res = pairwise_distances(xr_rows.data, y_data, metric=metric, out=out, threads=threads)
    return labelled(res, (xr_rows.sample, y_dim), xr_rows.sample_coords, y_coords)


def _knn_xarray(
    X: Any, Y: Any, k: int, metric: str, threads: int | None, feature_dim: str | None
) -> tuple[Any, Any]:
    xr_rows, yr_rows, _, _ = _xy_rows(X, Y, feature_dim)
    y_data = None if Y is None else yr_rows.data
    d, i = knn(xr_rows.data, y_data, k, metric=metric, threads=threads)
    dims = (xr_rows.sample, "neighbor")
    return labelled(d, dims, xr_rows.sample_coords), labelled(i, dims, xr_rows.sample_coords)


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
