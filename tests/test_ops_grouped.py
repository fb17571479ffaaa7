"""ctrlstack.ops.grouped against numbagg group_nan*, pandas groupby and numpy.bincount.

Tolerances:

| kernel          | reference                           | tolerance               |
|-----------------|-------------------------------------|-------------------------|
| count           | numpy.bincount of non-NaN           | exact                   |
| sum / mean      | numbagg, pandas, bincount           | rtol 1e-12, atol 1e-12  |
| var             | numbagg, pandas (ddof=1)            | rtol 1e-9,  atol 1e-12  |
| min / max       | numbagg, pandas                     | exact                   |
| float32 values  | float64 computation                 | rtol 1e-6               |
| large-offset var| exact per-group np.var              | rtol 1e-9 (numbagg is off by ~100 %) |
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ctrlstack.ops.grouped import (
    group_count,
    group_max,
    group_mean,
    group_min,
    group_sum,
    group_var,
)

RNG = np.random.default_rng(11)
NG = 7

KERNELS: dict[str, Callable[..., Any]] = {
    "sum": group_sum,
    "mean": group_mean,
    "var": group_var,
    "min": group_min,
    "max": group_max,
    "count": group_count,
}
TOL = {
    "sum": (1e-12, 1e-12),
    "mean": (1e-12, 1e-12),
    "var": (1e-9, 1e-12),
    "min": (0, 0),
    "max": (0, 0),
    "count": (0, 0),
}


def data(shape: tuple[int, ...] = (3, 900)) -> tuple[np.ndarray, np.ndarray]:
    v = RNG.normal(size=shape)
    v[RNG.random(shape) < 0.1] = np.nan
    labels = RNG.integers(0, NG, shape[-1])
    labels[labels == 4] = 5  # group 4 is empty
    return v, labels


def pandas_ref(name: str, v: np.ndarray, labels: np.ndarray, ng: int) -> np.ndarray:
    frame = pd.DataFrame(np.atleast_2d(v).T)
    grouped = frame.groupby(labels)
    res = getattr(grouped, name)()
    res = res.reindex(range(ng))
    if name in ("sum", "count"):
        res = res.fillna(0)
    out = res.to_numpy().T.reshape((*v.shape[:-1], ng))
    return out.astype(np.int64) if name == "count" else out


def assert_same(got: np.ndarray, ref: np.ndarray, rtol: float, atol: float) -> None:
    if got.dtype.kind == "f":
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", list(KERNELS))
@pytest.mark.parametrize("threads", [1, 2])
def test_matches_pandas(name: str, threads: int) -> None:
    v, labels = data()
    got = KERNELS[name](v, labels, NG, threads=threads)
    assert got.shape == (3, NG)
    assert_same(got, pandas_ref(name, v, labels, NG), *TOL[name])


@pytest.mark.parametrize("name", list(KERNELS))
def test_matches_numbagg(name: str) -> None:
    numbagg = pytest.importorskip("numbagg")
    v, labels = data()
    ref = getattr(numbagg, f"group_nan{name}")(v, labels, num_labels=NG, axis=-1)
    got = KERNELS[name](v, labels, NG)
    if name == "sum":  # numbagg leaves all-NaN/empty groups at 0 like us
        pass
    assert_same(got, ref.astype(got.dtype), *TOL[name])


def test_bincount_reference_and_dtypes() -> None:
    v, labels = data((5000,))
    ok = ~np.isnan(v)
    np.testing.assert_array_equal(group_count(v, labels, NG), np.bincount(labels[ok], minlength=NG))
    np.testing.assert_allclose(
        group_sum(v, labels, NG), np.bincount(labels[ok], v[ok], minlength=NG), rtol=1e-12
    )
    assert group_count(v, labels).dtype == np.int64
    assert group_sum(v.astype(np.float32), labels).dtype == np.float32
    assert group_mean(RNG.integers(0, 9, 50), RNG.integers(0, 3, 50)).dtype == np.float64


def test_empty_groups_and_ngroups_default() -> None:
    v, labels = data((400,))
    s = group_sum(v, labels, NG + 2)
    assert s[4] == 0.0
    assert s[NG] == 0.0
    for fn in (group_mean, group_var, group_min, group_max):
        r = fn(v, labels, NG + 2)
        assert np.isnan(r[4])
        assert np.isnan(r[NG + 1])
    assert group_count(v, labels, NG + 2)[NG] == 0
    assert group_sum(v, labels).shape == (int(labels.max()) + 1,)


def test_single_group_length_one_and_empty() -> None:
    v = RNG.normal(size=50)
    np.testing.assert_allclose(group_mean(v, np.zeros(50, dtype=np.int64)), [v.mean()], rtol=1e-13)
    np.testing.assert_allclose(group_var(v, np.zeros(50, dtype=np.int64)), [v.var(ddof=1)])
    np.testing.assert_allclose(group_var(v, np.zeros(50, dtype=np.int64), ddof=0), [v.var()])
    assert np.isnan(group_var(np.array([1.0]), np.array([0]))[0])  # count - ddof == 0
    np.testing.assert_array_equal(group_max(np.array([3.0]), np.array([0])), [3.0])
    assert group_sum(np.array([]), np.array([], dtype=np.int64)).shape == (0,)
    assert group_mean(np.empty((2, 0)), np.array([], dtype=np.int64), 3).shape == (2, 3)


def test_nan_inf_all_nan_group() -> None:
    v = np.array([np.nan, np.nan, 1.0, np.inf, 2.0, -np.inf, 5.0])
    labels = np.array([0, 0, 1, 1, 2, 2, 3])
    np.testing.assert_array_equal(group_count(v, labels), [0, 2, 2, 1])
    np.testing.assert_array_equal(group_sum(v, labels), [0.0, np.inf, -np.inf, 5.0])
    np.testing.assert_array_equal(group_mean(v, labels), [np.nan, np.inf, -np.inf, 5.0])
    np.testing.assert_array_equal(group_min(v, labels), [np.nan, 1.0, -np.inf, 5.0])
    np.testing.assert_array_equal(group_max(v, labels), [np.nan, np.inf, 2.0, 5.0])
    var = group_var(v, labels)
    assert np.isnan(var[:3]).all()  # a group holding an inf
    assert np.isnan(var[3])  # a single value with ddof=1


def test_large_offset_variance_is_accurate() -> None:
    v = 1e8 + RNG.normal(size=20_000)
    labels = RNG.integers(0, 3, v.size)
    exact = np.array([v[labels == g].var(ddof=1) for g in range(3)])
    for threads in (1, 2):
        np.testing.assert_allclose(group_var(v, labels, 3, threads=threads), exact, rtol=1e-9)


def test_axis_layouts_float32_and_int32_labels() -> None:
    v, labels = data((40, 300))
    ref = group_mean(v, labels, NG)
    np.testing.assert_allclose(group_mean(np.ascontiguousarray(v.T), labels, NG, axis=0).T, ref)
    np.testing.assert_allclose(group_mean(np.asfortranarray(v), labels, NG), ref)
    np.testing.assert_allclose(group_mean(v[::2], labels, NG), ref[::2])
    np.testing.assert_allclose(
        group_mean(v.astype(np.float32), labels, NG), ref, rtol=1e-6, atol=1e-6
    )
    np.testing.assert_allclose(group_sum(v, labels.astype(np.int32), NG), group_sum(v, labels, NG))


def test_parallel_segments_equal_serial() -> None:
    v, labels = data((300_000,))
    for fn in (group_sum, group_var, group_min):
        assert_same(fn(v, labels, NG, threads=2), fn(v, labels, NG, threads=1), 1e-12, 1e-12)


@pytest.mark.parametrize("name", ["sum", "mean", "count", "var", "min", "max"])
def test_one_task_row_takes_the_serial_driver_and_equals_the_plan(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row too short to split runs as one task with no thread switch, whatever ``threads``.

    The same kernels on the same plan as :func:`_plan` would make, so results are bitwise equal
    to the planned path (taken here through a 2-D input of the same row twice).
    """
    from ctrlstack.ops import _runtime, grouped

    v, labels = data((20_000,))
    switched: list[int] = []
    real = _runtime.kernel_threads

    def spy(threads: Any = None) -> Any:
        switched.append(1)
        return real(threads)

    monkeypatch.setattr(grouped, "kernel_threads", spy)
    one = KERNELS[name](v, labels, NG, threads=2)
    assert switched == []
    rows = KERNELS[name](np.stack([v, v]), labels, NG, threads=2)
    assert switched == [1]
    np.testing.assert_array_equal(one, rows[0])
    np.testing.assert_array_equal(one, rows[1])
    with pytest.raises(ValueError, match="threads must be >= 1"):
        KERNELS[name](v, labels, NG, threads=0)


