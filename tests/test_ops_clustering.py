"""k-means and nearest-centre assignment against scikit-learn (reference table + edge cases).

Tolerances (rtol for inertia, atol for centres), per dtype:

| kernel           | reference                                          | float64            | float32           |
|------------------|----------------------------------------------------|--------------------|-------------------|
| kmeans labels    | KMeans(algorithm="lloyd", n_init=1, same init)     | equal              | equal (separated) |
| kmeans inertia   | KMeans.inertia_                                    | rtol 1e-10         | rtol 1e-5         |
| kmeans centres   | KMeans.cluster_centers_                            | atol 1e-10         | atol 1e-4         |
| kmeans n_iter    | KMeans.n_iter_                                     | equal              | equal             |
| kmeans_predict   | argmin of scipy cdist (sqeuclidean)                | equal              | equal (separated) |
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ctrlstack.ops.clustering import KMeansResult, assign, kmeans, kmeans_predict

sklearn_cluster = pytest.importorskip("sklearn.cluster")
cdist = pytest.importorskip("scipy.spatial.distance").cdist

TOL: dict[Any, dict[str, float]] = {
    np.float64: {"inertia": 1e-10, "centers": 1e-10},
    np.float32: {"inertia": 1e-5, "centers": 1e-4},
}


def blobs(n: int, d: int, k: int, dtype: Any = np.float64, seed: int = 0) -> np.ndarray:
    """Well separated clusters so float32 rounding cannot flip a label."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-20, 20, size=(k, d))
    X = centres[rng.integers(k, size=n)] + rng.standard_normal((n, d))
    return X.astype(dtype)


def sk_lloyd(X: np.ndarray, init: np.ndarray, **kw: Any) -> Any:
    km = sklearn_cluster.KMeans(len(init), init=init, n_init=1, algorithm="lloyd", **kw)
    return km.fit(X)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("tol", [1e-4, 0.0])
def test_kmeans_matches_sklearn_lloyd(dtype: Any, tol: float) -> None:
    X = blobs(2000, 5, 6, dtype)
    rng = np.random.default_rng(1)
    init = X[rng.choice(len(X), 6, replace=False)].copy()
    ours = kmeans(X, 6, init=init, tol=tol, threads=2)
    ref = sk_lloyd(X, init, tol=tol)
    assert isinstance(ours, KMeansResult)
    assert ours.centers.dtype == dtype
    np.testing.assert_array_equal(ours.labels, ref.labels_)
    assert ours.n_iter == ref.n_iter_
    np.testing.assert_allclose(ours.inertia, ref.inertia_, rtol=TOL[dtype]["inertia"])
    np.testing.assert_allclose(ours.centers, ref.cluster_centers_, atol=TOL[dtype]["centers"])


def test_kmeans_max_iter_and_overlapping_clusters_match_sklearn() -> None:
    # overlapping data: many labels change per iteration, max_iter stops it early
    X = np.random.default_rng(3).standard_normal((1500, 3))
    init = X[:8].copy()
    for max_iter in (1, 3, 50):
        ours = kmeans(X, 8, init=init, max_iter=max_iter)
        ref = sk_lloyd(X, init, max_iter=max_iter)
        np.testing.assert_array_equal(ours.labels, ref.labels_)
        assert ours.n_iter == ref.n_iter_
        np.testing.assert_allclose(ours.inertia, ref.inertia_, rtol=1e-10)


def test_empty_cluster_is_relocated_like_sklearn() -> None:
    X = blobs(600, 2, 3)
    init = np.vstack([X[:2], [[1e3, 1e3]]])  # the far centre gets no point in iteration 1
    ours = kmeans(X, 3, init=init)
    ref = sk_lloyd(X, init)
    np.testing.assert_array_equal(ours.labels, ref.labels_)
    np.testing.assert_allclose(ours.centers, ref.cluster_centers_, atol=1e-10)
    assert len(np.unique(ours.labels)) == 3


def test_layouts_and_int_input_give_the_same_result() -> None:
    X = blobs(900, 4, 3)
    init = X[:3].copy()
    base = kmeans(X, 3, init=init)
    fortran = kmeans(np.asfortranarray(X), 3, init=init)
    wide = np.zeros((900, 8))
    wide[:, ::2] = X
    strided = kmeans(wide[:, ::2], 3, init=init)
    for other in (fortran, strided):
        np.testing.assert_array_equal(other.labels, base.labels)
        np.testing.assert_allclose(other.centers, base.centers, atol=1e-12)
    Xi = np.round(X * 10).astype(np.int64)
    res_i = kmeans(Xi, 3, init=Xi[:3])
    ref_i = sk_lloyd(Xi.astype(np.float64), Xi[:3].astype(np.float64))
    assert res_i.centers.dtype == np.float64
    np.testing.assert_array_equal(res_i.labels, ref_i.labels_)


