"""ctrlstack.ops.moving against pandas rolling, bottleneck move_* and a brute-force window loop.

Semantics: bottleneck's (``min_count`` default = window, ``ddof`` default 0) with pandas'
NaN pattern (``rolling(window, min_periods=min_count)``); the NaN pattern must match exactly.

Tolerances:

| kernel              | reference                 | tolerance                          |
|---------------------|---------------------------|------------------------------------|
| sum / mean          | pandas, bottleneck        | rtol 1e-9, atol 1e-12 (float64)    |
| var / std           | pandas, bottleneck        | rtol 1e-8, atol 1e-12 (float64)    |
| min / max           | pandas, bottleneck        | exact                              |
| float32 input       | pandas on float64 values  | rtol 1e-5, atol 1e-6               |
| large-offset var    | exact per-window np.var   | rtol 1e-9 (references are ~1e-7)   |
| inf handling        | brute-force window loop   | exact (references disagree: see docstring of moving.py) |
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from ctrlstack.ops.moving import (
    moving_max,
    moving_mean,
    moving_min,
    moving_std,
    moving_sum,
    moving_var,
)

RNG = np.random.default_rng(3)

KERNELS: dict[str, Callable[..., np.ndarray]] = {
    "sum": moving_sum,
    "mean": moving_mean,
    "var": moving_var,
    "std": moving_std,
    "min": moving_min,
    "max": moving_max,
}
TOL = {
    "sum": (1e-9, 1e-12),
    "mean": (1e-9, 1e-12),
    "var": (1e-8, 1e-12),
    "std": (1e-8, 1e-12),
    "min": (0, 0),
    "max": (0, 0),
}


def pandas_ref(name: str, a: np.ndarray, window: int, min_count: int, ddof: int = 0) -> np.ndarray:
    """pandas rolling along the last axis (rows of a 2-D array are independent series)."""
    frame = pd.DataFrame(np.atleast_2d(a).astype(np.float64).T)
    roll = frame.rolling(window, min_periods=min_count)
    res = getattr(roll, name)(ddof=ddof) if name in ("var", "std") else getattr(roll, name)()
    return res.to_numpy().T.reshape(a.shape)


def brute(name: str, a: np.ndarray, window: int, min_count: int, ddof: int = 0) -> np.ndarray:
    """Window-by-window NumPy definition (1-D), including exact inf semantics."""
    out = np.full(a.shape, np.nan)
    for i in range(a.size):
        win = a[max(0, i - window + 1) : i + 1]
        win = win[~np.isnan(win)]
        if win.size < min_count:
            continue
        with np.errstate(invalid="ignore"):  # inf + -inf
            out[i] = _brute_one(name, win, ddof)
    return out


def _brute_one(name: str, win: np.ndarray, ddof: int) -> float:
    if name in ("var", "std"):
        if win.size <= ddof:
            return np.nan
        v = win.var(ddof=ddof) if np.isfinite(win).all() else np.nan
        return float(v if name == "var" else np.sqrt(v))
    return float(getattr(win, name)())


def with_nans(shape: tuple[int, ...], frac: float = 0.15) -> np.ndarray:
    a = RNG.normal(size=shape)
    a[RNG.random(shape) < frac] = np.nan
    return a


def assert_same(got: np.ndarray, ref: np.ndarray, rtol: float, atol: float) -> None:
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))  # NaN pattern first
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol)


WINDOWS = [(1, None), (3, None), (7, 2), (25, 25), (60, 1)]


@pytest.mark.parametrize("name", list(KERNELS))
@pytest.mark.parametrize(("window", "min_count"), WINDOWS)
def test_matches_pandas_with_nans(name: str, window: int, min_count: int | None) -> None:
    a = with_nans((3, 400))
    ddof = 1 if name == "var" else 0
    kwargs = {"ddof": ddof} if name in ("var", "std") else {}
    got = KERNELS[name](a, window, min_count=min_count, **kwargs)
    mc = window if min_count is None else min_count
    assert_same(got, pandas_ref(name, a, window, mc, ddof), *TOL[name])


@pytest.mark.parametrize("name", list(KERNELS))
def test_matches_bottleneck(name: str) -> None:
    bn = pytest.importorskip("bottleneck")
    a = with_nans((2000,))
    got = KERNELS[name](a, 50, min_count=10)
    ref = getattr(bn, f"move_{name}")(a, 50, min_count=10)
    assert_same(got, ref, *TOL[name])


@pytest.mark.parametrize("name", list(KERNELS))
def test_window_longer_than_row_and_edge_shapes(name: str) -> None:
    fn = KERNELS[name]
    a = with_nans((9,), frac=0.2)
    assert_same(fn(a, 20, min_count=2), brute(name, a, 20, 2), 1e-12, 1e-12)
    assert np.isnan(fn(a, 20)).all()  # min_count defaults to window > length
    assert fn(np.empty(0), 3).shape == (0,)
    one = fn(np.array([2.0]), 1)
    ref = 0.0 if name in ("var", "std") else 2.0
    np.testing.assert_array_equal(one, [ref])


@pytest.mark.parametrize("name", list(KERNELS))
def test_inf_semantics_are_exact(name: str) -> None:
    a = np.array([np.inf, 1.0, 2.0, np.nan, -np.inf, 3.0, 4.0, 5.0, np.inf, -np.inf, 1.0, 2.0])
    got = KERNELS[name](a, 3, min_count=1)
    ref = brute(name, a, 3, 1)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_allclose(got, ref, rtol=1e-12)


def test_no_drift_after_huge_value_leaves() -> None:
    # bottleneck's sum stays 1 low for the rest of the row once the 1e16 has left
    c = np.array([1e16, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0])
    np.testing.assert_array_equal(moving_sum(c, 2)[2:], [3.0] * 5)
    np.testing.assert_array_equal(moving_mean(c, 2, threads=1)[2:], [1.5] * 5)
    # bottleneck's variance returns 0 once the 1e16 has left; the exact answer is 0.25
    a = np.array([1e16, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0])
    for w in (2, 3):
        got = moving_var(a, w)
        np.testing.assert_allclose(got[w:], brute("var", a, w, w)[w:], rtol=1e-12)
    b = RNG.normal(size=400)
    b[[0, 57, 100, 203]] = [1e12, -1e12, 1e13, 1e12]  # outliers, some at block starts
    for w in (3, 50):
        np.testing.assert_allclose(moving_std(b, w), brute("std", b, w, w), rtol=1e-6)
    big = 1e8 + RNG.normal(size=3000)
    exact = brute("var", big, 100, 100, ddof=1)
    np.testing.assert_allclose(moving_var(big, 100, ddof=1), exact, rtol=1e-9)
    np.testing.assert_allclose(moving_std(big, 100, ddof=1), np.sqrt(exact), rtol=1e-9)


@pytest.mark.parametrize("frac", [0.0, 0.005, 0.3])
@pytest.mark.parametrize("name", ["sum", "mean"])
def test_branchy_and_branch_free_sum_loops_agree_with_pandas(name: str, frac: float) -> None:
    """Rows with few NaNs take the branchy loop, rows with many the branch-free one."""
    from ctrlstack.ops._simd import few_nans

    a = with_nans((2, 6000), frac=frac)
    assert bool(few_nans(a[0, 100:])) is (frac < 0.025)  # both paths are exercised
    for window, mc in ((100, 100), (100, 60), (7, 1)):
        got = KERNELS[name](a, window, min_count=mc, threads=1)
        assert_same(got, pandas_ref(name, a, window, mc), *TOL[name])
    b = a[0].copy()
    b[[3000, 3001, 4500]] = [np.inf, -np.inf, np.inf]  # inf - inf inside the sparse loop
    got = KERNELS[name](b, 5, min_count=1)
    assert_same(got, brute(name, b, 5, 1), *TOL[name])
    assert np.isinf(got).sum() == np.isinf(brute(name, b, 5, 1)).sum() > 0


@pytest.mark.parametrize("name", ["sum", "mean"])
def test_four_value_steps_handle_nans_at_every_offset(name: str) -> None:
    """The branchy loop takes four values per step and re-walks a step holding a NaN.

    NaNs at each offset within a step, entering and leaving the window in the same step, and
    a NaN step next to a clean one: every output must equal the window-by-window definition.
    """
    from ctrlstack.ops._simd import few_nans

    a = RNG.normal(size=3001)  # an odd length: the last values take the one-value loop
    for r, start in enumerate((400, 801, 1202, 1603)):
        a[start + r] = np.nan  # offsets 0..3 within a step of the window-ending loop
    a[[2000, 2003, 2004, 2010]] = np.nan
    assert bool(few_nans(a[12:])) is True
    for window, mc in ((12, 12), (12, 9), (4, 1), (5, 3)):
        got = KERNELS[name](a, window, min_count=mc, threads=1)
        assert_same(got, brute(name, a, window, mc), *TOL[name])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", ["sum", "mean"])
def test_nan_steps_at_the_edges_of_the_64_value_masks(name: str, dtype: type) -> None:
    """The branchy loop learns which steps hold a NaN from one bit mask per 64 values.

    NaNs on both sides of each mask word's edge (entering and, ``window`` values later,
    leaving), a negative NaN, and one in the last values after the final whole word (the
    one-value walk): every output must equal the window-by-window definition.
    """
    from ctrlstack.ops._simd import few_nans

    w = 10
    a = RNG.normal(size=1000).astype(dtype)  # the loop starts at w: 15 words, then 30 values
    for pos in (w + 63, w + 64, w + 127, w + 130, 600, 601):
        a[pos] = np.nan
    a[700] = np.copysign(np.nan, -1.0)
    a[985] = np.nan
    assert bool(few_nans(a[w:])) is True
    rtol, atol = (1e-5, 1e-6) if dtype is np.float32 else TOL[name]
    for mc in (w, 7, 1):
        got = KERNELS[name](a, w, min_count=mc)
        assert got.dtype == dtype
        assert_same(got, brute(name, a.astype(np.float64), w, mc), rtol, atol)


def _step_and_walk() -> dict[str, np.ndarray]:
    """Inputs that defeat a plain add/remove variance, several streaming chunks long."""
    step = RNG.normal(size=6000)
    step[2500:] = 1e6 + 1e-3 * RNG.normal(size=3500)  # tiny variance far from the first shift
    walk = 1e8 + np.cumsum(RNG.normal(size=6000)) * 10.0  # drifts away from any fixed shift
    spikes = RNG.normal(size=6000)
    spikes[[100, 2047, 2048, 3000, 4500]] = [1e15, -1e14, 1e13, 1e16, np.inf]
    return {"step": step, "walk": walk, "spikes": spikes}


@pytest.mark.parametrize("case", ["step", "walk", "spikes"])
@pytest.mark.parametrize("threads", [1, 2])
def test_streaming_variance_falls_back_when_precision_is_at_risk(case: str, threads: int) -> None:
    """var/std stream over chunks; a chunk whose error bound fails is redone exactly."""
    a = _step_and_walk()[case]
    for w in (30, 200):
        exact = brute("var", a, w, w, ddof=1)
        got = moving_var(a, w, ddof=1, threads=threads)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(exact))
        fin = np.isfinite(exact)
        # windows holding a 1e15 spike carry its rounding, relative to the spike (both codes)
        quiet = fin & (np.abs(exact) < 1e20)
        np.testing.assert_allclose(got[quiet], exact[quiet], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(
            moving_std(a, w, ddof=1, threads=threads)[quiet], np.sqrt(exact[quiet]), rtol=1e-9
        )


def test_streaming_guard_and_chunk_length() -> None:
    """The guard proves a 1e-10 relative bound; huge windows skip streaming (guard 0)."""
    from ctrlstack.ops import moving as m

    chunk = m._stream_chunk_len(100)
    guard = m._stream_guard(100, chunk)
    assert chunk >= 16 * 100
    eps = np.finfo(np.float64).eps
    assert guard * 4 * eps * (chunk + 100) == pytest.approx(m._STREAM_RTOL)
    assert m._stream_guard(100_000, m._stream_chunk_len(100_000)) == 0.0
    # The step input really needs the fallback: streamed alone, the chunk holding the step is
    # off by orders of magnitude, and the guard reports it; the chunk before it is trusted.
    a = _step_and_walk()["step"]
    w = 30
    chunk = m._stream_chunk_len(w)
    _, _, guard, st, _ = m._tables(m._VAR, w, w, 1)
    out = np.empty_like(a)
    exact = brute("var", a, w, w, ddof=1)
    scratch = (np.empty((3, m._SUB)), np.empty(m._SUB, dtype=np.int64))
    args = (w, False, guard, st, *scratch)
    assert m._stream_chunk(a, out, 0, chunk, *args)
    np.testing.assert_allclose(out[w:chunk], exact[w:chunk], rtol=1e-9)
    assert not m._stream_chunk(a, out, chunk, 2 * chunk, *args)
    rel = np.abs(out[chunk : 2 * chunk] - exact[chunk : 2 * chunk]) / exact[chunk : 2 * chunk]
    assert rel.max() > 1e-3


@pytest.mark.parametrize("name", ["mean", "std", "max"])
def test_float32_int_and_layouts(name: str) -> None:
    fn = KERNELS[name]
    a64 = with_nans((40, 30))
    a32 = a64.astype(np.float32)
    got = fn(a32, 5, min_count=2)
    assert got.dtype == np.float32
    assert_same(got, pandas_ref(name, a32, 5, 2), 1e-5, 1e-6)
    ints = RNG.integers(-5, 5, (4, 50))
    got_i = fn(ints, 4)
    assert got_i.dtype == np.float64
    assert_same(got_i, pandas_ref(name, ints, 4, 4), 1e-12, 1e-12)
    # axis=0 on C and Fortran arrays, and a strided view: same as the transposed problem
    ref0 = pandas_ref(name, np.ascontiguousarray(a64.T), 6, 3).T
    assert_same(fn(a64, 6, min_count=3, axis=0), ref0, *TOL[name])
    assert_same(fn(np.asfortranarray(a64), 6, min_count=3, axis=0), ref0, *TOL[name])
    view = a64[::2, ::3]
    assert_same(fn(view, 3), pandas_ref(name, np.ascontiguousarray(view), 3, 3), *TOL[name])


def test_3d_axis_and_out_buffer() -> None:
    a = with_nans((3, 50, 4))
    out = np.empty_like(a)
    res = moving_mean(a, 5, min_count=1, axis=1, out=out)
    assert res is out
    ref = np.stack([pandas_ref("mean", np.ascontiguousarray(a[i].T), 5, 1).T for i in range(3)])
    assert_same(out, ref, *TOL["mean"])
    fout = np.empty_like(a, order="F")
    moving_mean(a, 5, min_count=1, axis=1, out=fout)
    assert_same(fout, ref, *TOL["mean"])


@pytest.mark.parametrize("name", list(KERNELS))
def test_parallel_segments_equal_serial(name: str) -> None:
    a = with_nans((200_000,), frac=0.01)  # long enough to be cut into segments for 2 threads
    serial = KERNELS[name](a, 100, min_count=50, threads=1)
    parallel = KERNELS[name](a, 100, min_count=50, threads=2)
    assert_same(parallel, serial, 1e-12, 1e-12)


@pytest.mark.parametrize("name", list(KERNELS))
@pytest.mark.parametrize("n", [5, 20_000])
def test_one_row_fast_path_equals_the_driver(
    name: str, n: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A short 1-D row takes ``_one_sum`` / ``_one_moments`` / ``_one_extreme``, 2-D the drivers.

    The same task functions run on the same values, so the results must be bitwise equal.
    """
    from ctrlstack.ops import moving

    a = with_nans((n,), frac=0.01)
    calls: list[str] = []
    entries = {"min": "_one_extreme", "max": "_one_extreme", "sum": "_one_sum", "mean": "_one_sum"}
    entry = entries.get(name, "_one_moments")
    real = getattr(moving, entry)

    def spy(*args: object) -> None:
        calls.append("one")
        real(*args)

    monkeypatch.setattr(moving, entry, spy)
    one = KERNELS[name](a, 100, min_count=3, threads=2)
    assert calls == ["one"]
    rows = KERNELS[name](np.stack([a, a]), 100, min_count=3, threads=2)
    np.testing.assert_array_equal(one, rows[0])
    np.testing.assert_array_equal(one, rows[1])
    with pytest.raises(ValueError, match="threads must be >= 1"):
        KERNELS[name](a, 100, threads=0)


