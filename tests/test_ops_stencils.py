"""ctrlstack.ops.stencils against NumPy slicing.

Tolerances (reference = the NumPy slicing step below, same dtype):

| case            | tolerance                                               |
|-----------------|---------------------------------------------------------|
| float64         | atol 1e-12 (same operation order, ~1 ulp apart)        |
| float32         | atol 1e-5                                               |
| Dask / xarray   | equal to our NumPy result (atol 1e-12)                  |
"""

from __future__ import annotations

import numpy as np
import pytest

from ctrlstack.ops.stencils import heat_diffusion, jacobi_step

RNG = np.random.default_rng(7)


def reference(u: np.ndarray, alpha: float, steps: int) -> np.ndarray:
    """Plain NumPy slicing: the explicit step with a fixed boundary."""
    u = u.astype(np.float64) if u.dtype.kind in "iu" else u.copy()
    for _ in range(steps):
        v = u.copy()
        c = u[(slice(1, -1),) * u.ndim]
        acc = np.zeros_like(c)
        for ax in range(u.ndim):
            lo = [slice(1, -1)] * u.ndim
            hi = [slice(1, -1)] * u.ndim
            lo[ax] = slice(None, -2)
            hi[ax] = slice(2, None)
            acc = acc + u[tuple(lo)] + u[tuple(hi)]
        with np.errstate(invalid="ignore"):  # inf - inf in the "with inf" case
            v[(slice(1, -1),) * u.ndim] = c + alpha * (acc - 2 * u.ndim * c)
        u = v
    return u


CASES = [
    ("2-D float64", RNG.random((33, 41)), 0.2, 3),
    ("2-D float32", RNG.random((20, 17)).astype(np.float32), 0.25, 4),
    ("2-D int", RNG.integers(0, 100, (12, 9)), 0.1, 2),
    ("2-D Fortran", np.asfortranarray(RNG.random((15, 22))), 0.25, 2),
    ("2-D non-contiguous", RNG.random((30, 40))[::2, ::3], 0.2, 2),
    ("2-D with inf and NaN", np.where(RNG.random((10, 10)) > 0.9, np.inf, 1.0), 0.2, 1),
    ("3-D float64", RNG.random((9, 10, 11)), 0.1, 3),
    ("3-D float32", RNG.random((6, 7, 8)).astype(np.float32), 1 / 6, 2),
    ("thin 2-D (all boundary)", RNG.random((2, 9)), 0.25, 2),
    ("one row", RNG.random((1, 5)), 0.25, 1),
    ("empty", np.empty((0, 4)), 0.25, 2),
    ("zero steps", RNG.random((5, 5)), 0.25, 0),
]


@pytest.mark.parametrize(("label", "u", "alpha", "steps"), CASES, ids=[c[0] for c in CASES])
def test_heat_diffusion_matches_numpy(label: str, u: np.ndarray, alpha: float, steps: int) -> None:
    before = u.copy()
    got = heat_diffusion(u, steps, alpha=alpha)
    ref = reference(u, alpha, steps)
    assert got.dtype == ref.dtype
    atol = 1e-5 if got.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, ref, atol=atol, rtol=0)
    np.testing.assert_array_equal(u, before)  # input untouched


def test_jacobi_default_alpha_is_neighbour_mean() -> None:
    u = RNG.random((8, 9))
    got = jacobi_step(u)
    inner = (u[:-2, 1:-1] + u[2:, 1:-1] + u[1:-1, :-2] + u[1:-1, 2:]) / 4
    np.testing.assert_allclose(got[1:-1, 1:-1], inner, atol=1e-14)
    np.testing.assert_array_equal(got[0], u[0])
    u3 = RNG.random((5, 6, 7))
    np.testing.assert_allclose(jacobi_step(u3), reference(u3, 1 / 6, 1), atol=1e-14)


