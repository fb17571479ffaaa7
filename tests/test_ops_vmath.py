"""ctrlstack.ops._vmath: the vectorisable exp and log1p against libm, and the logistic loss
that uses them at the edges (huge |z|, infinities, NaN) against a float64 NumPy reference."""

from __future__ import annotations

import math

import numba
import numpy as np

from ctrlstack.ops import logistic_loss_grad
from ctrlstack.ops._vmath import EXP_MIN, exp_nonpos, log1p_unit


@numba.njit(fastmath={"contract"}, error_model="numpy")
def _both(a, e, lg):  # type: ignore[no-untyped-def]
    for i in range(a.shape[0]):
        e[i] = exp_nonpos(a[i])
        lg[i] = log1p_unit(e[i])


def test_exp_and_log1p_match_libm() -> None:
    rng = np.random.default_rng(0)
    a = -np.concatenate(
        [rng.exponential(3.0, 200_000), np.linspace(0.0, 707.9, 20_001), [0.0, 5e-324, 0.3466]]
    )
    e = np.empty_like(a)
    lg = np.empty_like(a)
    _both(a, e, lg)
    ref_e = np.array([math.exp(v) for v in a])
    ref_l = np.array([math.log1p(v) for v in ref_e])
    np.testing.assert_allclose(e, ref_e, rtol=4e-16, atol=0)
    np.testing.assert_allclose(lg, ref_l, rtol=1e-15, atol=0)
    assert e[-3] == 1.0
    assert lg[-3] == math.log(2.0)
    # below the clamp: e**EXP_MIN, an absolute error of at most ~3.3e-308
    low = np.array([-709.0, -745.0, -1e300, -np.inf])
    out = np.empty_like(low)
    _both(low, out, np.empty_like(low))
    np.testing.assert_allclose(out, math.exp(EXP_MIN), rtol=4e-16, atol=0)


def _reference(w: np.ndarray, X: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    z = X.astype(np.float64) @ w.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        loss = np.mean(np.logaddexp(0.0, z) - y * z)
        p = np.where(z >= 0, 1.0 / (1.0 + np.exp(-z)), np.exp(z) / (1.0 + np.exp(z)))
        grad = X.T.astype(np.float64) @ (p - y) / X.shape[0]
    return float(loss), grad


def test_logistic_at_large_margins_and_with_nan() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(1000, 5))
    y = (rng.random(1000) < 0.5).astype(np.float64)
    for scale in (0.01, 1.0, 40.0, 400.0):  # z up to several hundred: e^-|z| tiny or clamped
        w = rng.normal(size=5) * scale
        loss, grad = logistic_loss_grad(w, X, y, threads=1)
        ref_loss, ref_grad = _reference(w, X, y)
        assert math.isclose(loss, ref_loss, rel_tol=1e-12)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-10, atol=1e-14 * np.abs(ref_grad).max())
    Xn = X.copy()
    Xn[7, 2] = np.nan
    loss, grad = logistic_loss_grad(np.ones(5), Xn, y)
    assert math.isnan(loss)
    assert np.isnan(grad).all()
