"""The ML families on xarray DataArrays: same numbers as NumPy, labels carried to the results.

Every op takes a 2-D (sample, feature) DataArray (``feature_dim`` names the feature dim, default
the last one; the dims may come in either order) and must give exactly the NumPy result, with
the sample (or feature) coordinates on the output.
"""

from __future__ import annotations

import numpy as np
import pytest

from ctrlstack import ops

xr = pytest.importorskip("xarray")


def _data(n: int = 300, d: int = 4, seed: int = 0) -> tuple[np.ndarray, object]:
    X = np.random.default_rng(seed).random((n, d))
    arr = xr.DataArray(
        X,
        dims=("sample", "feature"),
        coords={"sample": np.arange(n) * 10, "feature": list("abcd")[:d]},
    )
    return X, arr


def test_kmeans_and_predict_label_the_sample_dim() -> None:
    X, arr = _data()
    init = X[:3].copy()
    ref = ops.kmeans(X, 3, init=init, tol=0.0)
    # transposed DataArray: feature_dim picks the features whatever the order
    res = ops.kmeans(arr.T, 3, init=init, tol=0.0, feature_dim="feature")
    assert res.labels.dims == ("sample",)
    np.testing.assert_array_equal(res.labels["sample"].values, arr["sample"].values)
    np.testing.assert_array_equal(res.labels.values, ref.labels)
    np.testing.assert_allclose(res.centers, ref.centers, atol=1e-12)
    assert res.n_iter == ref.n_iter
    pred = ops.kmeans_predict(arr, ref.centers)
    np.testing.assert_array_equal(pred.values, ops.kmeans_predict(X, ref.centers))


def test_pairwise_distances_dims_and_symmetry() -> None:
    X, arr = _data()
    Y, brr = _data(50, seed=1)
    brr = brr.rename(sample="other")
    same = ops.pairwise_distances(arr)
    assert same.dims == ("sample", "sample_2")
    np.testing.assert_array_equal(same["sample_2"].values, arr["sample"].values)
    np.testing.assert_array_equal(same.values, ops.pairwise_distances(X))
    # Y=None: computed on the upper tiles and mirrored -> exactly symmetric, zero diagonal
    assert np.array_equal(same.values, same.values.T)
    assert not same.values.diagonal().any()
    cross = ops.pairwise_distances(arr, brr, metric="cosine")
    assert cross.dims == ("sample", "other")
    np.testing.assert_array_equal(cross.values, ops.pairwise_distances(X, Y, metric="cosine"))


def test_knn_labels_rows_and_neighbours() -> None:
    X, arr = _data()
    d, i = ops.knn(arr, k=4)
    rd, ri = ops.knn(X, k=4)
    assert d.dims == i.dims == ("sample", "neighbor")
    np.testing.assert_array_equal(i.values, ri)
    np.testing.assert_array_equal(d.values, rd)
    np.testing.assert_array_equal(i["sample"].values, arr["sample"].values)


def test_linear_ops_label_features_and_classes() -> None:
    X, arr = _data()
    w = np.linspace(-1, 1, 4)
    y = (X[:, 0] > 0.5).astype(float)
    loss, grad = ops.logistic_loss_grad(w, arr, xr.DataArray(y, dims="sample"))
    rloss, rgrad = ops.logistic_loss_grad(w, X, y)
    assert loss == rloss
    assert grad.dims == ("feature",)
    assert list(grad["feature"].values) == list("abcd")
    np.testing.assert_array_equal(grad.values, rgrad)
    W = [np.ones((4, 3)) / 4, np.eye(3)]
    b = [np.zeros(3), np.arange(3.0)]
    probs = ops.mlp_forward(arr, W, b, activation="tanh")
    assert probs.dims == ("sample", "class")
    np.testing.assert_array_equal(probs.values, ops.mlp_forward(X, W, b, activation="tanh"))


def test_dask_backed_dataarray_stays_lazy() -> None:
    da = pytest.importorskip("dask.array")
    X, arr = _data()
    lazy = arr.chunk({"sample": 100})
    pred = ops.kmeans_predict(lazy, X[:3])
    assert isinstance(pred.data, da.Array)
    np.testing.assert_array_equal(pred.values, ops.kmeans_predict(X, X[:3]))
    probs = ops.mlp_forward(lazy, [np.ones((4, 2))], [np.zeros(2)])
    assert isinstance(probs.data, da.Array)
    assert probs.shape == (300, 2)


def test_bad_dataarrays_are_refused_with_the_argument_named() -> None:
    _, arr = _data()
    cube = xr.DataArray(np.zeros((2, 3, 4)), dims=("a", "b", "c"))
    with pytest.raises(ValueError, match="X must be a 2-D DataArray"):
        ops.kmeans(cube, 2)
    with pytest.raises(ValueError, match="feature_dim='nope'"):
        ops.pairwise_distances(arr, feature_dim="nope")
    with pytest.raises(TypeError, match="Y must be a DataArray too"):
        ops.knn(arr, np.zeros((5, 4)), 2)