def test_kmeans_plus_plus_is_seeded_and_sane() -> None:
    X = blobs(3000, 3, 5, seed=4)
    a = kmeans(X, 5, seed=7)
    b = kmeans(X, 5, seed=7)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.inertia == b.inertia
    # k-means++ on well separated blobs finds them: inertia close to sklearn's best of 10 inits
    best = sklearn_cluster.KMeans(5, n_init=10, random_state=0).fit(X).inertia_
    assert a.inertia <= 1.05 * best
    assert a.labels.min() == 0
    assert a.labels.max() == 4


def test_small_edge_cases() -> None:
    one = kmeans(np.array([[1.0, 2.0]]), 1)
    np.testing.assert_array_equal(one.centers, [[1.0, 2.0]])
    assert one.inertia == 0.0
    assert one.labels.tolist() == [0]
    X = blobs(10, 2, 2)
    all_points = kmeans(X, 10, init=X)
    assert sorted(all_points.labels.tolist()) == list(range(10))
    assert all_points.inertia == pytest.approx(0.0, abs=1e-20)
    single = kmeans(X, 1, init=X[:1])
    np.testing.assert_allclose(single.centers[0], X.mean(axis=0), atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"X": np.zeros((0, 3)), "k": 1}, ValueError, "X must not be empty"),
        ({"X": np.zeros(5), "k": 1}, ValueError, "X must be 2-D"),
        ({"X": np.ones((4, 2)), "k": 5}, ValueError, "k must be <="),
        ({"X": np.ones((4, 2)), "k": 0}, ValueError, "k must be >= 1"),
        ({"X": np.ones((4, 2)), "k": 1.5}, TypeError, "k must be an int"),
        ({"X": np.ones((4, 2), dtype=bool), "k": 1}, TypeError, "X must hold"),
        ({"X": np.ones((4, 2), dtype=np.complex128), "k": 1}, TypeError, "X must hold"),
        ({"X": np.array([[1.0, np.nan], [0, 0]]), "k": 1}, ValueError, "finite"),
        ({"X": np.array([[1.0, np.inf], [0, 0]]), "k": 1}, ValueError, "finite"),
        ({"X": np.ones((4, 2)), "k": 2, "init": "random"}, ValueError, "init must be"),
        ({"X": np.ones((4, 2)), "k": 2, "init": np.ones((3, 2))}, ValueError, r"init must have"),
        ({"X": np.ones((4, 2)), "k": 2, "tol": -1.0}, ValueError, "tol must be >= 0"),
        ({"X": np.ones((4, 2)), "k": 2, "max_iter": 0}, ValueError, "max_iter must be"),
        ({"X": np.ones((4, 2)), "k": 2, "threads": 0}, ValueError, "threads must be >= 1"),
    ],
)
def test_kmeans_rejects_bad_arguments(kwargs: dict, exc: type, match: str) -> None:
    X = kwargs.pop("X")
    k = kwargs.pop("k")
    with pytest.raises(exc, match=match):
        kmeans(X, k, **kwargs)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_predict_matches_brute_force_argmin(dtype: Any) -> None:
    X = blobs(1234, 6, 7, dtype, seed=5)
    centers = blobs(7, 6, 7, dtype, seed=6)
    expected = cdist(X.astype(np.float64), centers.astype(np.float64), "sqeuclidean").argmin(1)
    np.testing.assert_array_equal(kmeans_predict(X, centers), expected)
    np.testing.assert_array_equal(assign(np.asfortranarray(X), centers, threads=1), expected)
    fitted = sklearn_cluster.KMeans(7, init=centers, n_init=1, max_iter=1).fit(X)
    np.testing.assert_array_equal(kmeans_predict(X, fitted.cluster_centers_), fitted.predict(X))