@pytest.mark.parametrize(
    ("labels", "ngroups", "exc", "match"),
    [
        (np.array([0, -1, 2]), None, ValueError, "labels must be >= 0"),
        (np.array([0, -1, 2]), 3, ValueError, "labels must be >= 0"),
        (np.array([0, 1, 5]), 3, ValueError, "ngroups=3"),
        (np.array([0.0, 1.0, 2.0]), None, TypeError, "integer dtype"),
        (np.array([0, 1]), None, ValueError, "one entry per position"),
        (np.array([[0, 1, 2]]), None, ValueError, "1-D"),
        (np.array([0, 1, 2]), -2, ValueError, "ngroups"),
    ],
)
def test_label_errors(labels: np.ndarray, ngroups: int | None, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        group_sum(np.ones(3), labels, ngroups)


@pytest.mark.parametrize("name", ["sum", "mean", "var", "count", "max"])
@pytest.mark.parametrize("bad_at", [0, 1, 6])  # lane 0, lane 1, the odd tail (length 7)
def test_invalid_label_in_any_lane_raises(name: str, bad_at: int) -> None:
    """The kernels read two values per step into two lanes; a bad label anywhere must raise."""
    for bad in (-3, 9):
        labels = np.array([0, 1, 2, 0, 1, 2, 0])
        labels[bad_at] = bad
        with pytest.raises(ValueError, match="labels must"):
            KERNELS[name](np.arange(7.0), labels, 3)


@pytest.mark.parametrize("layout", ["scattered", "sorted"])
@pytest.mark.parametrize("bad_at", [0, 1, 500, 2998])
def test_one_and_two_lane_paths_match_bincount_and_check_labels(layout: str, bad_at: int) -> None:
    """Scattered labels take one accumulator lane, sorted ones two; both count every value once.

    ``_repeats`` is asserted too, so the test exercises the lane choice it names.
    """
    from ctrlstack.ops.grouped import _repeats

    n, ng = 2999, 50  # odd length: the two-lane path's tail value is covered too
    v = RNG.normal(size=n)
    v[RNG.random(n) < 0.1] = np.nan
    labels = np.arange(n) % ng  # no neighbour repeats its label
    if layout == "sorted":
        labels = np.sort(labels)
    assert bool(_repeats(labels)) is (layout == "sorted")
    ok = ~np.isnan(v)
    np.testing.assert_array_equal(group_count(v, labels, ng), np.bincount(labels[ok], minlength=ng))
    ref = np.bincount(labels[ok], v[ok], minlength=ng)
    np.testing.assert_allclose(group_sum(v, labels, ng), ref, rtol=1e-12, atol=1e-12)
    mean = ref / np.bincount(labels[ok], minlength=ng)
    np.testing.assert_allclose(group_mean(v, labels, ng), mean, rtol=1e-12, atol=1e-12)
    for bad in (-1, ng):
        broken = labels.copy()
        broken[bad_at] = bad
        for kernel in (group_sum, group_mean, group_count):
            with pytest.raises(ValueError, match="labels must"):
                kernel(v, broken, ng)


@pytest.mark.parametrize("frac", [0.0, 0.01, 0.3, 1.0])
@pytest.mark.parametrize("bad_at", [None, 0, 1500])
@pytest.mark.parametrize("layout", ["scattered", "sorted"])
def test_counted_sums_branchy_and_branch_free_match_bincount(
    frac: float, bad_at: int | None, layout: str
) -> None:
    """Counts, sums, min/max and var: few NaNs take the branchy loops, many the branch-free
    ones, with one accumulator lane (scattered labels) and with two (sorted labels).

    ``few_nans`` and ``_repeats`` are asserted, so every loop is exercised; each counts and
    sums every number once, skips every NaN, and finds a bad label anywhere.
    """
    from ctrlstack.ops._simd import few_nans
    from ctrlstack.ops.grouped import _repeats

    n, ng = 3001, 40  # odd: the two-lane loops' last value too
    v = RNG.normal(size=n)
    v[RNG.random(n) < frac] = np.nan
    labels = RNG.integers(0, ng, n)
    if layout == "sorted":
        labels = np.sort(labels)
    assert bool(few_nans(v)) is (frac < 0.025)
    assert bool(_repeats(labels)) is (layout == "sorted")
    if bad_at is not None:
        labels[bad_at] = ng
        for kernel in (group_mean, group_count, group_sum, group_max, group_min, group_var):
            with pytest.raises(ValueError, match="labels must"):
                kernel(v, labels, ng)
        return
    ok = ~np.isnan(v)
    count = np.bincount(labels[ok], minlength=ng)
    np.testing.assert_array_equal(group_count(v, labels, ng), count)
    np.testing.assert_allclose(
        group_sum(v, labels, ng), np.bincount(labels[ok], v[ok], minlength=ng), atol=1e-12
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(labels[ok], v[ok], minlength=ng) / count
    got = group_mean(v, labels, ng)
    np.testing.assert_array_equal(np.isnan(got), count == 0)
    np.testing.assert_allclose(got[count > 0], mean[count > 0], rtol=1e-12, atol=1e-12)
    for kernel, pick in ((group_max, np.max), (group_min, np.min)):
        ref = np.array([pick(v[ok & (labels == g)]) if count[g] else np.nan for g in range(ng)])
        np.testing.assert_array_equal(kernel(v, labels, ng), ref)
    var = np.array(
        [v[ok & (labels == g)].var(ddof=1) if count[g] > 1 else np.nan for g in range(ng)]
    )
    np.testing.assert_allclose(group_var(v + 1e6, labels, ng, ddof=1), var, rtol=1e-9)


@pytest.mark.parametrize("n", [1, 2, 7, 1001])
def test_odd_and_even_lengths_match_bincount(n: int) -> None:
    """Lane split and the odd tail: every value is counted exactly once."""
    v = RNG.normal(size=n)
    v[RNG.random(n) < 0.2] = np.nan
    labels = RNG.integers(0, 3, n)
    ok = ~np.isnan(v)
    np.testing.assert_array_equal(group_count(v, labels, 3), np.bincount(labels[ok], minlength=3))
    ref = np.bincount(labels[ok], v[ok], minlength=3)
    np.testing.assert_allclose(group_sum(v, labels, 3), ref, rtol=1e-12, atol=1e-12)
    exact = [
        v[(labels == g) & ok].var(ddof=0) if ((labels == g) & ok).any() else np.nan
        for g in range(3)
    ]
    np.testing.assert_allclose(group_var(v, labels, 3, ddof=0), exact, rtol=1e-9, atol=1e-12)


def test_groups_with_different_offsets_keep_their_own_shift() -> None:
    """Per-group shifts: groups at 0, 1e8 and -1e12 stay accurate in one pass (both lanes)."""
    labels = RNG.integers(0, 3, 30_001)
    v = RNG.normal(size=labels.size) + np.array([0.0, 1e8, -1e12])[labels]
    exact = np.array([v[labels == g].var(ddof=1) for g in range(3)])
    np.testing.assert_allclose(group_var(v, labels, 3, threads=1), exact, rtol=1e-6)
    np.testing.assert_allclose(group_var(v, labels, 3)[:2], exact[:2], rtol=1e-9)


def _exact_var(v: np.ndarray, labels: np.ndarray, ng: int, ddof: int = 1) -> np.ndarray:
    ok = ~np.isnan(v)
    return np.array([v[(labels == g) & ok].var(ddof=ddof) for g in range(ng)])


def test_var_takes_own_shifts_when_the_probe_fails_the_guard() -> None:
    """Separated groups fail the guard inside the probe: the task restarts with own shifts."""
    from ctrlstack.ops.grouped import _var_task

    ng = 4
    labels = RNG.integers(0, ng, 5_000)
    v = RNG.normal(size=labels.size) + 1e6 * labels  # group means 1e6 standard deviations apart
    v[::97] = np.nan
    lanes = [np.zeros((2, ng)) for _ in range(3)]
    cnt = np.zeros((2, ng), dtype=np.int64)
    keep = np.ones(ng, dtype=np.bool_)
    bad, own = _var_task(v, labels, ng, keep, False, cnt, *lanes)
    assert not bad
    assert own
    overlapping = RNG.normal(size=labels.size) + 1e8  # one large offset: the common shift holds
    bad, own = _var_task(overlapping, labels, ng, keep, False, cnt, *lanes)
    assert not bad
    assert not own
    for threads in (1, 2):
        np.testing.assert_allclose(
            group_var(v, labels, ng, threads=threads), _exact_var(v, labels, ng), rtol=1e-9
        )
        np.testing.assert_allclose(
            group_var(overlapping, labels, ng, threads=threads),
            _exact_var(overlapping, labels, ng),
            rtol=1e-9,
        )


@pytest.mark.parametrize("threads", [1, 2])
def test_var_redoes_groups_that_fail_the_guard_after_the_probe(threads: int) -> None:
    """A group first seen after the probe, far from the common shift, is computed again.

    The first pass must report exactly that group (``_var_moments``'s ``failed``), and the
    result must be as accurate as a per-group ``np.var``.
    """
    from ctrlstack.ops.grouped import _VAR_PROBE, _plan, _var_moments

    n = 6 * _VAR_PROBE
    labels = RNG.integers(0, 2, n)
    late = np.arange(n) >= 4 * _VAR_PROBE  # past the probe of either thread's segment
    labels[late & (RNG.random(n) < 0.5)] = 2
    v = RNG.normal(size=n) + np.where(labels == 2, 1e9, 0.0)
    a2 = v.reshape(1, -1)
    plan = _plan(1, n, threads)
    _, failed = _var_moments(a2, labels, 3, plan, np.ones((1, 3), dtype=np.bool_), False)
    np.testing.assert_array_equal(failed, [[False, False, True]])
    got = group_var(v, labels, 3, threads=threads)
    np.testing.assert_allclose(got, _exact_var(v, labels, 3), rtol=1e-9)


def test_var_joins_a_workers_adjacent_segments_of_one_row() -> None:
    """Three workers over two rows: one worker holds both segments of row 1, as one range."""
    from ctrlstack.ops._check import row_segments
    from ctrlstack.ops.grouped import _MIN_SEGMENT, _var_moments

    n = 3 * _MIN_SEGMENT
    rows, starts, stops, tb = plan = row_segments(2, n, 3, _MIN_SEGMENT)
    worker2 = range(tb[2], tb[3])
    assert [int(rows[k]) for k in worker2] == [1, 1]  # the case under test
    assert stops[worker2[0]] == starts[worker2[1]]
    labels = RNG.integers(0, 4, n)
    v = RNG.normal(size=(2, n)) + np.array([[5e8], [-3e3]])
    v[0, ::7] = np.nan
    parts, failed = _var_moments(v, labels, 4, plan, np.ones((1, 4), dtype=np.bool_), False)
    assert not failed.any()
    exact = np.stack([_exact_var(row, labels, 4, ddof=0) for row in v])
    counts = np.stack([np.bincount(labels[~np.isnan(row)], minlength=4) for row in v])
    np.testing.assert_array_equal(parts["n"], counts)
    np.testing.assert_allclose(parts["m2"] / counts, exact, rtol=1e-9)


def test_var_of_constant_groups_is_zero_at_any_offset() -> None:
    """Constant groups away from the common shift fail the guard (M2 cancels to ~0): exactly 0."""
    labels = np.tile(np.arange(3), 20_000)
    v = np.array([0.1, 3e8 + 0.7, -123.456])[labels]
    for threads in (1, 2):
        np.testing.assert_array_equal(group_var(v, labels, 3, threads=threads), [0.0, 0.0, 0.0])
        np.testing.assert_array_equal(group_var(v, labels, 3, ddof=0, threads=threads), 0.0)


def test_var_float32_and_rows_with_large_offsets() -> None:
    """2-D input: each row's tasks pick their own common shift; float32 values too."""
    labels = RNG.integers(0, 5, 40_000)
    offsets = np.array([[0.0], [1e7], [-5e9]])
    v = RNG.normal(size=(3, labels.size)) + offsets
    exact = np.stack([_exact_var(row, labels, 5) for row in v])
    for threads in (1, 2):
        np.testing.assert_allclose(group_var(v, labels, 5, threads=threads), exact, rtol=1e-9)
    v32 = (RNG.normal(size=labels.size) + 1e3).astype(np.float32)
    ref = _exact_var(v32.astype(np.float64), labels, 5)
    got = group_var(v32, labels, 5)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_value_errors() -> None:
    with pytest.raises(TypeError, match="values must hold"):
        group_sum(np.array(["a"]), np.array([0]))
    with pytest.raises(ValueError, match="ddof"):
        group_var(np.ones(3), np.zeros(3, dtype=np.int64), ddof=-1)
    with pytest.raises(ValueError, match="axis"):
        group_sum(np.ones((2, 3)), np.zeros(3, dtype=np.int64), axis=3)


@pytest.mark.parametrize("name", ["sum", "mean", "var", "max", "count"])
def test_dask_tree_reduction_equals_numpy(name: str) -> None:
    da = pytest.importorskip("dask.array")
    v, labels = data((4, 1000))
    d = da.from_array(v, chunks=(2, 90))  # 12 blocks along the axis -> a real tree
    res = KERNELS[name](d, labels, NG)
    assert isinstance(res, da.Array)
    assert_same(res.compute(), KERNELS[name](v, labels, NG), 1e-12, 1e-12)
    res0 = KERNELS[name](
        da.from_array(np.ascontiguousarray(v.T), chunks=(70, 3)), labels, NG, axis=0
    )
    assert_same(res0.compute().T, KERNELS[name](v, labels, NG), 1e-12, 1e-12)


def test_dask_labels_need_ngroups() -> None:
    da = pytest.importorskip("dask.array")
    v, labels = data((500,))
    dl = da.from_array(labels, chunks=100)
    res = group_var(da.from_array(v, chunks=120), dl, NG)
    np.testing.assert_allclose(res.compute(), group_var(v, labels, NG), rtol=1e-12)
    with pytest.raises(ValueError, match="ngroups is required"):
        group_sum(da.from_array(v, chunks=100), dl)


def test_xarray_dim_and_group_coordinate() -> None:
    xr = pytest.importorskip("xarray")
    da = pytest.importorskip("dask.array")
    v, labels = data((3, 200))
    arr = xr.DataArray(v, dims=("station", "time"), coords={"station": ["a", "b", "c"]})
    res = group_mean(arr, labels, NG, dim="time")
    assert res.dims == ("station", "group")
    np.testing.assert_array_equal(res.station, arr.station)
    np.testing.assert_array_equal(res.group, np.arange(NG))
    np.testing.assert_allclose(res.values, group_mean(v, labels, NG))
    lazy = group_max(arr.chunk({"time": 50}), labels, NG, dim="time")
    assert isinstance(lazy.data, da.Array)
    np.testing.assert_array_equal(lazy.values, group_max(v, labels, NG))


def test_concurrent_python_threads() -> None:
    """Parallel kernels entered from several Python threads at once (a Dask worker's situation)."""
    from concurrent.futures import ThreadPoolExecutor

    v, labels = data((200_000,))
    ref = group_var(v, labels, NG, threads=1)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: group_var(v, labels, NG, threads=2), range(12)))
    for res in results:
        np.testing.assert_allclose(res, ref, rtol=1e-12)


