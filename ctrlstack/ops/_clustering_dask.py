"""k-means on dask arrays: Lloyd iterations as tree reductions of per-block partial sums.

Each iteration is one dask computation: every row block returns its (k, d) centre sums and (k,)
counts packed in one row, and ``sum(axis=0)`` reduces them as a tree.  Differences from the
in-memory path, because keeping labels between iterations would materialise them: convergence is
sklearn's centre-shift test only (no "labels unchanged" test, so it may run one iteration more),
and an empty cluster is not relocated to a far point but placed on the biggest cluster's centre.
The result's ``labels`` are a lazy ``map_blocks`` of ``kmeans_predict``; ``inertia`` comes from
one extra pass.  Persist ``X`` first: every iteration reads it once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ctrlstack.ops import clustering as _c
from ctrlstack.ops._ml_common import as_float_array, single_threaded_blas
from ctrlstack.ops._runtime import kernel_threads

__all__ = ["kmeans_dask"]

_INIT_SAMPLE = 100_000  # rows sampled for k-means++ on dask input


def _block_stats(
    xb: np.ndarray, centers: np.ndarray, mean: np.ndarray, threads: int | None
) -> np.ndarray:
    """One block's packed partials: centre sums (k*d), counts (k), inertia (1), float64."""
    X = as_float_array("X", xb, 2, dtype=centers.dtype)
    k, d = centers.shape
    n = X.shape[0]
    packed = np.zeros((1, k * d + k + 1))
    if n == 0:
        return packed
    c2, cnorm = _c._prepared_centers(centers, mean)
    labels = np.full(n, -1, dtype=np.intp)
    with kernel_threads(threads) as nt, single_threaded_blas():
        slots = _c._n_slots(nt, n)
        sums = np.zeros((slots, k, d))
        counts = np.zeros((slots, k), dtype=np.int64)
        changed = np.zeros(slots, dtype=np.int64)
        _c._lloyd_step(X, mean.astype(X.dtype), c2, cnorm, labels, sums, counts, changed, True)
        parts = np.zeros(slots)
        _c._inertia(X, centers, labels, parts)
    packed[0, : k * d] = sums.sum(axis=0).ravel()
    packed[0, k * d : k * d + k] = counts.sum(axis=0)
    packed[0, -1] = parts.sum()
    return packed


def _reduce(X: Any, centers: np.ndarray, mean: np.ndarray, threads: int | None) -> np.ndarray:
    """Tree-reduced partials over all blocks, computed now (one pass over ``X``)."""
    parts = X.map_blocks(
        _block_stats,
        centers,
        mean,
        threads,
        chunks=((1,) * X.numblocks[0], (centers.size + centers.shape[0] + 1,)),
        dtype=np.float64,
    )
    return np.asarray(parts.sum(axis=0).compute())


def kmeans_dask(
    X: Any,
    k: int,
    *,
    init: Any,
    max_iter: int,
    tol: float,
    seed: int | None,
    threads: int | None,
) -> _c.KMeansResult:
    """Lloyd's k-means on a dask array ``X`` (n, d); see :func:`ctrlstack.ops.kmeans`."""
    import dask

    if X.ndim != 2:
        raise ValueError(f"X must be 2-D, got shape {X.shape}")
    n, d = X.shape
    if n == 0:
        raise ValueError(f"X must not be empty, got shape {X.shape}")
    if k > n:
        raise ValueError(f"k must be <= the number of rows of X ({n}), got {k}")
    dt = np.dtype(np.float32) if X.dtype == np.float32 else np.dtype(np.float64)
    if X.dtype.kind not in "iuf" or X.dtype == np.float16:
        raise TypeError(f"X must hold integers, float32 or float64, got dtype {X.dtype}")
    X = X.rechunk({1: -1})
    mean_l, var_l, finite_l = X.mean(axis=0), X.var(axis=0), dask.array.isfinite(X).all()
    mean, var, finite = dask.compute(mean_l, var_l, finite_l)
    if not finite:
        raise ValueError("X must be finite: it contains NaN or inf")
    mean = np.asarray(mean, dtype=np.float64)
    tol_abs = float(np.mean(var) * tol) if tol else 0.0
    centers = _c._check_init(init, k, d, dt)
    if centers is None:
        rng = np.random.default_rng(seed)
        take = np.sort(rng.choice(n, size=min(n, max(_INIT_SAMPLE, k)), replace=False))
        sample = as_float_array("X", X[take].compute(), 2, dtype=dt)
        with kernel_threads(threads) as nt:
            centers = _c._kmeans_plusplus(sample, k, rng, _c._n_slots(nt, sample.shape[0]))
    it = 0
    for it in range(max_iter):  # noqa: B007 - n_iter is it + 1, as in sklearn
        packed = _reduce(X, centers, mean, threads)
        sums = packed[: k * d].reshape(k, d)
        counts = packed[k * d : k * d + k]
        new = _c._average(sums, counts, dt)
        shift = float(((new.astype(np.float64) - centers) ** 2).sum())
        centers = new
        if shift <= tol_abs:
            break
    inertia = float(_reduce(X, centers, mean, threads)[-1])
    labels = _c.kmeans_predict(X, centers, threads=threads)
    return _c.KMeansResult(centers=centers, labels=labels, inertia=inertia, n_iter=it + 1)