@pytest.mark.parametrize("k", [1, 15, 16, 17, 40])
def test_predict_matches_brute_force_across_vector_widths(k: int) -> None:
    """k below, at and past the 16-wide argmin step (padding, several steps per row)."""
    X = blobs(2000, 5, 9, np.float64, seed=k)
    centers = np.random.default_rng(k).normal(size=(k, 5)) * 4
    expected = cdist(X, centers, "sqeuclidean").argmin(1)
    np.testing.assert_array_equal(kmeans_predict(X, centers, threads=2), expected)
    dup = np.concatenate([centers, centers])  # every centre twice: ties go to the first copy
    np.testing.assert_array_equal(kmeans_predict(X, dup, threads=1), expected)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_argmin_width_matches_numpy(dtype: Any) -> None:
    import numba

    from ctrlstack.ops._simd import WIDTH, argmin_width

    @numba.njit
    def rows_argmin(a: np.ndarray, add: np.ndarray) -> np.ndarray:
        out = np.empty(a.shape[0] // WIDTH, dtype=np.int64)
        for r in range(out.shape[0]):
            out[r] = argmin_width(a, r * WIDTH, add, 0)
        return out

    rng = np.random.default_rng(1)
    a = rng.integers(0, 5, size=(500, WIDTH)).astype(dtype)  # many ties
    add = rng.integers(0, 3, size=WIDTH).astype(dtype)
    a[3, :4] = np.nan  # NaN lanes are skipped
    a[4, :] = np.nan  # all NaN: 0
    got = rows_argmin(a.ravel(), add)
    b = a + add
    b[np.isnan(a).all(axis=1)] = 0.0
    expected = np.nanargmin(b, axis=1)
    np.testing.assert_array_equal(got, expected)
    assert got[4] == 0
    assert got[3] >= 4


def test_predict_edge_cases_and_errors() -> None:
    centers = np.array([[0.0, 0.0], [1.0, 1.0]])
    assert kmeans_predict(np.zeros((0, 2)), centers).shape == (0,)
    assert kmeans_predict([[0.9, 0.8]], centers).tolist() == [1]
    assert kmeans_predict(np.array([[0.5, 0.5]]), centers).tolist() == [0]  # tie -> lowest
    assert kmeans_predict(np.array([[np.nan, 0.0]]), centers)[0] in (0, 1)  # unspecified, valid
    with pytest.raises(ValueError, match="columns"):
        kmeans_predict(np.zeros((3, 3)), centers)
    with pytest.raises(ValueError, match="centers must not be empty"):
        kmeans_predict(np.zeros((3, 2)), np.zeros((0, 2)))
    with pytest.raises(TypeError, match="X must hold"):
        kmeans_predict(np.array([["a", "b"]]), centers)


def test_dask_kmeans_is_lazy_in_labels_and_matches_numpy() -> None:
    da = pytest.importorskip("dask.array")
    X = blobs(3000, 4, 5, seed=8)
    init = X[:5].copy()
    ref = kmeans(X, 5, init=init, tol=0.0)
    res = kmeans(da.from_array(X, chunks=(700, 4)), 5, init=init, tol=0.0)
    assert isinstance(res.labels, da.Array)
    np.testing.assert_array_equal(res.labels.compute(), ref.labels)
    np.testing.assert_allclose(res.centers, ref.centers, atol=1e-10)
    np.testing.assert_allclose(res.inertia, ref.inertia, rtol=1e-10)
    pp = kmeans(da.from_array(X, chunks=(1000, 2)), 5, seed=3)
    assert pp.centers.shape == (5, 4)
    assert pp.inertia <= 1.1 * ref.inertia


def test_dask_predict_and_xarray_predict() -> None:
    da = pytest.importorskip("dask.array")
    xr = pytest.importorskip("xarray")
    X = blobs(500, 3, 4, seed=9)
    centers = X[:4].copy()
    expected = kmeans_predict(X, centers)
    lazy = kmeans_predict(da.from_array(X, chunks=(128, 3)), centers)
    assert isinstance(lazy, da.Array)
    np.testing.assert_array_equal(lazy.compute(), expected)
    arr = xr.DataArray(X, dims=("sample", "feature"), coords={"sample": np.arange(500) * 10})
    labelled = kmeans_predict(arr, centers)
    assert labelled.dims == ("sample",)
    np.testing.assert_array_equal(labelled["sample"].values, arr["sample"].values)
    np.testing.assert_array_equal(labelled.values, expected)
    chunked = kmeans_predict(arr.chunk({"sample": 100}), centers)
    assert isinstance(chunked.data, da.Array)
    np.testing.assert_array_equal(chunked.values, expected)
