"""Logistic loss/gradient and MLP forward against plain NumPy/SciPy references.

Tolerances (inputs ~N(0, 1), n <= 2000, d <= 16):

| kernel                    | reference                                          | float64    | float32    |
|---------------------------|----------------------------------------------------|------------|------------|
| logistic loss             | mean(logaddexp(0, z) - y z) + l2/2 |w|^2          | rtol 1e-12 | rtol 1e-5  |
| logistic grad             | X.T @ (expit(z) - y) / n + l2 w                    | atol 1e-12 | atol 1e-5  |
| mlp_forward probabilities | NumPy matmul + activation, scipy.special.softmax   | atol 1e-12 | atol 1e-5  |
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from ctrlstack.ops.linear import ACTIVATIONS, logistic_loss_grad, mlp_forward

special = pytest.importorskip("scipy.special")

TOL: dict[Any, float] = {np.float64: 1e-12, np.float32: 1e-5}


def logistic_ref(w: np.ndarray, X: np.ndarray, y: np.ndarray, l2: float = 0.0) -> tuple:
    w, X, y = (a.astype(np.float64) for a in (w, X, y))
    z = X @ w
    loss = np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * w @ w
    grad = X.T @ (special.expit(z) - y) / len(y) + l2 * w
    return float(loss), grad


def problem(n: int, d: int, dtype: Any = np.float64, seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(dtype)
    w = rng.standard_normal(d).astype(dtype)
    y = (rng.random(n) < special.expit(X.astype(np.float64) @ w)).astype(dtype)
    return w, X, y


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("l2", [0.0, 0.3])
def test_logistic_matches_numpy(dtype: Any, l2: float) -> None:
    w, X, y = problem(2000, 11, dtype)
    loss, grad = logistic_loss_grad(w, X, y, l2=l2, threads=2)
    rl, rg = logistic_ref(w, X, y, l2)
    assert grad.dtype == dtype
    assert isinstance(loss, float)
    np.testing.assert_allclose(loss, rl, rtol=TOL[dtype])
    np.testing.assert_allclose(grad, rg, atol=TOL[dtype])


def test_logistic_is_stable_for_huge_margins_and_soft_labels() -> None:
    X = np.array([[800.0], [-800.0], [1e-3], [0.0]])
    y = np.array([0.0, 1.0, 0.25, 1.0])
    w = np.array([1.0])
    loss, grad = logistic_loss_grad(w, X, y)
    rl, rg = logistic_ref(w, X, y)
    assert np.isfinite(loss)
    assert np.isfinite(grad).all()
    np.testing.assert_allclose(loss, rl, rtol=1e-12)
    np.testing.assert_allclose(grad, rg, atol=1e-12)


def test_logistic_layouts_int_bool_and_out() -> None:
    w, X, y = problem(300, 4)
    rl, rg = logistic_ref(w, X, y)
    out = np.empty(4)
    _loss, grad = logistic_loss_grad(w, np.asfortranarray(X), y.astype(bool), out=out)
    assert grad is out
    np.testing.assert_allclose(grad, rg, atol=1e-12)
    wide = np.zeros((300, 8))
    wide[:, ::2] = X
    np.testing.assert_allclose(logistic_loss_grad(w, wide[:, ::2], y)[0], rl, rtol=1e-12)
    Xi = np.arange(12).reshape(6, 2) - 5
    yi = np.array([0, 1, 0, 1, 1, 0])
    wi = np.array([0.1, -0.2])
    np.testing.assert_allclose(
        logistic_loss_grad(wi, Xi, yi)[1], logistic_ref(wi, Xi * 1.0, yi * 1.0)[1], atol=1e-12
    )
    one = logistic_loss_grad(np.zeros(1), [[2.0]], [1.0])
    assert one[0] == pytest.approx(np.log(2.0))
    assert one[1].tolist() == [-1.0]


def test_logistic_propagates_nan() -> None:
    w, X, y = problem(50, 3)
    X[7, 1] = np.nan
    loss, grad = logistic_loss_grad(w, X, y)
    assert np.isnan(loss)
    assert np.isnan(grad).all()


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: logistic_loss_grad(np.ones(3), np.ones((4, 2)), np.ones(4)), ValueError, "w must"),
        (lambda: logistic_loss_grad(np.ones(2), np.ones((4, 2)), np.ones(3)), ValueError, "y must"),
        (
            lambda: logistic_loss_grad(np.ones(2), np.ones((4, 2)), np.full(4, 2)),
            ValueError,
            "y must",
        ),
        (lambda: logistic_loss_grad(np.ones(2), np.ones((0, 2)), np.ones(0)), ValueError, "row"),
        (
            lambda: logistic_loss_grad(np.ones(2), np.ones(4), np.ones(4)),
            ValueError,
            "X must be 2-D",
        ),
        (
            lambda: logistic_loss_grad(np.ones(2), np.ones((4, 2), bool), np.ones(4)),
            TypeError,
            "X must hold",
        ),
        (
            lambda: logistic_loss_grad(np.ones(2), np.ones((4, 2)), np.ones(4), l2=-1.0),
            ValueError,
            "l2",
        ),
        (
            lambda: logistic_loss_grad(np.ones(2), np.ones((4, 2)), np.ones(4), out=np.empty(3)),
            ValueError,
            "out",
        ),
    ],
)
def test_logistic_errors_name_the_argument(call: object, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        call()  # type: ignore[operator]


def mlp_ref(X: np.ndarray, weights: list, biases: list, activation: str) -> np.ndarray:
    act = {
        "relu": lambda v: np.maximum(v, 0.0),
        "tanh": np.tanh,
        "sigmoid": special.expit,
        "identity": lambda v: v,
    }[activation]
    h = X.astype(np.float64)
    for W, b in zip(weights[:-1], biases[:-1], strict=True):
        h = act(h @ W.astype(np.float64) + b)
    return special.softmax(h @ weights[-1].astype(np.float64) + biases[-1], axis=1)


def network(sizes: list[int], dtype: Any = np.float64, seed: int = 0) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    weights = [
        (rng.standard_normal((a, b)) / np.sqrt(a)).astype(dtype)
        for a, b in itertools.pairwise(sizes)
    ]
    biases = [rng.standard_normal(b).astype(dtype) for b in sizes[1:]]
    return weights, biases


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_mlp_matches_numpy(dtype: Any, activation: str) -> None:
    X = np.random.default_rng(1).standard_normal((700, 9)).astype(dtype)
    weights, biases = network([9, 33, 17, 4], dtype)
    P = mlp_forward(X, weights, biases, activation=activation, threads=2)
    assert P.dtype == dtype
    assert P.shape == (700, 4)
    np.testing.assert_allclose(P, mlp_ref(X, weights, biases, activation), atol=TOL[dtype])
    np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=TOL[dtype])


def test_mlp_single_layer_out_layouts_and_edges() -> None:
    X = np.random.default_rng(2).standard_normal((130, 5))
    weights, biases = network([5, 3])
    out = np.empty((130, 3))
    assert mlp_forward(np.asfortranarray(X), weights, biases, out=out) is out
    np.testing.assert_allclose(out, mlp_ref(X, weights, biases, "relu"), atol=1e-12)
    assert mlp_forward(np.zeros((0, 5)), weights, biases).shape == (0, 3)
    Xi = np.arange(10).reshape(2, 5)
    np.testing.assert_allclose(
        mlp_forward(Xi, weights, biases), mlp_ref(Xi, weights, biases, "relu"), atol=1e-12
    )
    huge = mlp_forward(np.full((1, 5), 1e4), weights, biases)  # softmax must not overflow
    assert np.isfinite(huge).all()
    assert huge.sum() == pytest.approx(1.0)
    nan = mlp_forward(np.array([[np.nan, 0, 0, 0, 0]]), weights, biases)
    assert np.isnan(nan).all()
    # float32 X with float64 weights computes in float64
    assert mlp_forward(X.astype(np.float32), weights, biases).dtype == np.float64


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "match"),
    [
        ((np.ones((2, 4)),), {}, ValueError, r"weights\[0\] must have X.shape\[1\] = 4 rows"),
        ((np.ones((2, 5)),), {"activation": "gelu"}, ValueError, "activation"),
        ((np.ones(5),), {}, ValueError, "X must be 2-D"),
        ((np.ones((2, 5)),), {"out": np.empty((2, 2))}, ValueError, "out"),
    ],
)
def test_mlp_errors_name_the_argument(args: tuple, kwargs: dict, exc: type, match: str) -> None:
    weights, biases = network([5, 3])
    with pytest.raises(exc, match=match):
        mlp_forward(args[0], weights, biases, **kwargs)


def test_mlp_parameter_errors() -> None:
    weights, biases = network([5, 4, 3])
    X = np.ones((2, 5))
    with pytest.raises(ValueError, match="equal length"):
        mlp_forward(X, weights, biases[:1])
    with pytest.raises(ValueError, match=r"biases\[1\] must have length 3"):
        mlp_forward(X, weights, [biases[0], np.ones(2)])
    with pytest.raises(
        ValueError, match=r"weights\[1\] must have the columns of weights\[0\] = 4 rows"
    ):
        mlp_forward(X, [weights[0], np.ones((3, 3))], biases)
    with pytest.raises(TypeError, match="sequences"):
        mlp_forward(X, weights[0], biases[0])


def test_dask_paths_are_lazy_and_match_numpy() -> None:
    da = pytest.importorskip("dask.array")
    w, X, y = problem(1000, 6, seed=3)
    Xd = da.from_array(X, chunks=(230, 3))
    loss, grad = logistic_loss_grad(w, Xd, da.from_array(y, chunks=100), l2=0.1)
    assert isinstance(loss, da.Array)
    assert isinstance(grad, da.Array)
    el, eg = logistic_loss_grad(w, X, y, l2=0.1)
    np.testing.assert_allclose(float(loss.compute()), el, rtol=1e-12)
    np.testing.assert_allclose(grad.compute(), eg, atol=1e-12)
    loss2, _ = logistic_loss_grad(w, Xd, y)  # in-memory y is split along X's chunks
    np.testing.assert_allclose(float(loss2.compute()), logistic_loss_grad(w, X, y)[0], rtol=1e-12)
    weights, biases = network([6, 8, 3])
    P = mlp_forward(Xd, weights, biases, activation="tanh")
    assert isinstance(P, da.Array)
    np.testing.assert_allclose(
        P.compute(), mlp_forward(X, weights, biases, activation="tanh"), atol=1e-14
    )


def test_mlp_out_may_overlap_x_and_outs_must_be_writeable() -> None:
    rng = np.random.default_rng(16)
    n, d = 20_000, 16  # several row blocks: later blocks read X after earlier ones are written
    X = rng.normal(size=(n, d))
    weights, biases = [rng.normal(size=(d, d))], [np.zeros(d)]
    want = mlp_forward(X, weights, biases)
    flat = np.concatenate([X.ravel(), np.zeros(d)])
    src, dst = flat[:-d].reshape(n, d), flat[d:].reshape(n, d)  # dst is src one row on
    assert mlp_forward(src, weights, biases, out=dst) is dst
    np.testing.assert_allclose(dst, want, rtol=1e-12, atol=1e-12)
    frozen = np.empty((n, d))
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        mlp_forward(X, weights, biases, out=frozen)
    grad_frozen = np.empty(d)
    grad_frozen.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        logistic_loss_grad(np.zeros(d), X, (X[:, 0] > 0).astype(float), out=grad_frozen)