@pytest.mark.parametrize("name", list(KERNELS))
@pytest.mark.parametrize("shape", [(5000,), (3, 70_000)])
def test_out_may_overlap_the_input(name: str, shape: tuple[int, ...]) -> None:
    """``out=a`` (in place) and an ``out`` shifted one value along ``a`` give the plain result."""
    a = with_nans(shape, frac=0.01)
    want = KERNELS[name](a, 50, min_count=3)
    b = a.copy()
    got = KERNELS[name](b, 50, min_count=3, out=b)
    assert got is b
    np.testing.assert_array_equal(b, want)
    flat = np.concatenate([a.ravel(), [0.0]])
    src, dst = flat[:-1].reshape(shape), flat[1:].reshape(shape)  # dst is src one value on
    KERNELS[name](src, 50, min_count=3, out=dst)
    np.testing.assert_array_equal(dst, want)


def test_one_row_path_by_dtype_identity_leaves_other_descriptors_to_the_driver() -> None:
    """The one-row path tests the dtype by identity; equal or byte-swapped ones still work."""
    a = with_nans((5000,), frac=0.01)
    base = moving_std(a, 50, min_count=3)
    tagged = a.view(np.dtype(np.float64, metadata={"unit": "m"}))  # equal, a distinct object
    assert tagged.dtype is not a.dtype
    np.testing.assert_array_equal(moving_std(tagged, 50, min_count=3), base)
    swapped = a.astype(a.dtype.newbyteorder())
    np.testing.assert_allclose(moving_std(swapped, 50, min_count=3), base, rtol=1e-12)
    with pytest.raises(TypeError, match="window"):
        moving_std(a, np.True_)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"window": 0}, ValueError, "window"),
        ({"window": 2.5}, TypeError, "window"),
        ({"window": 3, "min_count": 4}, ValueError, "min_count"),
        ({"window": 3, "min_count": 0}, ValueError, "min_count"),
        ({"window": 3, "axis": 2}, ValueError, "axis"),
        ({"window": 3, "out": np.empty(3)}, ValueError, "shape"),
        ({"window": 3, "out": np.empty((2, 10), dtype=np.float32)}, TypeError, "dtype"),
        ({"window": 3, "dim": "x"}, TypeError, "dim"),
    ],
)
def test_errors(kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        moving_mean(np.ones((2, 10)), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"window": 0}, ValueError, "window"),
        ({"window": True}, TypeError, "window"),
        ({"window": 3, "min_count": 4}, ValueError, "min_count"),
        ({"window": 3, "min_count": False}, TypeError, "min_count"),
        ({"window": 3, "ddof": -1}, ValueError, "ddof"),
        ({"window": 3, "ddof": 1.0}, TypeError, "ddof"),
        ({"window": 3, "axis": 1}, ValueError, "axis"),
        ({"window": 3, "threads": 0}, ValueError, "threads"),
    ],
)
def test_one_row_errors_are_the_general_paths(kwargs: dict, exc: type, match: str) -> None:
    """A 1-D float row starts on the one-row path; bad arguments still get the general errors."""
    with pytest.raises(exc, match=match):
        moving_var(np.ones(10), **kwargs)


