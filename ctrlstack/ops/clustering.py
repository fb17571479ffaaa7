"""k-means (Lloyd) and nearest-centre assignment.

Semantics follow ``sklearn.cluster.KMeans(algorithm="lloyd", n_init=1)`` step for step (same
tolerance scaling, strict-convergence test on unchanged labels, final E-step, empty-cluster
relocation), so that given the same initial centres both produce the same labels and inertia.

Why the kernel is shaped the way it is (perf.md, k-means section): a per-row loop over centres is
latency-bound and loses 2-3x to sklearn's GEMM-per-chunk kernel; hand-written register loops
measured here were 3-5x slower than a small BLAS GEMM.  So, like sklearn, each Numba thread takes
blocks of ``_BLOCK`` rows, centres them into a scratch block (``x - mean``: sklearn's
``X -= X.mean(0)`` without copying ``X``), computes ``-2 x.c`` for all centres with one
``np.dot`` (BLAS limited to one thread: perf.md trap 3), takes the argmin, and adds the row to
its thread's partial sums.  Partial sums/counts are allocated by the wrapper (trap 1) and reduced
there; the final inertia uses the exact ``|x - c|^2`` form in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
from numba import prange

from ctrlstack.ops._ml_common import as_float_array, single_threaded_blas
from ctrlstack.ops._runtime import is_dask, is_xarray, kernel_threads
from ctrlstack.ops._scicheck import check_positive_int

__all__ = ["KMeansResult", "assign", "kmeans", "kmeans_predict"]

_BLOCK = 256  # rows per distance block (sklearn's CHUNK_SIZE): the block stays in L1/L2


@dataclass(frozen=True)
class KMeansResult:
    """Result of :func:`kmeans`.

    ``centers`` (k, d) in the input dtype, ``labels`` (n,) intp (a lazy dask array for dask
    input), ``inertia`` the sum of squared distances to the assigned centre, ``n_iter`` the
    number of Lloyd iterations run (sklearn's ``n_iter_``).
    """

    centers: np.ndarray
    labels: Any
    inertia: float
    n_iter: int


# --------------------------------------------------------------------------------------------
# kernels


@numba.njit(cache=True, fastmath=True, nogil=True)
def _block_argmin(X, start, stop, mean, c2, cnorm, xc, dist, best, labels):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Labels of rows ``start:stop`` (at most ``_BLOCK`` rows); ``xc``, ``dist``, ``best`` scratch.

    ``dist[c, r] = |c'|^2 - 2 c'.x'`` with ``'`` meaning "minus the data mean"; the ``|x'|^2``
    term is the same for every centre and is left out of the argmin.  The products are one small
    GEMM (the caller limits BLAS to one thread).  ``dist`` is centre-major so the running argmin
    over centres is a vectorised select across rows, not a branch per (row, centre).
    """
    d = X.shape[1]
    k = c2.shape[0]
    nr = stop - start
    for r in range(nr):
        for j in range(d):
            xc[r, j] = X[start + r, j] - mean[j]
    for r in range(nr, xc.shape[0]):  # short last block: zero padding, one GEMM shape
        for j in range(d):
            xc[r, j] = 0
    np.dot(c2, xc.T, dist)
    d0 = dist[0]
    cn = cnorm[0]
    for r in range(nr):
        best[r] = d0[r] + cn
        labels[r] = 0
    for c in range(1, k):
        dc = dist[c]
        cn = cnorm[c]
        for r in range(nr):
            v = dc[r] + cn
            if v < best[r]:
                best[r] = v
                labels[r] = c


@numba.njit(cache=True, parallel=True, fastmath=True, nogil=True)
def _lloyd_step(X, mean, c2, cnorm, labels, sums, counts, changed, update):  # type: ignore[no-untyped-def]  # pragma: no cover
    """One E-step (labels, counting changes) and, when ``update``, the M-step partial sums.

    ``sums[t]``, ``counts[t]`` and ``changed[t]`` belong to slot ``t``; slot ``t`` handles
    blocks ``t, t + T, t + 2T, ...`` so every slot sees the same mix of the data.
    """
    n, d = X.shape
    k = c2.shape[0]
    n_slots = sums.shape[0]
    n_blocks = (n + _BLOCK - 1) // _BLOCK
    for t in prange(n_slots):
        xc = np.empty((_BLOCK, d), dtype=X.dtype)
        dist = np.empty((k, _BLOCK), dtype=X.dtype)
        best = np.empty(_BLOCK, dtype=X.dtype)
        lab = np.empty(_BLOCK, dtype=np.intp)
        s = sums[t]
        cnt = counts[t]
        n_changed = 0
        for b in range(t, n_blocks, n_slots):
            start = b * _BLOCK
            stop = min(start + _BLOCK, n)
            _block_argmin(X, start, stop, mean, c2, cnorm, xc, dist, best, lab)
            for r in range(stop - start):
                i = start + r
                c = lab[r]
                if labels[i] != c:
                    n_changed += 1
                    labels[i] = c
                if update:
                    cnt[c] += 1
                    for j in range(d):
                        s[c, j] += X[i, j]
        changed[t] = n_changed


@numba.njit(cache=True, parallel=True, fastmath=True, nogil=True)
def _inertia(X, centers, labels, parts):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Sum over rows of ``|x - centers[label]|^2`` (direct form, float64 accumulation)."""
    n, d = X.shape
    n_slots = parts.shape[0]
    per = (n + n_slots - 1) // n_slots
    for t in prange(n_slots):
        acc = 0.0
        for i in range(t * per, min(n, (t + 1) * per)):
            c = labels[i]
            for j in range(d):
                diff = np.float64(X[i, j]) - np.float64(centers[c, j])
                acc += diff * diff
        parts[t] = acc


@numba.njit(cache=True, parallel=True, nogil=True)
def _col_moments(X, parts):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Per-slot shifted sums ``sum(x - x0)`` and ``sum((x - x0)^2)`` per column (float64)."""
    n, d = X.shape
    n_slots = parts.shape[0]
    per = (n + n_slots - 1) // n_slots
    for t in prange(n_slots):
        p = parts[t]
        for i in range(t * per, min(n, (t + 1) * per)):
            for j in range(d):
                v = np.float64(X[i, j]) - np.float64(X[0, j])
                p[0, j] += v
                p[1, j] += v * v


@numba.njit(cache=True, parallel=True, fastmath=True, nogil=True)
def _min_sq_dist_update(X, cands, closest, pots, commit):  # type: ignore[no-untyped-def]  # pragma: no cover
    """k-means++ helper: for each candidate row, ``sum_i min(closest[i], |x_i - cand|^2)``.

    With ``commit >= 0`` it instead lowers ``closest`` in place with candidate ``commit``.
    """
    n, d = X.shape
    m = cands.shape[0]
    n_slots = pots.shape[0]
    per = (n + n_slots - 1) // n_slots
    for t in prange(n_slots):
        for i in range(t * per, min(n, (t + 1) * per)):
            if commit >= 0:
                acc = 0.0
                for j in range(d):
                    diff = np.float64(X[i, j]) - cands[commit, j]
                    acc += diff * diff
                closest[i] = min(closest[i], acc)
            else:
                for q in range(m):
                    acc = 0.0
                    for j in range(d):
                        diff = np.float64(X[i, j]) - cands[q, j]
                        acc += diff * diff
                    pots[t, q] += min(acc, closest[i])


# --------------------------------------------------------------------------------------------
# pure helpers


def _n_slots(threads: int, n_rows: int) -> int:
    """Partial-sum slots: a few per thread so a slow (shared) core does not stall the rest."""
    n_blocks = max(1, math.ceil(n_rows / _BLOCK))
    return max(1, min(4 * threads, n_blocks))


def _mean_and_tol(X: np.ndarray, tol: float, slots: int) -> tuple[np.ndarray, float]:
    """Column means and sklearn's data-scaled tolerance ``mean(var(X, axis=0)) * tol``.

    One parallel pass; it doubles as the finiteness check (NaN/inf make the sums non-finite).
    """
    n = X.shape[0]
    parts = np.zeros((slots, 2, X.shape[1]))
    _col_moments(X, parts)
    s = parts.sum(axis=0)
    if not np.isfinite(s).all():  # any NaN/inf in X reaches these sums
        raise ValueError(
            "X must be finite: it contains NaN or inf (or values so large that their squares "
            "overflow float64)"
        )
    shift = X[0].astype(np.float64)
    mean_shifted = s[0] / n
    var = np.maximum(s[1] / n - mean_shifted**2, 0.0)
    return shift + mean_shifted, float(var.mean() * tol) if tol else 0.0


def _prepared_centers(centers: np.ndarray, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``-2 (C - mean)`` (k, d) and ``|C - mean|^2`` (k,) in the data dtype."""
    cc = centers.astype(np.float64) - mean
    ct2 = np.ascontiguousarray(-2.0 * cc, dtype=centers.dtype)
    cnorm = np.einsum("ij,ij->i", cc, cc).astype(centers.dtype)
    return ct2, cnorm


def _relocate_empty(
    X: np.ndarray,
    old: np.ndarray,
    labels: np.ndarray,
    sums: np.ndarray,
    counts: np.ndarray,
) -> None:
    """sklearn's rule: each empty cluster takes one of the points farthest from their centre."""
    empty = np.flatnonzero(counts == 0)
    if empty.size == 0:
        return
    diff = X.astype(np.float64) - old.astype(np.float64)[labels]
    dist = np.einsum("ij,ij->i", diff, diff)
    if dist.max() == 0:
        return
    far = np.argpartition(dist, -empty.size)[: -empty.size - 1 : -1]
    for new_id, idx in zip(empty, far, strict=True):
        old_id = labels[idx]
        sums[old_id] -= X[idx]
        sums[new_id] = X[idx]
        counts[new_id] = 1
        counts[old_id] -= 1


def _average(sums: np.ndarray, counts: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """Centres from sums and counts; an empty cluster sits on the biggest one (sklearn)."""
    out = np.empty_like(sums)
    big = int(np.argmax(counts))
    for c in range(sums.shape[0]):
        out[c] = sums[c] / counts[c] if counts[c] > 0 else sums[big] / max(counts[big], 1)
    return out.astype(dtype)


def _kmeans_plusplus(X: np.ndarray, k: int, rng: np.random.Generator, slots: int) -> np.ndarray:
    """Greedy k-means++ (Arthur & Vassilvitskii; sklearn's ``2 + log k`` local trials)."""
    n = X.shape[0]
    n_trials = 2 + int(np.log(k))
    centers = np.empty((k, X.shape[1]), dtype=np.float64)
    centers[0] = X[rng.integers(n)]
    closest = np.full(n, np.inf)
    pots = np.zeros((slots, 1))
    _min_sq_dist_update(X, centers[:1], closest, pots, 0)
    potential = float(closest.sum())
    for c in range(1, k):
        cum = np.cumsum(closest)
        ids = np.searchsorted(cum, rng.uniform(size=n_trials) * potential)
        ids = np.minimum(ids, n - 1)
        cands = X[ids].astype(np.float64)
        pots = np.zeros((slots, n_trials))
        _min_sq_dist_update(X, cands, closest, pots, -1)
        best = int(np.argmin(pots.sum(axis=0)))
        _min_sq_dist_update(X, cands, closest, pots, best)
        potential = float(closest.sum())
        centers[c] = cands[best]
    return centers.astype(X.dtype)


def _check_init(init: Any, k: int, d: int, dtype: np.dtype[Any]) -> np.ndarray | None:
    """``None`` for ``"k-means++"``, the validated centres for an array; errors otherwise."""
    if isinstance(init, str):
        if init != "k-means++":
            raise ValueError(f"init must be 'k-means++' or an array of shape (k, d), got {init!r}")
        return None
    centers = as_float_array("init", init, 2, dtype=dtype)
    if centers.shape != (k, d):
        raise ValueError(f"init must have shape (k, d) = ({k}, {d}), got {centers.shape}")
    if not np.isfinite(centers).all():
        raise ValueError("init must be finite (no NaN or inf)")
    return centers.copy()


def _check_common(k: Any, max_iter: Any, tol: Any) -> tuple[int, int, float]:
    k = check_positive_int(k, "k")
    max_iter = check_positive_int(max_iter, "max_iter")
    if isinstance(tol, bool) or not isinstance(tol, int | float | np.floating):
        raise TypeError(f"tol must be a float, got {type(tol).__name__}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    return k, max_iter, float(tol)


# --------------------------------------------------------------------------------------------
# public API


def kmeans(
    X: Any,
    k: int,
    *,
    init: Any = "k-means++",
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int | None = None,
    threads: int | None = None,
) -> KMeansResult:
    """Lloyd's k-means on the rows of ``X`` (n, d).

    Parameters
    ----------
    X : array (n, d) of ints, float32 or float64 (NumPy or dask).  Must be finite.
    k : number of clusters, ``1 <= k <= n``.
    init : ``"k-means++"`` (greedy k-means++, seeded by ``seed``) or an array (k, d) of initial
        centres, e.g. the same ones given to sklearn for a like-for-like comparison.
    max_iter, tol : as in sklearn: stop when no label changes, or when the squared centre shift
        is ``<= tol * mean(var(X, axis=0))``.
    threads : Numba threads (default: the thread budget).

    Dask input runs one tree reduction of per-block partial sums per iteration (persist ``X``
    first); the returned ``labels`` are lazy.
    """
    k, max_iter, tol = _check_common(k, max_iter, tol)
    if is_dask(X):
        from ctrlstack.ops._clustering_dask import kmeans_dask

        return kmeans_dask(X, k, init=init, max_iter=max_iter, tol=tol, seed=seed, threads=threads)
    if is_xarray(X):
        raise TypeError("kmeans takes a NumPy or dask array; pass DataArray.data")
    X = as_float_array("X", X, 2, allow_empty=False)
    n, d = X.shape
    if k > n:
        raise ValueError(f"k must be <= the number of rows of X ({n}), got {k}")
    with kernel_threads(threads) as nt, single_threaded_blas():
        slots = _n_slots(nt, n)
        mean, tol_abs = _mean_and_tol(X, tol, slots)  # also rejects NaN/inf, in the same pass
        centers = _check_init(init, k, d, X.dtype)
        if centers is None:
            centers = _kmeans_plusplus(X, k, np.random.default_rng(seed), slots)
        labels = np.full(n, -1, dtype=np.intp)
        centers, n_iter = _lloyd(X, centers, labels, mean, max_iter, tol_abs, slots)
        parts = np.zeros(slots)
        _inertia(X, centers, labels, parts)
    return KMeansResult(centers=centers, labels=labels, inertia=float(parts.sum()), n_iter=n_iter)


def _lloyd(
    X: np.ndarray,
    centers: np.ndarray,
    labels: np.ndarray,
    mean: np.ndarray,
    max_iter: int,
    tol_abs: float,
    slots: int,
) -> tuple[np.ndarray, int]:
    """The Lloyd loop (sklearn's ``_kmeans_single_lloyd``); labels are updated in place."""
    k, d = centers.shape
    sums = np.zeros((slots, k, d))
    counts = np.zeros((slots, k), dtype=np.int64)
    changed = np.zeros(slots, dtype=np.int64)
    strict = False
    it = 0
    for it in range(max_iter):  # noqa: B007 - n_iter is it + 1, as in sklearn
        ct2, cnorm = _prepared_centers(centers, mean)
        sums[:] = 0.0
        counts[:] = 0
        _lloyd_step(X, mean.astype(X.dtype), ct2, cnorm, labels, sums, counts, changed, True)
        tot_sums = sums.sum(axis=0)
        tot_counts = counts.sum(axis=0)
        _relocate_empty(X, centers, labels, tot_sums, tot_counts)
        new = _average(tot_sums, tot_counts, X.dtype)
        shift = float(((new.astype(np.float64) - centers) ** 2).sum())
        centers = new
        if changed.sum() == 0:
            strict = True
            break
        if shift <= tol_abs:
            break
    if not strict:
        ct2, cnorm = _prepared_centers(centers, mean)
        _lloyd_step(X, mean.astype(X.dtype), ct2, cnorm, labels, sums, counts, changed, False)
    return centers, it + 1


def kmeans_predict(X: Any, centers: Any, *, threads: int | None = None) -> Any:
    """Index of the nearest centre (squared euclidean) for each row of ``X``; ties -> lowest.

    NumPy in, ``intp`` labels out; dask in, lazy labels out (``map_blocks`` over row chunks);
    xarray ``DataArray`` (sample, feature) in, ``DataArray`` over the sample dimension out.
    Rows containing NaN or inf get an unspecified label in [0, k) (the kernel is compiled with
    fastmath for speed and skips a finiteness pass): check ``np.isfinite`` first if it matters.
    """
    if is_xarray(X):
        return _predict_xarray(X, centers, threads)
    centers_arr = as_float_array("centers", centers, 2, allow_empty=False)
    if is_dask(X):
        return _predict_dask(X, centers_arr, threads)
    Xa = as_float_array("X", X, 2)
    if Xa.shape[1] != centers_arr.shape[1]:
        raise ValueError(
            f"X has {Xa.shape[1]} columns but centers has {centers_arr.shape[1]}: they must match"
        )
    return _predict_numpy(Xa, centers_arr.astype(Xa.dtype), threads)


assign = kmeans_predict


def _predict_numpy(X: np.ndarray, centers: np.ndarray, threads: int | None) -> np.ndarray:
    n = X.shape[0]
    labels = np.full(n, -1, dtype=np.intp)
    if n == 0:
        return labels
    # centring with the centres' mean keeps the |c|^2 - 2x.c form accurate (no copy of X)
    mean = centers.astype(np.float64).mean(axis=0)
    ct2, cnorm = _prepared_centers(centers, mean)
    with kernel_threads(threads) as nt, single_threaded_blas():
        slots = _n_slots(nt, n)
        sums = np.zeros((slots, 1, 1))
        counts = np.zeros((slots, 1), dtype=np.int64)
        changed = np.zeros(slots, dtype=np.int64)
        _lloyd_step(X, mean.astype(X.dtype), ct2, cnorm, labels, sums, counts, changed, False)
    return labels


def _predict_dask(X: Any, centers: np.ndarray, threads: int | None) -> Any:
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D, got shape {X.shape}")
    if X.shape[1] != centers.shape[1]:
        raise ValueError(
            f"X has {X.shape[1]} columns but centers has {centers.shape[1]}: they must match"
        )
    X = X.rechunk({1: -1})

    def block(xb: np.ndarray) -> np.ndarray:
        xa = as_float_array("X", xb, 2)
        return _predict_numpy(xa, centers.astype(xa.dtype), threads)

    return X.map_blocks(block, drop_axis=1, dtype=np.intp, meta=np.empty((0,), np.intp))


def _predict_xarray(X: Any, centers: Any, threads: int | None) -> Any:
    import xarray as xr

    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D DataArray (sample, feature), got dims {X.dims}")
    feature = X.dims[1]
    centers_arr = as_float_array("centers", centers, 2, allow_empty=False)
    return xr.apply_ufunc(
        lambda a: kmeans_predict(a, centers_arr, threads=threads),
        X,
        input_core_dims=[[feature]],
        dask="allowed",
    )
