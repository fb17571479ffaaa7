"""ctrlstack.ops.histograms against numpy.histogram / numpy.histogram2d.

Tolerances (reference = NumPy):

| case                         | tolerance                                   |
|------------------------------|---------------------------------------------|
| counts (any bins, any input) | exact, same dtype (int64), edges bit-equal  |
| float64 weights              | rtol 1e-12 (we sum per thread, NumPy sorts) |
| float32 weights              | rtol 1e-5 (we accumulate in float64)        |
| density                      | rtol 1e-12                                  |
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ctrlstack.ops.histograms import histogram, histogram2d

RNG = np.random.default_rng(42)
DATA = RNG.normal(size=5_000)


def _with_nan_inf(a: np.ndarray) -> np.ndarray:
    b = a.copy()
    b[::17] = np.nan
    b[5] = np.inf
    b[9] = -np.inf
    return b


CASES_1D = [
    ("int bins, auto range", DATA, 10, None),
    ("int bins, range", DATA, 37, (-1.0, 2.0)),
    ("range clips data", DATA, 8, (-0.5, 0.5)),
    ("explicit edges", DATA, np.array([-3.0, -1.0, 0.0, 0.0, 0.5, 2.0]), None),
    ("explicit edges, range ignored", DATA, np.array([-1.0, 0.0, 1.0]), (0.0, 1.0)),
    ("NaN/inf with explicit range", _with_nan_inf(DATA), 20, (-1.0, 1.0)),
    ("NaN/inf with explicit edges", _with_nan_inf(DATA), np.linspace(-2, 2, 9), None),
    ("float32", DATA.astype(np.float32), 50, None),
    ("float32 with range", DATA.astype(np.float32), 13, (-0.3, 0.7)),
    ("int64", RNG.integers(-50, 50, 3_000), 7, None),
    ("int64 explicit edges", RNG.integers(-50, 50, 3_000), np.array([-50, -10, 0, 49]), None),
    ("length 1", np.array([3.0]), 5, None),
    ("constant", np.full(10, 2.5), 4, None),
    ("empty", np.array([], dtype=np.float64), 3, None),
    ("values on every edge", np.linspace(0, 1, 11), 10, (0.0, 1.0)),
    ("2-D Fortran input", np.asfortranarray(RNG.random((40, 30))), 9, None),
    ("non-contiguous", DATA[::3], 11, None),
]


@pytest.mark.parametrize(("label", "a", "bins", "rng"), CASES_1D, ids=[c[0] for c in CASES_1D])
def test_histogram_matches_numpy(label: str, a: np.ndarray, bins: Any, rng: Any) -> None:
    hist, edges = histogram(a, bins, rng)
    ref_hist, ref_edges = np.histogram(a, bins, rng)
    assert hist.dtype == ref_hist.dtype
    np.testing.assert_array_equal(hist, ref_hist)
    assert edges.dtype == ref_edges.dtype or np.ndim(bins) == 1
    np.testing.assert_array_equal(edges, ref_edges)


@pytest.mark.parametrize("threads", [1, 2])
def test_parallel_pieces_match_serial(threads: int) -> None:
    a = RNG.normal(size=300_000)  # > 64k values per piece, so 2 threads really split
    hist, _ = histogram(a, 64, (-3, 3), threads=threads)
    np.testing.assert_array_equal(hist, np.histogram(a, 64, (-3, 3))[0])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_weights_and_density(dtype: type) -> None:
    w: np.ndarray = RNG.random(DATA.size).astype(dtype)
    hist, _ = histogram(DATA, 20, (-2, 2), weights=w)
    ref, _ = np.histogram(DATA, 20, (-2, 2), weights=w)
    assert hist.dtype == ref.dtype
    np.testing.assert_allclose(hist, ref, rtol=1e-12 if dtype is np.float64 else 1e-5)
    dens, _ = histogram(DATA, 15, density=True)
    np.testing.assert_allclose(dens, np.histogram(DATA, 15, density=True)[0], rtol=1e-12)


def test_autodetected_range_with_nan_raises_like_numpy() -> None:
    a = _with_nan_inf(DATA)
    with pytest.raises(ValueError, match="autodetected range"):
        np.histogram(a, 10)
    with pytest.raises(ValueError, match="autodetected range"):
        histogram(a, 10)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"bins": 0}, ValueError, "positive"),
        ({"bins": 2.5}, TypeError, "bins"),
        ({"bins": np.array([1.0, 0.0])}, ValueError, "monotonically"),
        ({"bins": np.array([0.0, np.nan, 1.0])}, ValueError, "must not be NaN"),
        ({"bins": 5, "range": (1.0, 0.0)}, ValueError, "range"),
        ({"bins": 5, "range": (0.0, np.inf)}, ValueError, "not finite"),
        ({"bins": 5, "weights": np.ones(3)}, ValueError, "weights"),
    ],
)
def test_histogram_errors(kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        histogram(DATA, **kwargs)


def test_histogram_rejects_bad_dtypes() -> None:
    with pytest.raises(TypeError, match="a must hold"):
        histogram(np.array(["x", "y"]))
    with pytest.raises(TypeError, match="a must hold"):
        histogram(np.ones(3, dtype=np.complex128))


X2 = RNG.random(2_000)
Y2 = RNG.normal(size=2_000)
CASES_2D = [
    ("int bins", 10, None),
    ("pair of ints", [5, 7], None),
    ("range", [6, 4], [[0.2, 0.8], [-1, 1]]),
    ("edges and int", [np.linspace(0, 1, 4), 6], None),
    ("one edge array for both", np.linspace(-1, 1, 5), None),
]


@pytest.mark.parametrize(("label", "bins", "rng"), CASES_2D, ids=[c[0] for c in CASES_2D])
def test_histogram2d_matches_numpy(label: str, bins: Any, rng: Any) -> None:
    h, xe, ye = histogram2d(X2, Y2, bins, rng)
    rh, rxe, rye = np.histogram2d(X2, Y2, bins, rng)
    assert h.dtype == rh.dtype
    np.testing.assert_array_equal(h, rh)
    np.testing.assert_array_equal(xe, rxe)
    np.testing.assert_array_equal(ye, rye)


def test_histogram2d_weights_nan_float32() -> None:
    x = X2.astype(np.float32)
    y = Y2.astype(np.float32)
    y[::11] = np.nan
    w = RNG.random(x.size)
    h, xe, ye = histogram2d(x, y, [4, 5], [[0, 1], [-1, 1]], weights=w, density=True)
    rh, rxe, rye = np.histogram2d(x, y, [4, 5], [[0, 1], [-1, 1]], weights=w, density=True)
    np.testing.assert_allclose(h, rh, rtol=1e-12)
    np.testing.assert_array_equal(xe, rxe)
    np.testing.assert_array_equal(ye, rye)
    with pytest.raises(ValueError, match="autodetected range"):
        histogram2d(x, y, 3)
    with pytest.raises(ValueError, match="1-D of equal length"):
        histogram2d(x, y[:-1], 3)


def test_dask_histogram_is_lazy_and_equal() -> None:
    da = pytest.importorskip("dask.array")
    a = _with_nan_inf(DATA)
    d = da.from_array(a.reshape(50, 100), chunks=(20, 30))
    hist, edges = histogram(d, 12, (-2, 2))
    assert isinstance(hist, da.Array)
    ref, ref_edges = np.histogram(a, 12, (-2, 2))
    np.testing.assert_array_equal(hist.compute(), ref)
    np.testing.assert_array_equal(edges, ref_edges)
    w = RNG.random(a.size)
    hw, _ = histogram(d, 12, (-2, 2), weights=da.from_array(w.reshape(50, 100), chunks=25))
    np.testing.assert_allclose(hw.compute(), np.histogram(a, 12, (-2, 2), weights=w)[0], rtol=1e-12)
    with pytest.raises(ValueError, match="range"):
        histogram(d, 12)


def test_dask_histogram2d_is_lazy_and_equal() -> None:
    da = pytest.importorskip("dask.array")
    dx = da.from_array(X2, chunks=300)
    dy = da.from_array(Y2, chunks=300)
    bins: Any = [4, np.linspace(-2, 2, 6)]
    rng: Any = [[0, 1], None]
    h, _, _ = histogram2d(dx, dy, bins, rng)
    assert isinstance(h, da.Array)
    ref = np.histogram2d(X2, Y2, bins, rng)[0]
    np.testing.assert_array_equal(h.compute(), ref)


def test_xarray_input_uses_its_data() -> None:
    xr = pytest.importorskip("xarray")
    arr = xr.DataArray(DATA.reshape(50, 100), dims=("a", "b"))
    hist, _ = histogram(arr, 7, (-1, 1))
    np.testing.assert_array_equal(hist, np.histogram(DATA, 7, (-1, 1))[0])


def test_concurrent_python_threads() -> None:
    """Parallel kernels entered from several Python threads at once (a Dask worker's situation)."""
    from concurrent.futures import ThreadPoolExecutor

    a = RNG.normal(size=200_000)
    ref = np.histogram(a, 32, (-3, 3))[0]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: histogram(a, 32, (-3, 3), threads=2)[0], range(12)))
    for res in results:
        np.testing.assert_array_equal(res, ref)