def test_out_buffer_is_used_and_checked() -> None:
    u = RNG.random((16, 16))
    out = np.empty_like(u)
    res = heat_diffusion(u, 3, alpha=0.2, out=out, threads=2)
    assert res is out
    np.testing.assert_allclose(out, reference(u, 0.2, 3), atol=1e-12)
    fout = np.empty_like(u, order="F")
    jacobi_step(u, fout)
    np.testing.assert_allclose(fout, reference(u, 0.25, 1), atol=1e-12)
    inplace = u.copy()
    assert jacobi_step(inplace, inplace) is inplace  # in place: computed apart, then copied
    np.testing.assert_allclose(inplace, reference(u, 0.25, 1), atol=1e-12)
    flat = np.concatenate([u.ravel(), np.zeros(1)])
    shifted = flat[1:].reshape(u.shape)  # overlaps its input shifted by one value
    heat_diffusion(flat[:-1].reshape(u.shape), 3, alpha=0.2, out=shifted)
    np.testing.assert_allclose(shifted, reference(u, 0.2, 3), atol=1e-12)
    with pytest.raises(ValueError, match="shape"):
        jacobi_step(u, np.empty((4, 4)))
    with pytest.raises(TypeError, match="dtype"):
        jacobi_step(u, np.empty((16, 16), dtype=np.float32))


@pytest.mark.parametrize(
    ("u", "kwargs", "exc", "match"),
    [
        (np.ones(5), {}, ValueError, "2-D"),
        (np.ones((3, 3), dtype=np.complex128), {}, TypeError, "dtype"),
        (np.ones((3, 3)), {"alpha": 0.3}, ValueError, "unstable"),
        (np.ones((3, 3, 3)), {"alpha": 0.2}, ValueError, "unstable"),
        (np.ones((3, 3)), {"alpha": -0.1}, ValueError, "alpha"),
        (np.ones((3, 3)), {"alpha": "x"}, TypeError, "alpha"),
    ],
)
def test_errors(u: np.ndarray, kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        jacobi_step(u, **kwargs)


def test_steps_validated() -> None:
    with pytest.raises(ValueError, match="steps"):
        heat_diffusion(np.ones((3, 3)), -1, alpha=0.1)
    with pytest.raises(TypeError, match="steps"):
        heat_diffusion(np.ones((3, 3)), 1.5, alpha=0.1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("shape", "chunks"), [((37, 29), (10, 8)), ((11, 12, 13), (4, 5, 6)), ((20, 20), (1, 20))]
)
def test_dask_halo_exchange_equals_full_array(shape: tuple, chunks: tuple) -> None:
    da = pytest.importorskip("dask.array")
    u = RNG.random(shape)
    d = da.from_array(u, chunks=chunks)
    res = heat_diffusion(d, 4, alpha=0.1)
    assert isinstance(res, da.Array)
    np.testing.assert_allclose(res.compute(), heat_diffusion(u, 4, alpha=0.1), atol=1e-12)


def test_xarray_keeps_labels_and_dims() -> None:
    xr = pytest.importorskip("xarray")
    da = pytest.importorskip("dask.array")
    u = RNG.random((12, 10))
    arr = xr.DataArray(u, dims=("y", "x"), coords={"x": np.arange(10) * 0.5}, attrs={"units": "K"})
    res = heat_diffusion(arr, 2, alpha=0.2)
    assert res.dims == ("y", "x")
    assert res.attrs == {"units": "K"}
    np.testing.assert_array_equal(res.x, arr.x)
    np.testing.assert_allclose(res.values, heat_diffusion(u, 2, alpha=0.2), atol=1e-12)
    lazy = heat_diffusion(arr.chunk({"y": 5}), 2, alpha=0.2)
    assert isinstance(lazy.data, da.Array)
    np.testing.assert_allclose(lazy.values, res.values, atol=1e-12)


def test_concurrent_python_threads() -> None:
    """Parallel kernels entered from several Python threads at once (a Dask worker's situation)."""
    from concurrent.futures import ThreadPoolExecutor

    u = RNG.random((64, 64))
    ref = reference(u, 0.2, 3)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: heat_diffusion(u, 3, alpha=0.2, threads=2), range(12)))
    for res in results:
        np.testing.assert_allclose(res, ref, atol=1e-12)
