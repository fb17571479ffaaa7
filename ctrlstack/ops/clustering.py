"""k-means (Lloyd) and nearest-centre assignment: the public wrappers.

Semantics follow ``sklearn.cluster.KMeans(algorithm="lloyd", n_init=1)`` step for step (same
tolerance scaling, strict-convergence test on unchanged labels, final E-step, empty-cluster
relocation), so that given the same initial centres both produce the same labels and inertia.
The algorithm and its kernels live in :mod:`ctrlstack.ops._kmeans_core`; the dask path in
:mod:`ctrlstack.ops._clustering_dask`; input handling (NumPy / dask / xarray, thread budget) in
:mod:`ctrlstack.ops._dispatch`.
"""

from __future__ import annotations

from typing import Any

from ctrlstack.ops._check import as_float_array
from ctrlstack.ops._clustering_dask import kmeans_dask, predict_dask
from ctrlstack.ops._dispatch import is_dask, is_xarray, labelled, unpack_rows, values_of
from ctrlstack.ops._kmeans_core import KMeansResult, check_common, kmeans_numpy, predict_numpy
from ctrlstack.ops._runtime import kernel_threads

__all__ = ["KMeansResult", "assign", "kmeans", "kmeans_predict"]


def kmeans(
    X: Any,
    k: int,
    *,
    init: Any = "k-means++",
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int | None = None,
    threads: int | None = None,
    feature_dim: str | None = None,
) -> KMeansResult:
    """Lloyd's k-means on the rows of ``X`` (n, d).

    Parameters
    ----------
    X : array (n, d) of ints, float32 or float64 (NumPy, dask, or a 2-D xarray DataArray whose
        ``feature_dim`` (default: its last dim) holds the features).  Must be finite.
    k : number of clusters, ``1 <= k <= n``.
    init : ``"k-means++"`` (greedy k-means++, seeded by ``seed``) or an array (k, d) of initial
        centres, e.g. the same ones given to sklearn for a like-for-like comparison.
    max_iter, tol : as in sklearn: stop when no label changes, or when the squared centre shift
        is ``<= tol * mean(var(X, axis=0))``.
    threads : threads (default: the thread budget).

    Dask input runs one tree reduction of per-block partial sums per iteration (persist ``X``
    first); the returned ``labels`` are lazy.  DataArray input gives ``labels`` as a DataArray
    over the sample dimension (with its coordinates); ``centers`` stay a NumPy array.
    """
    k, max_iter, tol = check_common(k, max_iter, tol)
    if is_xarray(X):
        rows = unpack_rows(X, "X", feature_dim)
        res = kmeans(
            rows.data, k, init=init, max_iter=max_iter, tol=tol, seed=seed, threads=threads
        )
        labels = labelled(res.labels, (rows.sample,), rows.sample_coords)
        return KMeansResult(res.centers, labels, res.inertia, res.n_iter)
    if is_dask(X):
        return kmeans_dask(X, k, init=init, max_iter=max_iter, tol=tol, seed=seed, threads=threads)
    Xa = as_float_array("X", X, 2, allow_empty=False)
    with kernel_threads(threads) as nt:
        return kmeans_numpy(Xa, k, init=init, max_iter=max_iter, tol=tol, seed=seed, threads=nt)


def kmeans_predict(
    X: Any, centers: Any, *, threads: int | None = None, feature_dim: str | None = None
) -> Any:
    """Index of the nearest centre (squared euclidean) for each row of ``X``; ties -> lowest.

    NumPy in, ``intp`` labels out; dask in, lazy labels out (``map_blocks`` over row chunks);
    xarray ``DataArray`` (sample, feature) in, ``DataArray`` over the sample dimension out.
    Rows containing NaN or inf get an unspecified label in [0, k) (the kernel is compiled with
    fastmath for speed and skips a finiteness pass): check ``np.isfinite`` first if it matters.
    """
    if is_xarray(X):
        rows = unpack_rows(X, "X", feature_dim)
        out = kmeans_predict(rows.data, values_of(centers), threads=threads)
        return labelled(out, (rows.sample,), rows.sample_coords)
    centers_arr = as_float_array("centers", centers, 2, allow_empty=False)
    if is_dask(X):
        return predict_dask(X, centers_arr, threads)
    Xa = as_float_array("X", X, 2)
    if Xa.shape[1] != centers_arr.shape[1]:
        raise ValueError(
            f"X has {Xa.shape[1]} columns but centers has {centers_arr.shape[1]}: they must match"
        )
    with kernel_threads(threads) as nt:
        return predict_numpy(Xa, centers_arr.astype(Xa.dtype), nt)


assign = kmeans_predict