def _all_families_in_worker() -> list[float]:
    """Runs inside a Dask worker: one call of every scientific family, errors vs. references."""
    from ctrlstack.ops.histograms import histogram
    from ctrlstack.ops.moving import moving_mean
    from ctrlstack.ops.stencils import heat_diffusion

    rng = np.random.default_rng(0)
    v = rng.normal(size=100_000)
    labels = rng.integers(0, 5, v.size)
    u = v[:10_000].reshape(100, 100)
    step = u.copy()
    step[1:-1, 1:-1] += 0.2 * (
        u[:-2, 1:-1] + u[2:, 1:-1] + u[1:-1, :-2] + u[1:-1, 2:] - 4 * u[1:-1, 1:-1]
    )
    errs = [
        float(np.abs(histogram(v, 16, (-2, 2))[0] - np.histogram(v, 16, (-2, 2))[0]).max()),
        float(np.abs(group_mean(v, labels, 5) - [v[labels == g].mean() for g in range(5)]).max()),
        float(np.nanmax(np.abs(moving_mean(v, 10) - pd.Series(v).rolling(10).mean().to_numpy()))),
        float(np.abs(heat_diffusion(u, 1, alpha=0.2) - step).max()),
    ]
    return errs


@pytest.mark.slow
def test_inside_a_multithreaded_dask_worker() -> None:
    """Two task threads in one worker process call the parallel kernels at the same time."""
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        futures = [client.submit(_all_families_in_worker, pure=False) for _ in range(6)]
        results = client.gather(futures, errors="raise")
    assert len(results) == 6
    for errs in results:
        assert errs[0] == 0.0
        assert max(errs) < 1e-9


