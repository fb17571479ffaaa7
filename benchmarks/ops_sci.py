"""Benchmark cases for the scientific kernel families: histograms, stencils, moving windows,
grouped reductions.

Exports ``cases(quick=False) -> list[harness.Case]`` and ``compile_probes()`` for the runner
``benchmarks/ops.py``.  Every reference computes the same result as ours (``Case.check`` runs once
before timing); sizes follow perf.md, scaled so the whole family runs in about two minutes for 1
and 2 threads.  The runner sets the thread count (``CTRLSTACK_THREAD_BUDGET`` for ours), so no
case passes ``threads=``.

Like for like, stated per case in ``notes``:

* moving windows and grouped reductions: ours *allocates* its output like bottleneck, numbagg and
  pandas do (none of them takes ``out=``); one extra ``moving_mean (out=)`` row shows the
  preallocated-buffer time as well (perf.md trap 1).
* stencils: both sides write into preallocated buffers (NumPy slicing with ``out=`` ufuncs).
* histograms: both sides allocate only the tiny histogram.

``work`` is the minimum memory traffic in bytes (STREAM convention, no write-allocate), so the
runner's "% of limit" is the fraction of the same-run triad bandwidth.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from harness import Case

from ctrlstack.ops.grouped import group_mean, group_sum, group_var
from ctrlstack.ops.histograms import histogram, histogram2d
from ctrlstack.ops.moving import moving_max, moving_mean, moving_std
from ctrlstack.ops.stencils import heat_diffusion

__all__ = ["cases", "compile_probes"]


def _allclose(rtol: float, atol: float = 0.0) -> Any:
    def check(ours: Any, ref: Any) -> None:
        np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=rtol, atol=atol)

    return check


def _equal_hist(ours: Any, ref: Any) -> None:
    np.testing.assert_array_equal(ours[0], ref[0])
    np.testing.assert_array_equal(ours[1], ref[1])


# --------------------------------------------------------------------------- histograms


def _histogram_cases(quick: bool) -> list[Case]:
    n = 2_000_000 if quick else 20_000_000
    a = np.random.default_rng(0).normal(size=n)
    edges = np.sort(np.random.default_rng(1).uniform(-4, 4, 101))
    n2 = n // 4
    x = np.random.default_rng(2).normal(size=n2)
    y = np.random.default_rng(3).normal(size=n2)
    return [
        Case(
            family="histograms",
            name="histogram 256 uniform bins",
            size=f"{n / 1e6:g}M f64",
            kind="bandwidth",
            work=8.0 * n,
            ours=lambda: histogram(a, 256, (-4.0, 4.0)),
            references={"numpy.histogram": lambda: np.histogram(a, 256, (-4.0, 4.0))},
            check=_equal_hist,
        ),
        Case(
            family="histograms",
            name="histogram 100 explicit edges",
            size=f"{n / 1e6:g}M f64",
            kind="bandwidth",
            work=8.0 * n,
            ours=lambda: histogram(a, edges),
            references={"numpy.histogram": lambda: np.histogram(a, edges)},
            check=_equal_hist,
            repeat=3,
        ),
        Case(
            family="histograms",
            name="histogram2d 64x64 bins",
            size=f"{n2 / 1e6:g}M pairs f64",
            kind="bandwidth",
            work=16.0 * n2,
            ours=lambda: histogram2d(x, y, 64, [[-4, 4], [-4, 4]]),
            references={"numpy.histogram2d": lambda: np.histogram2d(x, y, 64, [[-4, 4], [-4, 4]])},
            check=lambda o, r: np.testing.assert_array_equal(o[0], r[0]),
            repeat=3,
        ),
    ]


# --------------------------------------------------------------------------- stencils


def _numpy_heat(u: np.ndarray, steps: int, alpha: float, out: np.ndarray, tmp: np.ndarray) -> Any:
    """Fastest plain-NumPy form: slicing with ``out=`` ufuncs into preallocated buffers."""
    src = u
    acc = np.empty(tuple(s - 2 for s in u.shape))
    inner = (slice(1, -1),) * u.ndim
    for k in range(steps):
        dst = out if (steps - 1 - k) % 2 == 0 else tmp
        dst[...] = src  # boundary (and interior, overwritten below)
        np.multiply(src[inner], -2.0 * u.ndim, out=acc)
        for ax in range(u.ndim):
            lo = [slice(1, -1)] * u.ndim
            hi = [slice(1, -1)] * u.ndim
            lo[ax] = slice(None, -2)
            hi[ax] = slice(2, None)
            np.add(acc, src[tuple(lo)], out=acc)
            np.add(acc, src[tuple(hi)], out=acc)
        np.multiply(acc, alpha, out=acc)
        np.add(src[inner], acc, out=dst[inner])
        src = dst
    return out


def _stencil_cases(quick: bool) -> list[Case]:
    out_cases = []
    for shape, steps, alpha in (
        ((1024, 1024) if quick else (2048, 2048), 10, 0.2),
        ((96, 96, 96) if quick else (160, 160, 160), 10, 0.1),
    ):
        u = np.random.default_rng(4).random(shape)
        ours_out = np.empty_like(u)
        ref_out = np.empty_like(u)
        ref_tmp = np.empty_like(u)
        npts = float(np.prod(shape))

        def ours(
            u: np.ndarray = u, o: np.ndarray = ours_out, s: int = steps, a: float = alpha
        ) -> Any:
            return heat_diffusion(u, s, alpha=a, out=o)

        def ref(
            u: np.ndarray = u,
            o: np.ndarray = ref_out,
            t: np.ndarray = ref_tmp,
            s: int = steps,
            a: float = alpha,
        ) -> Any:
            return _numpy_heat(u, s, a, o, t)

        points = "5-point" if len(shape) == 2 else "7-point"
        out_cases.append(
            Case(
                family="stencils",
                name=f"heat_diffusion {len(shape)}-D {points}",
                size=f"{'x'.join(map(str, shape))}, {steps} steps",
                kind="bandwidth",
                work=16.0 * npts * steps,  # read u, write out per point and step
                ours=ours,
                references={"NumPy slicing (out=)": ref},
                check=_allclose(0, 1e-12),
                repeat=3,
                notes="both sides write into preallocated buffers",
            )
        )
    return out_cases


# --------------------------------------------------------------------------- moving windows


def _moving_cases(quick: bool) -> list[Case]:
    import bottleneck as bn
    import numbagg
    import pandas as pd

    n, w = (1_000_000 if quick else 10_000_000), 100
    a = np.random.default_rng(5).normal(size=n)
    a[np.random.default_rng(6).random(n) < 0.01] = np.nan
    series = pd.Series(a)
    buf = np.empty_like(a)
    note = "ours allocates its output like the references (none of them takes out=)"
    small = list(a[: (50 if quick else 500) * 20_000].reshape(-1, 20_000))
    return [
        Case(
            family="moving",
            name="moving_mean w=100",
            size=f"{n / 1e6:g}M f64, 1% NaN",
            kind="bandwidth",
            work=16.0 * n,
            ours=lambda: moving_mean(a, w),
            references={
                "bottleneck.move_mean": lambda: bn.move_mean(a, w),
                "numbagg.move_mean": lambda: numbagg.move_mean(a, window=w),
                "pandas rolling.mean": lambda: series.rolling(w).mean().to_numpy(),
            },
            check=_allclose(1e-9, 1e-12),
            notes=note,
        ),
        Case(
            family="moving",
            name="moving_mean w=100 (out=)",
            size=f"{n / 1e6:g}M f64, 1% NaN",
            kind="bandwidth",
            work=16.0 * n,
            ours=lambda: moving_mean(a, w, out=buf),
            references={"bottleneck.move_mean": lambda: bn.move_mean(a, w)},
            check=_allclose(1e-9, 1e-12),
            notes="ours writes into a preallocated buffer; bottleneck allocates (not like for like)",
        ),
        Case(
            family="moving",
            name="moving_std w=100 ddof=1",
            size=f"{n / 1e6:g}M f64, 1% NaN",
            kind="bandwidth",
            work=16.0 * n,
            ours=lambda: moving_std(a, w, ddof=1),
            references={
                "bottleneck.move_std": lambda: bn.move_std(a, w, ddof=1),
                "numbagg.move_std": lambda: numbagg.move_std(a, window=w),
                "pandas rolling.std": lambda: series.rolling(w).std().to_numpy(),
            },
            check=_allclose(1e-8, 1e-12),
            notes=note + "; block (van Herk) sums: exact with large offsets, bottleneck is not",
        ),
        Case(
            family="moving",
            name="moving_max w=100",
            size=f"{n / 1e6:g}M f64, 1% NaN",
            kind="bandwidth",
            work=16.0 * n,
            ours=lambda: moving_max(a, w),
            references={
                "bottleneck.move_max": lambda: bn.move_max(a, w),
                "pandas rolling.max": lambda: series.rolling(w).max().to_numpy(),
            },
            check=_allclose(0, 0),
            notes=note,
        ),
        Case(
            family="moving",
            name="moving_mean w=100, small rows",
            size=f"{len(small)} calls x 20k f64",
            kind="bandwidth",
            work=16.0 * sum(r.size for r in small),
            ours=lambda: [moving_mean(r, w) for r in small],
            references={"bottleneck.move_mean": lambda: [bn.move_mean(r, w) for r in small]},
            check=_allclose(1e-9, 1e-12),
            notes="one call per 20 000-value row: the fixed cost per call shows here",
        ),
    ]


# --------------------------------------------------------------------------- grouped


def _grouped_cases(quick: bool) -> list[Case]:
    import numbagg
    import pandas as pd

    n, ng = (1_000_000 if quick else 10_000_000), 1000
    v = np.random.default_rng(7).normal(size=n)
    v[np.random.default_rng(8).random(n) < 0.01] = np.nan
    labels = np.random.default_rng(9).integers(0, ng, n)
    sorted_labels = np.sort(labels)  # groupby after a sort: runs of equal labels
    ok = ~np.isnan(v)
    frame = pd.Series(v)

    def bincount_mean() -> Any:
        return np.bincount(labels[ok], v[ok], minlength=ng) / np.bincount(labels[ok], minlength=ng)

    def bincount_sum() -> Any:
        return np.bincount(labels[ok], v[ok], minlength=ng)

    return [
        Case(
            family="grouped",
            name="group_mean 1000 groups",
            size=f"{n / 1e6:g}M f64 + int64 labels",
            kind="bandwidth",
            work=16.0 * n,
            ours=lambda: group_mean(v, labels, ng),
            references={
                "numbagg.group_nanmean": lambda: numbagg.group_nanmean(v, labels, num_labels=ng),
                "numpy.bincount x2": bincount_mean,
                "pandas groupby.mean": lambda: frame.groupby(labels).mean().to_numpy(),
            },
            check=_allclose(1e-12, 1e-12),
        ),
        Case(
            family="grouped",
            name="group_mean 1000 groups, sorted labels",
            size=f"{n / 1e6:g}M f64 + int64 labels",
            kind="bandwidth",
            work=16.0 * n,
            ours=lambda: group_mean(v, sorted_labels, ng),
            references={
                "numbagg.group_nanmean": lambda: numbagg.group_nanmean(
                    v, sorted_labels, num_labels=ng
                ),
            },
            check=_allclose(1e-12, 1e-12),
            notes="sorted labels: each group's adds form one dependency chain in a one-lane loop",
        ),
        Case(
            family="grouped",
            name="group_sum 1000 groups",
            size=f"{n / 1e6:g}M f64 + int64 labels",
            kind="bandwidth",
            work=16.0 * n,
            ours=lambda: group_sum(v, labels, ng),
            references={
                "numbagg.group_nansum": lambda: numbagg.group_nansum(v, labels, num_labels=ng),
                "numpy.bincount": bincount_sum,
            },
            check=_allclose(1e-12, 1e-9),
        ),
        Case(
            family="grouped",
            name="group_var 1000 groups ddof=1",
            size=f"{n / 1e6:g}M f64 + int64 labels",
            kind="bandwidth",
            work=16.0 * n,
            ours=lambda: group_var(v, labels, ng),
            references={
                "numbagg.group_nanvar": lambda: numbagg.group_nanvar(v, labels, num_labels=ng),
                "pandas groupby.var": lambda: frame.groupby(labels).var().to_numpy(),
            },
            check=_allclose(1e-9, 1e-12),
            notes="ours: shifted sums + Chan merge (exact with large offsets; numbagg is not)",
        ),
    ]


def cases(quick: bool = False) -> list[Case]:
    """All scientific-kernel cases (``quick``: ~10x smaller inputs for smoke runs)."""
    return [
        *_histogram_cases(quick),
        *_stencil_cases(quick),
        *_moving_cases(quick),
        *_grouped_cases(quick),
    ]


def compile_probes() -> dict[str, tuple[str, str]]:
    """``name -> (setup, first_call)``: the call compiles (cold) or loads (cached) one kernel."""
    data = "import numpy as np\nx = np.random.default_rng(0).random(10_000)\n"
    return {
        "histogram": (
            data + "from ctrlstack.ops.histograms import histogram",
            "histogram(x, 16, (0.0, 1.0))",
        ),
        "heat_diffusion 2-D": (
            data + "from ctrlstack.ops.stencils import heat_diffusion",
            "heat_diffusion(x.reshape(100, 100), 2, alpha=0.2)",
        ),
        "moving_std": (
            data + "from ctrlstack.ops.moving import moving_std",
            "moving_std(x, 10)",
        ),
        "group_mean": (
            data + "from ctrlstack.ops.grouped import group_mean",
            "group_mean(x, np.arange(x.size) % 7, 7)",
        ),
    }