def test_error_on_bad_dtype_and_ddof() -> None:
    with pytest.raises(TypeError, match="a must hold"):
        moving_sum(np.ones(3, dtype=np.complex64), 2)
    with pytest.raises(ValueError, match="ddof"):
        moving_var(np.ones(3), 2, ddof=-1)


@pytest.mark.parametrize(("axis", "chunks"), [(-1, (2, 37)), (0, (3, 40)), (-1, (4, 5))])
def test_dask_overlap_equals_numpy(axis: int, chunks: tuple) -> None:
    da = pytest.importorskip("dask.array")
    a = with_nans((6, 120))
    d = da.from_array(a, chunks=chunks)
    for fn in (moving_sum, moving_std, moving_min):
        res = fn(d, 12, min_count=3, axis=axis)
        assert isinstance(res, da.Array)
        assert_same(res.compute(), fn(a, 12, min_count=3, axis=axis), 1e-12, 1e-12)


def test_xarray_dim_keeps_labels() -> None:
    xr = pytest.importorskip("xarray")
    da = pytest.importorskip("dask.array")
    a = with_nans((4, 60))
    arr = xr.DataArray(a, dims=("station", "time"), coords={"time": np.arange(60)})
    res = moving_mean(arr, 5, min_count=1, dim="station")
    assert res.dims == ("station", "time")
    np.testing.assert_array_equal(res.time, arr.time)
    assert_same(res.values, moving_mean(a, 5, min_count=1, axis=0), 1e-12, 1e-12)
    lazy = moving_max(arr.chunk({"time": 20}), 7, min_count=2, dim="time")
    assert isinstance(lazy.data, da.Array)
    assert_same(lazy.values, moving_max(a, 7, min_count=2), 0, 0)
    with pytest.raises(ValueError, match="dim"):
        moving_mean(arr, 3, dim="nope")


def test_concurrent_python_threads() -> None:
    """Parallel kernels entered from several Python threads at once (a Dask worker's situation)."""
    from concurrent.futures import ThreadPoolExecutor

    a = with_nans((8, 5000))
    ref_std = moving_std(a, 30, min_count=5, threads=1)
    ref_min = moving_min(a, 30, min_count=5, threads=1)

    def work(i: int) -> np.ndarray:
        fn = moving_std if i % 2 else moving_min
        return fn(a, 30, min_count=5, threads=2)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, range(12)))
    for i, res in enumerate(results):
        assert_same(res, ref_std if i % 2 else ref_min, 0, 0)
