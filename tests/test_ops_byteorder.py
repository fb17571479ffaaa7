"""Byte-swapped input (a big-endian file read with ``np.fromfile``, say) works in every family.

The compiled kernels take native numbers only: without the conversion in the one input
validator, a ``>f8`` array reached Numba and failed with a typing traceback.  Each call must
give the result of the same data in native order, for NumPy and for Dask input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from ctrlstack import ops

RNG = np.random.default_rng(0)
X = RNG.normal(size=(300, 4))
V = RNG.normal(size=3000)
V[::97] = np.nan
LAB = RNG.integers(0, 7, 3000)
U = RNG.normal(size=(40, 40))
W1 = RNG.normal(size=(4, 5))
B1 = RNG.normal(size=5)
Y01 = (RNG.random(300) < 0.5).astype(np.float64)


def swapped(a: np.ndarray) -> np.ndarray:
    out = a.astype(a.dtype.newbyteorder("S"))
    assert not out.dtype.isnative
    return out


CALLS: dict[str, Callable[[Callable[[np.ndarray], Any]], Any]] = {
    "moving_std": lambda f: ops.moving_std(f(V), 10, min_count=3),
    "moving_max": lambda f: ops.moving_max(f(V), 10, min_count=3),
    "moving_mean_2d": lambda f: ops.moving_mean(f(U), 5, axis=0),
    "group_mean": lambda f: ops.group_mean(f(V), f(LAB), 7),
    "group_var": lambda f: ops.group_var(f(V), f(LAB), 7),
    "histogram": lambda f: ops.histogram(f(V), bins=10, range=(-3, 3)),
    "histogram2d": lambda f: ops.histogram2d(f(V), f(V), bins=8, range=((-3, 3), (-3, 3))),
    "pairwise": lambda f: ops.pairwise_distances(f(X)),
    "knn": lambda f: ops.knn(f(X), k=3),
    "kmeans": lambda f: ops.kmeans(f(X), 3, seed=0).centers,
    "heat_diffusion": lambda f: ops.heat_diffusion(f(U), 3, alpha=0.1),
    "jacobi_step": lambda f: ops.jacobi_step(f(U)),
    "logistic": lambda f: ops.logistic_loss_grad(f(np.ones(4)), f(X), f(Y01)),
    "mlp": lambda f: ops.mlp_forward(f(X), [f(W1)], [f(B1)]),
}


def flat(result: Any) -> list[np.ndarray]:
    return [np.asarray(r) for r in result] if isinstance(result, tuple) else [np.asarray(result)]


@pytest.mark.parametrize("name", list(CALLS))
def test_byte_swapped_numpy_input_gives_the_native_result(name: str) -> None:
    native = flat(CALLS[name](lambda a: a))
    other = flat(CALLS[name](swapped))
    for got, want in zip(other, native, strict=True):
        assert got.dtype.isnative
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, equal_nan=True)


def test_byte_swapped_dask_input_gives_the_native_result() -> None:
    da = pytest.importorskip("dask.array")
    lazy = da.from_array(swapped(V), chunks=700)
    np.testing.assert_allclose(
        ops.moving_std(lazy, 10, min_count=3).compute(),
        ops.moving_std(V, 10, min_count=3),
        rtol=1e-12,
        equal_nan=True,
    )
    np.testing.assert_allclose(
        ops.group_mean(lazy, LAB, 7).compute(), ops.group_mean(V, LAB, 7), rtol=1e-12
    )
    np.testing.assert_allclose(
        ops.heat_diffusion(da.from_array(swapped(U), chunks=20), 3, alpha=0.1).compute(),
        ops.heat_diffusion(U, 3, alpha=0.1),
        rtol=1e-12,
    )
    counts, _ = ops.histogram(lazy, bins=10, range=(-3, 3))
    np.testing.assert_array_equal(
        np.asarray(counts), np.asarray(ops.histogram(V, bins=10, range=(-3, 3))[0])
    )
    km = ops.kmeans(da.from_array(swapped(X), chunks=(100, 4)), 3, seed=0)
    assert np.asarray(km.centers).dtype.isnative