def test_int32_and_int64_counting_loops_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one-lane loop counts in int32 below ``_COUNT32_SPAN`` values and in int64 above.

    The int64 branch needs 2**31 values to be reached compiled, so both branches run here as
    the Python function (``py_func``), with the span lowered to force the int64 one.
    """
    import numba

    from ctrlstack.ops import grouped

    rng = np.random.default_rng(1)
    x = rng.standard_normal(300)
    x[::7] = np.nan
    lab = rng.integers(0, 5, 300)
    lab[3] = 9  # an invalid label: flagged, skipped
    loop = grouped._sum_one_lane.py_func

    def run() -> tuple[bool, np.ndarray, np.ndarray]:
        s = np.zeros(5)
        c = np.zeros(5, np.int64)
        bad = loop(x, lab, numba.uint64(5), s, c, True)
        return bool(bad), s, c

    bad32, s32, c32 = run()
    monkeypatch.setattr(grouped, "_COUNT32_SPAN", 0)
    bad64, s64, c64 = run()
    ok = ~np.isnan(x) & (lab < 5)
    want_c = np.bincount(lab[ok], minlength=5)
    want_s = np.bincount(lab[ok], weights=x[ok], minlength=5)
    assert bad32
    assert bad64
    np.testing.assert_array_equal(c32, want_c)
    np.testing.assert_array_equal(c64, want_c)
    np.testing.assert_allclose(s32, want_s, rtol=1e-12)
    np.testing.assert_array_equal(s64, s32)
