"""k-means on dask arrays: Lloyd iterations as tree reductions of per-block partial sums.

Each iteration is one dask computation: every row block returns its (k, d) centre sums and (k,)
counts packed in one row, and ``sum(axis=0)`` reduces them as a tree.  Differences from the
in-memory path, because keeping labels between iterations would materialise them: convergence is
sklearn's centre-shift test only (no "labels unchanged" test, so it may run one iteration more),
and an empty cluster is not relocated to a far point but placed on the biggest cluster's centre.
The result's ``labels`` are a lazy ``map_blocks`` of the in-memory prediction; ``inertia`` comes
from one extra pass.  Persist ``X`` first: every iteration reads it once.

Only :mod:`ctrlstack.ops._kmeans_core` is imported (never the public wrappers).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ctrlstack.ops import _kmeans_core as core
from ctrlstack.ops._check import as_float_array, as_real_lazy
from ctrlstack.ops._runtime import kernel_threads

__all__ = ["kmeans_dask", "predict_dask"]

_INIT_SAMPLE = 100_000  # rows sampled for k-means++ on dask input


def _block_stats(
    xb: np.ndarray, centers: np.ndarray, mean: np.ndarray, threads: int | None
) -> np.ndarray:
    """One block's packed partials: centre sums (k*d), counts (k), inertia (1), float64."""
    X = as_float_array("X", xb, 2, dtype=centers.dtype)
    k, d = centers.shape
    packed = np.zeros((1, k * d + k + 1))
    if X.shape[0] == 0:
        return packed
    labels = np.full(X.shape[0], -1, dtype=np.intp)
    with kernel_threads(threads) as nt:
        sums, counts, _ = core.estep(X, mean, centers, labels, nt, True)
        packed[0, -1] = core.inertia(X, centers, labels, nt)
    packed[0, : k * d] = sums.ravel()
    packed[0, k * d : k * d + k] = counts
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
) -> core.KMeansResult:
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
    X = as_real_lazy(X, "X")  # the one dtype rule, without computing
    X = X.rechunk({1: -1})
    mean_l, var_l, finite_l = X.mean(axis=0), X.var(axis=0), dask.array.isfinite(X).all()
    mean, var, finite = dask.compute(mean_l, var_l, finite_l)
    if not finite:
        raise ValueError("X must be finite: it contains NaN or inf")
    mean = np.asarray(mean, dtype=np.float64)
    tol_abs = float(np.mean(var) * tol) if tol else 0.0
    centers = core.check_init(init, k, d, dt)
    if centers is None:
        rng = np.random.default_rng(seed)
        take = np.sort(rng.choice(n, size=min(n, max(_INIT_SAMPLE, k)), replace=False))
        sample = as_float_array("X", X[take].compute(), 2, dtype=dt)
        with kernel_threads(threads) as nt:
            centers = core.kmeans_plusplus(sample, k, rng, core.n_slots(nt, sample.shape[0]))
    it = 0
    for it in range(max_iter):  # noqa: B007 - n_iter is it + 1, as in sklearn
        packed = _reduce(X, centers, mean, threads)
        sums = packed[: k * d].reshape(k, d)
        counts = packed[k * d : k * d + k]
        new = core.average(sums, counts, dt)
        shift = float(((new.astype(np.float64) - centers) ** 2).sum())
        centers = new
        if shift <= tol_abs:
            break
    inertia = float(_reduce(X, centers, mean, threads)[-1])
    labels = predict_dask(X, centers, threads)
    return core.KMeansResult(centers=centers, labels=labels, inertia=inertia, n_iter=it + 1)


def predict_dask(X: Any, centers: np.ndarray, threads: int | None) -> Any:
    """Lazy nearest-centre labels over the row chunks of a dask ``X``."""
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D, got shape {X.shape}")
    if X.shape[1] != centers.shape[1]:
        raise ValueError(
            f"X has {X.shape[1]} columns but centers has {centers.shape[1]}: they must match"
        )
    X = X.rechunk({1: -1})

    def block(xb: np.ndarray) -> np.ndarray:
        xa = as_float_array("X", xb, 2)
        with kernel_threads(threads) as nt:
            return core.predict_numpy(xa, centers.astype(xa.dtype), nt)

    return X.map_blocks(block, drop_axis=1, dtype=np.intp, meta=np.empty((0,), np.intp))
