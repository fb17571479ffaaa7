"""NaN-aware moving-window sum / mean / var / std / min / max along one axis.

Semantics (bottleneck's ``move_*``, which pandas ``rolling`` shares for the NaN pattern):

* the window ending at ``i`` covers ``a[max(0, i - window + 1) : i + 1]``; NaN values are skipped;
* the result is NaN where the window holds fewer than ``min_count`` non-NaN values
  (``min_count=None`` means ``window``, so the first ``window - 1`` outputs are NaN);
  ``pandas.Series.rolling(window, min_periods=min_count)`` gives the same NaN pattern;
* ``ddof`` (var/std) defaults to 0 like bottleneck/NumPy (pandas uses 1: pass ``ddof=1``);
  windows with ``count - ddof <= 0`` are NaN;
* unlike bottleneck, ``window > length`` is allowed (as in pandas);
* infinities are handled exactly: a window holding ``+inf`` sums to ``+inf`` until the ``inf``
  leaves it, ``+inf`` and ``-inf`` together give NaN, var/std of a window with an ``inf`` is NaN.
  Running-sum implementations (bottleneck, numbagg) turn everything after the first ``inf`` into
  NaN; pandas treats ``inf`` as missing in sums.  We do neither.

Algorithms:

* ``sum``/``mean``: a running sum (one dependent add per element; bottleneck does two), checked
  at the end of each segment against an exact recomputation of the last window.  A huge value
  that entered and left the window (bottleneck then stays off for the rest of the row) or an
  ``inf`` fails the check, and only then is the segment redone with a compensated sum or with
  exact infinity counting (see :func:`_sum_task`).
* ``var``/``std``: streaming shifted sums (add the entering value, remove the leaving one, like
  bottleneck) in chunks of ``max(2048, 16*window)`` outputs.  Every chunk restarts its sums
  exactly, with a shift ``K`` taken from the chunk's first window, and carries a per-window
  error guard: rounding in a running sum is bounded by ``steps * eps * max S2``, so a chunk is
  kept only if every emitted window satisfies ``M2 * guard >= max S2``, which proves a relative
  error below 1e-10 of that window's ``M2`` (:func:`_stream_guard`).  A chunk that fails (a
  huge value passed through, data drifting far from ``K``, an ``inf``) is recomputed with the
  exact block algorithm below, so accuracy never depends on benign data (5e-15 vs 4e-7 for
  bottleneck/pandas at an offset of 1e8; bottleneck returns 0 instead of 0.25 for
  ``[1e16, 1, 2, 1, 2]``, window 2, ddof 0).  Windows too long for a useful bound
  (``guard < 8``: ``window > 827``) use the block algorithm directly.
* block algorithm (``var``/``std`` fallback, ``min``/``max``): van Herk / Gil-Werman.  Cut the
  row into blocks of ``window`` values; any window is a suffix of one block plus a prefix of
  the next.  A backward pass over each block (L1-resident) stores its suffix results in a
  small double-buffered scratch array; the forward pass keeps the running prefix (sum, sum of
  squares, count, min or max).  Every output combines two partial results: O(1) per element,
  no subtraction of values that leave the window, so there is no drift, and min/max need no
  deque.  Variance uses sums of ``x - K`` with a shift ``K`` that lies inside every window it
  serves (the first finite value of the prefix's block), so a huge value only costs
  precision in the windows that contain it.

Parallelism: independent (row, segment) tasks; a segment re-reads ``window`` values before its
start, so long 1-D inputs are split too.  Dask: ``map_overlap`` with ``window - 1`` values of
depth on the leading side only.  xarray: ``dim=`` via ``apply_ufunc(dask="allowed")``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numba
import numpy as np

from ctrlstack.ops import _aligned as aligned
from ctrlstack.ops._check import (
    as_real_array,
    as_real_lazy,
    check_out,
    check_positive_int,
    normalize_axis,
    overlaps,
    row_segments,
)
from ctrlstack.ops._runtime import check_threads, is_dask, is_xarray, kernel_threads
from ctrlstack.ops._simd import MASK_WIDTH, few_nans, nan_mask, nan_zero

__all__ = ["moving_max", "moving_mean", "moving_min", "moving_std", "moving_sum", "moving_var"]

_SUM, _MEAN, _VAR, _STD, _MIN, _MAX = range(6)
_NAMES = {_SUM: "sum", _MEAN: "mean", _VAR: "var", _STD: "std", _MIN: "min", _MAX: "max"}
# Segments shorter than this are not worth a separate task (each re-reads `window` values).
_MIN_SEGMENT = 1 << 15
#: Rows shorter than this are never split (two segments of ``max(_MIN_SEGMENT, 4*w)``).
_ONE_ROW_MAX = 2 * _MIN_SEGMENT
#: dtypes the one-row path takes as they are, compared by identity (NumPy's builtin descriptors
#: are singletons; any other descriptor object, even an equal one, takes the general path)
_F64 = np.dtype(np.float64)
_F32 = np.dtype(np.float32)


# --------------------------------------------------------------------------- kernels


@numba.njit(cache=True, nogil=True)
def _first_finite(x, lo, hi, default):  # type: ignore[no-untyped-def]  # pragma: no cover
    for i in range(max(lo, 0), hi):
        v = x[i]
        if v - v == 0.0:  # finite (NaN and inf give NaN)
            return np.float64(v)
    return default


@numba.njit(cache=True, nogil=True, inline="always")
def _ok(v):  # type: ignore[no-untyped-def]  # pragma: no cover
    """``not isnan(v)`` as one comparison: ``np.isnan`` measured slower in the streaming loops."""
    return v == v  # noqa: PLR0124


@numba.njit(cache=True, nogil=True, inline="always")
def _out_sum(s, c, pinf, ninf, min_count, scale):  # type: ignore[no-untyped-def]  # pragma: no cover
    if c < min_count:
        return np.nan
    if pinf > 0 or ninf > 0:
        if pinf > 0 and ninf > 0:
            return np.nan
        return np.inf if pinf > 0 else -np.inf
    return s * scale[c]


@numba.njit(cache=True, nogil=True, inline="always")
def _two_sum(a, b):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Knuth's TwoSum: ``a + b == s + e`` exactly (no fastmath, so LLVM keeps the order)."""
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return s, e


@numba.njit(cache=True, nogil=True, inline="always")
def _walk(xin, xout, os, lo, hi, s, c, scale):  # type: ignore[no-untyped-def]  # pragma: no cover
    """The running sum over ``lo:hi`` one value at a time, NaN-aware and branch-free.

    The loop for rows with many NaNs, and the branchy loop's steps that hold a NaN and its
    last few values.  Returns the new ``(sum, count)``.  :func:`nan_zero`, not
    ``v if v == v else 0.0``: LLVM compiled that select to a branch, mispredicted in exactly
    the steps that come here because of a NaN.
    """
    for i in range(lo, hi):
        v = xin[i]
        u = xout[i]
        s += np.float64(nan_zero(v)) - np.float64(nan_zero(u))
        c += int(_ok(v)) - int(_ok(u))
        os[i] = s * scale[numba.uint64(c)]  # unsigned: no wraparound code
    return s, c


@numba.njit(cache=True, nogil=True)
def _walk_row(xin, xout, os, s, c, scale):  # type: ignore[no-untyped-def]  # pragma: no cover
    """:func:`_walk` over a whole segment (the loop for rows with many NaNs), compiled apart.

    Inlined into :func:`_sum_task` (three copies there) the same loop ran 7.5 ms for 4e6
    values at 30 % NaN against 6.0 as a function of its own (Zen 4; 7.6 against 5.5 with
    AVX2 code); one call per segment costs nothing measurable.
    """
    return _walk(xin, xout, os, 0, xin.shape[0], s, c, scale)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _sum_task(x, o, start, stop, w, min_count, scale):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Running NaN-skipping sum (or mean) for ``o[start:stop]``: one dependent add per step.

    ``scale[c]`` is the factor for a window of ``c`` valid values: NaN below ``min_count``,
    ``1/c`` for means, ``1`` for sums (exact), so each output is ``s * scale[c]``, with no
    division and no ``min_count`` select in the loop.

    Fast path: a plain running sum ``s += in - out``.  A plain running sum loses the low bits
    of the window for good when a huge value enters and leaves it (bottleneck's stays off by 1
    for the rest of the row after ``[1e16, 1, 2, ...]``), and an ``inf`` leaves it non-finite.
    Both leave a trace in the final sum, so the segment ends with two exact checks: the final
    sum must be finite and must match a compensated recomputation of the last window.  If not,
    the segment is redone by :func:`_sum_task_inf` (infinities) or :func:`_sum_task_comp`
    (compensated, ~1.5x slower); ordinary data never pays for either.
    """
    s = 0.0
    c = 0
    # Warm up with the w values before `start` (the first removal below takes x[start - w]).
    for i in range(max(0, start - w), start):
        v = x[i]
        ok = _ok(v)
        s += v if ok else 0.0
        c += ok
    head = min(stop, w)
    for i in range(start, head):
        v = x[i]
        ok = _ok(v)
        s += v if ok else 0.0
        c += ok
        o[i] = s * scale[c]
    lo = max(start, head)
    # Slices and 0-based loops: Numba then drops its negative-index wraparound code (-25 %).
    xin = x[lo:stop]
    xout = x[lo - w : stop - w]
    os = o[lo:stop]
    if few_nans(xin):  # each NaN in or out of the window: a likely mispredicted branch
        # Branchy, like bottleneck's: the factor is reloaded only when the count changes.
        # Zen 4, 1e6 values, 1 % NaN: 0.95 ns/value vs 1.25 for the branch-free loop (which
        # the 10 % NaN case keeps at 1.25 where this one takes 3.4).
        #
        # Four values per step: their partial sums do not depend on ``s``, so the running
        # sum's dependency chain is one add per four values instead of one per value (the
        # add latency bounded this loop at about 0.85 ns/value).  Which steps hold a NaN (in
        # or out of the window) comes from one bit mask per 64 values, made before the steps:
        # the test of a step is then a bit test that resolves at once.  Testing the step's
        # own sum instead (NaN iff a value was) resolved only after its loads and adds, and
        # each NaN's mispredicted branch threw away that much more work.  This loop alone
        # (scratch copies, best of 21), 1e7 values in 20 000-value rows, 1 % NaN, Zen 4:
        # 11.2 -> 9.8 ms with AVX2 code, 10.4 -> 9.3 natively; NaN-free rows unchanged.  ``inf - inf`` is not in the mask: it makes
        # ``s`` NaN, which the finite check below sends to the exact path.
        f = scale[c]
        n = xin.shape[0]
        nmask = n // MASK_WIDTH
        for mb in range(nmask):
            j = MASK_WIDTH * mb
            m = nan_mask(xin, j) | nan_mask(xout, j)
            for k in range(MASK_WIDTH // 4):
                i = j + 4 * k
                if (m >> (4 * k)) & 15:
                    s, c = _walk(xin, xout, os, i, i + 4, s, c, scale)
                    f = scale[c]
                else:
                    d0 = xin[i] - xout[i]
                    d1 = xin[i + 1] - xout[i + 1]
                    d2 = xin[i + 2] - xout[i + 2]
                    d3 = xin[i + 3] - xout[i + 3]
                    p1 = d0 + d1
                    p2 = p1 + d2
                    p3 = p1 + (d2 + d3)
                    os[i] = (s + d0) * f
                    os[i + 1] = (s + p1) * f
                    os[i + 2] = (s + p2) * f
                    s += p3
                    os[i + 3] = s * f
        s, c = _walk(xin, xout, os, MASK_WIDTH * nmask, n, s, c, scale)  # the last 0-63
    else:
        s, c = _walk_row(xin, xout, os, s, c, scale)
    if not np.isfinite(s):
        _sum_task_inf(x, o, start, stop, w, min_count, scale)
        return
    if stop <= start:
        return
    exact = 0.0
    comp = 0.0
    size = 0.0
    for i in range(max(0, stop - w), stop):
        v = x[i]
        if not np.isnan(v):
            exact, e = _two_sum(exact, v)
            comp += e
            size += abs(v)
    if abs(s - (exact + comp)) > 1e-11 * size:
        _sum_task_comp(x, o, start, stop, w, min_count, scale)


@numba.njit(cache=True, nogil=True)
def _sum_task_comp(x, o, start, stop, w, min_count, scale):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Compensated running NaN-skipping sum (or mean) for ``o[start:stop]`` (the exact path).

    ``delta = in - out`` is formed exactly (TwoSum) and added to the running sum with its
    rounding error carried in ``comp``: the loop-carried chain is still one add on ``s`` (plus
    one on ``comp``), but nothing is lost when a huge value enters and leaves the window.
    bottleneck's plain running sum gives 2 instead of 3 for ``[1e16, 1, 2]`` (window 2)
    and stays off for the rest of the row; pandas (Kahan) and we give 3.
    Fast path: infinities are not special-cased.  An ``inf`` that ever entered the running sum
    leaves it non-finite for good (``inf`` or ``inf - inf = NaN``), so a non-finite final sum
    is an exact detector; only then is the segment recomputed by :func:`_sum_task_inf`.
    """
    nan = np.nan
    s = 0.0
    comp = 0.0
    c = 0
    # Warm up with the w values before `start` (the first removal below takes x[start - w]).
    for i in range(max(0, start - w), start):
        v = x[i]
        ok = not np.isnan(v)
        s, e = _two_sum(s, v if ok else 0.0)
        comp += e
        c += ok
    head = min(stop, w)
    for i in range(start, head):
        v = x[i]
        ok = not np.isnan(v)
        s, e = _two_sum(s, v if ok else 0.0)
        comp += e
        c += ok
        r = (s + comp) * scale[c]
        o[i] = r if c >= min_count else nan
    lo = max(start, head)
    # Slices and 0-based loops: Numba then drops its negative-index wraparound code (-25 %).
    xin = x[lo:stop]
    xout = x[lo - w : stop - w]
    os = o[lo:stop]
    for i in range(xin.shape[0]):
        v = xin[i]
        u = xout[i]
        ok = not np.isnan(v)
        ok_u = not np.isnan(u)
        y, e1 = _two_sum(v if ok else 0.0, -u if ok_u else 0.0)
        s, e2 = _two_sum(s, y)
        comp += e1 + e2
        c += int(ok) - int(ok_u)
        r = (s + comp) * scale[c]
        os[i] = r if c >= min_count else nan
    if not (np.isfinite(s) and np.isfinite(comp)):
        _sum_task_inf(x, o, start, stop, w, min_count, scale)


@numba.njit(cache=True, nogil=True)
def _sum_task_inf(x, o, start, stop, w, min_count, scale):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Slow path of :func:`_sum_task`: infinities are counted by sign and never enter ``s``."""
    s = 0.0
    c = 0
    pinf = 0
    ninf = 0
    for i in range(max(0, start - w), start):
        v = x[i]
        fin = (v - v) == 0.0
        s += v if fin else 0.0
        c += not np.isnan(v)
        pinf += v == np.inf
        ninf += v == -np.inf
    head = min(stop, w)
    for i in range(start, head):
        v = x[i]
        fin = (v - v) == 0.0
        s += v if fin else 0.0
        c += not np.isnan(v)
        pinf += v == np.inf
        ninf += v == -np.inf
        o[i] = _out_sum(s, c, pinf, ninf, min_count, scale)
    for i in range(max(start, head), stop):
        v = x[i]
        u = x[i - w]
        fin = (v - v) == 0.0
        fin_u = (u - u) == 0.0
        s += (v if fin else 0.0) - (u if fin_u else 0.0)
        c += int(not np.isnan(v)) - int(not np.isnan(u))
        pinf += int(v == np.inf) - int(u == np.inf)
        ninf += int(v == -np.inf) - int(u == -np.inf)
        o[i] = _out_sum(s, c, pinf, ninf, min_count, scale)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _suffix_sums(x, lo, hi, w, k, s1, s2, sc):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Suffix sums of ``x - k`` and ``(x - k)**2`` (NaN skipped) over positions ``lo + t``.

    ``s*[t]`` covers positions ``lo + t .. lo + w - 1`` clipped to ``[0, hi)``; ``s*[w]`` is empty.
    """
    q1 = 0.0
    q2 = 0.0
    qc = 0
    s1[w] = 0.0
    s2[w] = 0.0
    sc[w] = 0
    if lo >= 0 and lo + w <= hi:  # hot path: a whole block, no range checks
        for t in range(w - 1, -1, -1):
            u = x[lo + t]
            ok = not np.isnan(u)
            e = (u - k) if ok else 0.0
            q1 += e
            q2 += e * e
            qc += ok
            s1[t] = q1
            s2[t] = q2
            sc[t] = qc
        return
    for t in range(w - 1, -1, -1):
        pos = lo + t
        if 0 <= pos < hi:
            u = x[pos]
            ok = not np.isnan(u)
            e = (u - k) if ok else 0.0
            q1 += e
            q2 += e * e
            qc += ok
        s1[t] = q1
        s2[t] = q2
        sc[t] = qc


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _moments_task(x, o, start, stop, w, min_count, ddof, want_std, sf, si, inv, invd):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Moving var/std for ``o[start:stop]``; ``sf``/``si`` are (2, 2, w+1)/(2, w+1) buffers.

    ``inv[n] = 1/n`` and ``invd[n] = 1/(n - ddof)`` (NaN where ``n <= ddof``) replace divisions.

    Block decomposition (module docstring): the suffix of the previous block (double-buffered
    in ``sf``/``si``) plus the running prefix of the current block.  The output select is one
    comparison against ``lim = max(min_count, ddof + 1)``: a compound condition here made
    LLVM keep branches and cost 2x (measured).
    """
    nan = np.nan
    lim = max(min_count, ddof + 1)
    # Shift of a (suffix, prefix) pair: the first finite value of the prefix's block.  That
    # position lies in every window the pair serves, so an outlier chosen as shift only ever
    # costs precision in windows that contain the outlier anyway.
    k_prev = _first_finite(x, start, stop, 0.0)
    cur = 0
    _suffix_sums(x, start - w, stop, w, k_prev, sf[cur, 0], sf[cur, 1], si[cur])
    b = start
    while b < stop:
        length = min(w, stop - b)
        nxt = 1 - cur
        k_next = k_prev
        if length == w and b + w < stop:  # a later block needs this block's suffix
            k_next = _first_finite(x, b + w, min(b + 2 * w, stop), k_prev)
            _suffix_sums(x, b, stop, w, k_next, sf[nxt, 0], sf[nxt, 1], si[nxt])
        # suffix from j + 1 on, as 0-based views (no wraparound code in the loop)
        c1 = sf[cur, 0, 1:]
        c2 = sf[cur, 1, 1:]
        cc = si[cur, 1:]
        xb = x[b : b + length]
        ob = o[b : b + length]
        p1 = 0.0
        p2 = 0.0
        pc = 0
        for j in range(length):
            v = xb[j]
            ok = not np.isnan(v)
            d = (v - k_prev) if ok else 0.0
            p1 += d
            p2 += d * d
            pc += ok
            n = pc + cc[j]
            s1 = p1 + c1[j]
            s2 = p2 + c2[j]
            var = (s2 - s1 * s1 * inv[n]) * invd[n]
            if var < 0.0:  # noqa: PLR1730 - rounding; NaN (an inf in the window) must stay NaN
                var = 0.0
            r = np.sqrt(var) if want_std else var
            ob[j] = r if n >= lim else nan
        cur = nxt
        k_prev = k_next
        b += length


#: Sub-block of the streaming var/std loop: its scratch rows (32 B per value, 4 KiB) stay in L1.
#: 128 rather than 512: the three passes alternate between streaming ``x`` and the output and
#: working in L1 at a finer grain, 8 % faster (1e7 values, 1 % NaN, window 100, 1 thread,
#: ``out=``: 19.7 -> 18.0 ms natively, 20.9 -> 19.2 ms with AVX2 code; 96-192 alike).
_SUB = 128


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _stream_chunk(x, o, c0, c1, w, want_std, guard, st, sf, si):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Streaming (add/remove) shifted moments for ``o[c0:c1]``; False if it cannot be trusted.

    The sums restart exactly at ``c0`` (no drift carried between chunks) with the shift ``k``
    taken from the chunk's first window.  Rounding in a running sum is bounded by
    ``steps * eps * max|S2|`` (``S2`` = sum of squared shifted values), so the chunk is
    trusted only if every emitted window has ``M2 * guard >= max S2``, where ``guard``
    (see :func:`_stream_guard`) turns that bound into a relative error below 1e-10 of the
    window's own ``M2``; ``max S2`` is taken up to the end of the window's sub-block (a
    larger value than the running maximum, so the test is, if anything, stricter).  That
    rejects exactly the windows where add/remove loses precision: a huge value that entered
    (and left) the window, data drifting far from the shift, and any ``inf`` (non-finite
    final sums).  The caller then recomputes the chunk with the exact block algorithm
    (:func:`_moments_task`), so accuracy never depends on the data being benign.

    Speed: one fused loop (update, variance, square root, select per value) is scalar code
    whose instruction count, not memory, bounds it (0.57x bottleneck at 1 thread).  So each
    sub-block of ``_SUB`` values takes three passes over L1-resident scratch rows ``sf``
    (3, _SUB) and ``si`` (_SUB,): (A) the entering-minus-leaving deltas, elementwise and
    vectorised; (B) the running sums, the only loop-carried part (three independent add
    chains; it is bound by their 3-cycle add latency, so it also looks up the per-count
    factors ``st[0][n] = 1/sqrt(n)`` and ``st[1][n] = 1/(n - ddof)`` (NaN below the count
    limit) and stores ``S1/sqrt(n)``, ``S2`` and the factor at no extra cost); (C) variance
    ``(S2 - (S1/sqrt(n))**2) / (n - ddof)``, guard and square root, elementwise and
    vectorised with no division and no select (a division per value bounded this pass
    before; lookups here would need gathers).  The running sums see exactly the additions
    of the fused loop, so the error bound is unchanged (the factors add a few ``eps * S2``
    once per window, not per step).
    """
    rsq = st[0]
    fac = st[1]
    k = _first_finite(x, c0 - w, c1, 0.0)
    s1 = 0.0
    s2 = 0.0
    n = 0
    for i in range(max(0, c0 - w), c0):  # window ending at c0 - 1
        v = x[i]
        ok = _ok(v)
        d = (v - k) if ok else 0.0
        s1 += d
        s2 += d * d
        n += ok
    smax = s2
    flag = False
    head = min(c1, w)
    for i in range(c0, head):  # nothing leaves the window yet (only the row's first w values)
        v = x[i]
        ok = _ok(v)
        d = (v - k) if ok else 0.0
        s1 += d
        s2 += d * d
        n += ok
        smax = max(smax, s2)
        t1 = s1 * rsq[n]
        f = fac[n]
        m2 = s2 - t1 * t1
        flag |= (m2 * guard < smax) & (f == f)  # noqa: PLR0124 - NaN test
        var = m2 * f
        if var < 0.0:  # noqa: PLR1730 - rounding; NaN (an inf in the window) must stay NaN
            var = 0.0
        o[i] = np.sqrt(var) if want_std else var
    p = max(c0, head)
    while p < c1:
        q = min(c1, p + _SUB)
        m = q - p
        xin = x[p:q]
        xout = x[p - w : q - w]
        a1 = sf[0, :m]
        a2 = sf[1, :m]
        an = si[:m]
        for i in range(m):  # (A) deltas: elementwise, vectorised
            v = xin[i]
            u = xout[i]
            ok = _ok(v)
            ok_u = _ok(u)
            d = (v - k) if ok else 0.0
            e = (u - k) if ok_u else 0.0
            a1[i] = d - e
            a2[i] = d * d - e * e
            an[i] = np.int64(ok) - np.int64(ok_u)
        a3 = sf[2, :m]
        for i in range(m):  # (B) the running sums: three independent chains, two lookups
            s1 += a1[i]
            s2 += a2[i]
            n += an[i]
            a1[i] = s1 * rsq[n]  # S1 / sqrt(n): M2 = S2 - a1**2
            a2[i] = s2
            a3[i] = fac[n]  # 1 / (n - ddof), NaN below the count limit
            smax = max(smax, s2)
        os = o[p:q]
        bad = 0
        for i in range(m):  # (C) variance, guard, sqrt: elementwise, vectorised, no division
            t1 = a1[i]
            f = a3[i]
            m2 = a2[i] - t1 * t1
            bad |= (m2 * guard < smax) & (f == f)  # noqa: PLR0124 - NaN test
            var = m2 * f  # NaN where the window holds too few values
            if var < 0.0:  # noqa: PLR1730 - rounding; NaN (an inf in the window) must stay NaN
                var = 0.0
            os[i] = np.sqrt(var) if want_std else var
        flag |= bad != 0
        p = q
    return not flag and np.isfinite(s1) and np.isfinite(s2)


@numba.njit(cache=True, nogil=True)
def _var_task(  # type: ignore[no-untyped-def]  # pragma: no cover
    x, o, start, stop, w, min_count, ddof, want_std, sf, si, inv, invd, guard, st, chunk, tf, ti
):
    """Moving var/std for ``o[start:stop]``: streaming chunks, exact block algorithm as fallback.

    ``guard <= 0`` means the window is too long for the streaming error bound to be useful
    (see :func:`_stream_guard`): the block algorithm then does the whole segment.
    """
    if guard <= 0.0:
        _moments_task(x, o, start, stop, w, min_count, ddof, want_std, sf, si, inv, invd)
        return
    c0 = start
    while c0 < stop:
        c1 = min(stop, c0 + chunk)
        if not _stream_chunk(x, o, c0, c1, w, want_std, guard, st, tf, ti):
            _moments_task(x, o, c0, c1, w, min_count, ddof, want_std, sf, si, inv, invd)
        c0 = c1


@numba.njit(cache=True, nogil=True)
def _extreme_task(x, o, start, stop, w, min_count, is_max, sf, si):  # type: ignore[no-untyped-def]  # pragma: no cover
    """van Herk / Gil-Werman min or max; NaN is skipped (acts as the identity, +-inf)."""
    nan = np.nan
    ident = -np.inf if is_max else np.inf
    cur = 0
    acc = ident
    cnt = 0
    sf[cur, w] = ident
    si[cur, w] = 0
    for t in range(w - 1, -1, -1):
        pos = start - w + t
        if pos >= 0:
            v = x[pos]
            if not np.isnan(v):
                cnt += 1
                if (v > acc) if is_max else (v < acc):
                    acc = v
        sf[cur, t] = acc
        si[cur, t] = cnt
    b = start
    while b < stop:
        length = min(w, stop - b)
        full = length == w and b + w < stop
        nxt = 1 - cur
        if full:
            sf[nxt, w] = ident
            si[nxt, w] = 0
        p = ident
        pc = 0
        q = ident
        qc = 0
        for j in range(length):
            # Branch-free: NaN compares false (p stays) and counts 0.  The branchy form
            # (``if not isnan(v)``, then ``if v > p``) grew with the NaN share: 4e6 values,
            # w=100, Zen 4, AVX2 code, 0 / 1 / 10 / 30 / 50 % NaN: 20.1 / 21.9 / 31.9 / 52.4
            # / 66.0 ms (bottleneck 37.8 / 38.9 / 44.1 / 55.3 / 60.2); this is 21.9-22.7 at
            # every share, natively 21.0-21.7.
            v = x[b + j]
            pc += v == v  # noqa: PLR0124 - NaN test
            p = v if ((v > p) if is_max else (v < p)) else p
            if full:
                jj = w - 1 - j
                u = x[b + jj]
                qc += u == u  # noqa: PLR0124 - NaN test
                q = u if ((u > q) if is_max else (u < q)) else q
                sf[nxt, jj] = q
                si[nxt, jj] = qc
            n = pc + si[cur, j + 1]
            s = sf[cur, j + 1]
            m = max(p, s) if is_max else min(p, s)
            o[b + j] = m if n >= min_count else nan  # one select, no branch (see _moments_task)
        cur = nxt
        b += length


# Drivers: a worker runs its share of the (row, segment) tasks.  With one worker the serial
# driver is called instead of the ``prange`` one: the parallel launch made a 1-thread
# moving_mean 3 ms (15 %) slower for 1e7 values (measured), not a fixed microsecond cost.


@numba.njit(cache=True, nogil=True)
def _moments_worker(  # type: ignore[no-untyped-def]  # pragma: no cover
    t,
    a2,
    out2,
    w,
    min_count,
    ddof,
    op,
    rows,
    starts,
    stops,
    tb,
    sf,
    si,
    inv,
    invd,
    guard,
    st,
    chunk,
    tf,
    ti,
):
    for k in range(tb[t], tb[t + 1]):
        r = rows[k]
        if op <= 1:
            _sum_task(a2[r], out2[r], starts[k], stops[k], w, min_count, inv)
        else:
            _var_task(
                a2[r],
                out2[r],
                starts[k],
                stops[k],
                w,
                min_count,
                ddof,
                op == 3,
                sf[t],
                si[t],
                inv,
                invd,
                guard,
                st,
                chunk,
                tf[t],
                ti[t],
            )


@numba.njit(cache=True, nogil=True, parallel=True)
def _moments(  # type: ignore[no-untyped-def]  # pragma: no cover
    a2,
    out2,
    w,
    min_count,
    ddof,
    op,
    rows,
    starts,
    stops,
    tb,
    sf,
    si,
    inv,
    invd,
    guard,
    st,
    chunk,
    tf,
    ti,
):
    for t in numba.prange(tb.shape[0] - 1):
        _moments_worker(
            t,
            a2,
            out2,
            w,
            min_count,
            ddof,
            op,
            rows,
            starts,
            stops,
            tb,
            sf,
            si,
            inv,
            invd,
            guard,
            st,
            chunk,
            tf,
            ti,
        )


@numba.njit(cache=True, nogil=True)
def _moments_serial(  # type: ignore[no-untyped-def]  # pragma: no cover
    a2,
    out2,
    w,
    min_count,
    ddof,
    op,
    rows,
    starts,
    stops,
    tb,
    sf,
    si,
    inv,
    invd,
    guard,
    st,
    chunk,
    tf,
    ti,
):
    _moments_worker(
        0,
        a2,
        out2,
        w,
        min_count,
        ddof,
        op,
        rows,
        starts,
        stops,
        tb,
        sf,
        si,
        inv,
        invd,
        guard,
        st,
        chunk,
        tf,
        ti,
    )


@numba.njit(cache=True, nogil=True)
def _extremes_worker(t, a2, out2, w, min_count, is_max, rows, starts, stops, tb, sf, si):  # type: ignore[no-untyped-def]  # pragma: no cover
    for k in range(tb[t], tb[t + 1]):
        r = rows[k]
        _extreme_task(a2[r], out2[r], starts[k], stops[k], w, min_count, is_max, sf[t], si[t])


@numba.njit(cache=True, nogil=True, parallel=True)
def _extremes(a2, out2, w, min_count, is_max, rows, starts, stops, tb, sf, si):  # type: ignore[no-untyped-def]  # pragma: no cover
    for t in numba.prange(tb.shape[0] - 1):
        _extremes_worker(t, a2, out2, w, min_count, is_max, rows, starts, stops, tb, sf, si)


@numba.njit(cache=True, nogil=True)
def _extremes_serial(a2, out2, w, min_count, is_max, rows, starts, stops, tb, sf, si):  # type: ignore[no-untyped-def]  # pragma: no cover
    _extremes_worker(0, a2, out2, w, min_count, is_max, rows, starts, stops, tb, sf, si)


@numba.njit(cache=True, nogil=True)
def _one_sum(x, o, w, min_count, scale):  # type: ignore[no-untyped-def]  # pragma: no cover
    """sum/mean of one whole row as one task (small inputs; see :func:`_run_one`)."""
    _sum_task(x, o, 0, x.shape[0], w, min_count, scale)


@numba.njit(cache=True, nogil=True)
def _one_moments(x, o, w, min_count, ddof, want_std, inv, invd, guard, st, chunk):  # type: ignore[no-untyped-def]  # pragma: no cover
    """var/std of one whole row as one task, scratch allocated here (see :func:`_run_one`)."""
    n = x.shape[0]
    si = np.empty((2, w + 1), dtype=np.int64)
    sf3 = np.empty((2, 2, w + 1), dtype=np.float64)
    tf = np.empty((3, _SUB), dtype=np.float64)
    ti = np.empty(_SUB, dtype=np.int64)
    _var_task(
        x, o, 0, n, w, min_count, ddof, want_std, sf3, si, inv, invd, guard, st, chunk, tf, ti
    )


@numba.njit(cache=True, nogil=True)
def _one_extreme(x, o, w, min_count, is_max):  # type: ignore[no-untyped-def]  # pragma: no cover
    """min/max of one whole row as one task (see :func:`_one_moments`)."""
    si = np.empty((2, w + 1), dtype=np.int64)
    sf = np.empty((2, w + 1), dtype=np.float64)
    _extreme_task(x, o, 0, x.shape[0], w, min_count, is_max, sf, si)


# --------------------------------------------------------------------------- planning (pure)


def _plan(nrows: int, n: int, w: int, threads: int) -> tuple[np.ndarray, ...]:
    """(rows, starts, stops, thread_bounds): tasks split evenly over ``threads`` workers.

    Segments are at least ``max(_MIN_SEGMENT, 4*w)`` values long, because each one re-reads the
    ``w - 1`` values before it to fill its first window.
    """
    return row_segments(nrows, n, threads, _segment(w))


def _segment(w: int) -> int:
    """Shortest segment worth a task of its own: each re-reads the ``w - 1`` values before it."""
    return max(_MIN_SEGMENT, 4 * w)


#: Relative error (of a window's M2) that the streaming var/std path must provably stay below.
_STREAM_RTOL = 1e-10
#: Below this guard the streaming path would fall back too often to pay off (huge windows).
_MIN_GUARD = 8.0


def _stream_chunk_len(w: int) -> int:
    """Chunk length of the streaming var/std path: the sums restart exactly at every chunk."""
    return max(2048, 16 * w)


def _stream_guard(w: int, chunk: int) -> float:
    """Factor ``G`` such that ``M2 * G >= max S2`` proves a relative error below _STREAM_RTOL.

    Each of the ``chunk + w`` add/remove steps of a chunk rounds ``S1``/``S2`` by at most a
    few ``eps * max S2`` (``S1**2 <= n * S2`` bounds the ``S1`` term the same way); 4 covers
    the operations per step.  Returns 0.0 (use the block algorithm) when ``G`` would be so
    small that ordinary data fails the test.
    """
    guard = _STREAM_RTOL / (4.0 * float(np.finfo(np.float64).eps) * (chunk + w))
    return guard if guard >= _MIN_GUARD else 0.0


@functools.lru_cache(maxsize=64)
def _tables(
    op: int, w: int, min_count: int, ddof: int
) -> tuple[np.ndarray, np.ndarray, float, np.ndarray, int]:
    """Per-count factor tables and the streaming parameters, cached per call shape.

    ``inv[n]`` multiplies a sum of ``n`` values: ``1/n`` for means and var, 1 for sums (exact),
    NaN below ``min_count`` for sum/mean, so their loops need no division and no select.
    ``invd[n] = 1/(n - ddof)`` (NaN where ``n <= ddof``).  Cached (kernels only read them):
    building them was a third of a small call's fixed cost.  ``st`` holds the streaming
    var/std loop's per-count factors (see :func:`_stream_chunk`).
    """
    inv = np.empty(w + 1, dtype=np.float64)
    inv[0] = np.nan
    inv[1:] = 1.0 / np.arange(1, w + 1, dtype=np.float64) if op != _SUM else 1.0
    if op in (_SUM, _MEAN):
        inv[:min_count] = np.nan
    denom = np.arange(w + 1, dtype=np.float64) - ddof
    invd = np.divide(1.0, denom, out=np.full(w + 1, np.nan), where=denom > 0)
    # The streaming var/std loop's tables: 1/sqrt(n) (0 for n = 0, where S1 is only rounding
    # residue) and 1/(n - ddof) with NaN below max(min_count, ddof + 1).
    st = np.empty((2, w + 1), dtype=np.float64)
    st[0, 0] = 0.0
    st[0, 1:] = 1.0 / np.sqrt(np.arange(1, w + 1, dtype=np.float64))
    st[1] = invd
    st[1, : max(min_count, ddof + 1)] = np.nan
    chunk = _stream_chunk_len(w)
    return inv, invd, _stream_guard(w, chunk), st, chunk


def _check_min_count(min_count: Any, window: int) -> int:
    if min_count is None:
        return window
    mc = check_positive_int(min_count, "min_count")
    if mc > window:
        raise ValueError(f"min_count must be <= window ({window}), got {mc}")
    return mc


def _check_ddof(ddof: Any) -> int:
    return check_positive_int(ddof, "ddof", minimum=0)


def _as_2d_out(out: np.ndarray, ax: int, nrows: int, n: int) -> np.ndarray | None:
    """A (nrows, n) view of ``out`` with ``ax`` moved last, or None if that needs a copy."""
    view = (out if ax == out.ndim - 1 else np.moveaxis(out, ax, -1)).view()
    try:
        view.shape = (nrows, n)
    except AttributeError:
        return None
    return view


def _run_one(
    op: int, x: np.ndarray, o: np.ndarray, w: int, min_count: int, ddof: int, threads: Any
) -> None:
    """One row too short to split (``w`` already at most its length), as one compiled task.

    For such a row, :func:`_run_numpy`'s plan, thread switch, scratch allocations and an
    18-argument dispatch were about 20 us of Python per call, as much as the kernel itself on
    20 000 values.  Same task functions, same results, whatever the thread count.  Each
    family has its own small entry so that none compiles another's task.
    """
    if threads is not None:
        check_threads(threads)
    if op in (_MIN, _MAX):
        _one_extreme(x, o, w, min_count, op == _MAX)
        return
    inv, invd, guard, st, chunk = _tables(op, w, min_count, ddof)
    if op <= _MEAN:
        _one_sum(x, o, w, min_count, inv)
    else:
        _one_moments(x, o, w, min_count, ddof, op == _STD, inv, invd, guard, st, chunk)


def _one_row(
    op: int, a: np.ndarray, w: int, min_count: int, ddof: int, axis: Any, out: Any, threads: Any
) -> np.ndarray | None:
    """The whole call for one short C-contiguous float row, or None: take the general path.

    Why a second entry: calling the kernels one row at a time (a loop over series, as with
    bottleneck) paid about 4 us of checks and reshaping per call in :func:`_moving` and
    :func:`_run_numpy`, against 0.4 us for bottleneck; this path does only the checks such a
    row needs.  Anything else (other dtypes or axes, an ``out`` that needs a check) returns
    None, and the general path gives the same results and the same errors.
    """
    dtype = a.dtype
    if (dtype is not _F64 and dtype is not _F32) or a.ndim != 1 or type(axis) is not int:
        return None
    n = len(a)
    wk = min(n, w)
    if (
        n == 0
        or (n >= _ONE_ROW_MAX and n >= 8 * wk)  # long enough to split: see _segment
        or (axis != -1 and axis != 0)
        or not a.flags.c_contiguous
    ):
        return None
    if out is None:
        o = np.empty(n, dtype)
    elif (
        type(out) is np.ndarray
        and out.shape == a.shape
        and out.dtype == dtype
        and out.flags.c_contiguous
        and out.flags.writeable
        and not overlaps(out, a)
    ):
        o = out
    else:
        return None
    _run_one(op, a, o, wk, min_count, ddof, threads)
    return o


def _run_numpy(
    op: int,
    arr: np.ndarray,
    w_user: int,
    min_count: int,
    ddof: int,
    ax: int,
    out: np.ndarray | None,
    threads: int | None,
) -> np.ndarray:
    dtype = arr.dtype
    if out is None:
        out = np.empty(arr.shape, dtype=dtype)
    else:
        check_out(out, arr.shape, dtype)
        if overlaps(out, arr):  # every output reads up to `window` inputs back
            np.copyto(out, _run_numpy(op, arr, w_user, min_count, ddof, ax, None, threads))
            return out
    moved = arr if ax == arr.ndim - 1 else np.moveaxis(arr, ax, -1)
    n = moved.shape[-1]
    nrows = math.prod(moved.shape[:-1])
    if nrows == 0 or n == 0:
        return out
    # Kernels see C-contiguous rows only: strided reads would be slow anyway, and one layout
    # means one compiled specialisation per dtype instead of several.
    a2 = np.ascontiguousarray(moved.reshape(nrows, n))
    view = _as_2d_out(out, ax, nrows, n)
    tmp = view is None or not view.flags.c_contiguous
    o2 = np.empty((nrows, n), dtype=dtype) if view is None or tmp else view
    w = min(w_user, n)  # a window longer than the row behaves like one of the row's length
    if nrows == 1 and n < 2 * _segment(w) and not tmp:  # one task whatever the thread count
        _run_one(op, a2[0], o2[0], w, min_count, ddof, threads)
        return out
    with kernel_threads(threads) as nthreads:
        rows, starts, stops, tb = _plan(nrows, n, w, nthreads)
        workers = tb.shape[0] - 1
        si = np.empty((workers, 2, w + 1), dtype=np.int64)
        if op in (_MIN, _MAX):
            sf = np.empty((workers, 2, w + 1), dtype=np.float64)
            run = _extremes if workers > 1 else _extremes_serial
            run(a2, o2, w, min_count, op == _MAX, rows, starts, stops, tb, sf, si)
        else:
            sf3 = np.empty((workers, 2, 2, w + 1), dtype=np.float64)
            inv, invd, guard, st, chunk = _tables(op, w, min_count, ddof)
            drive = _moments if workers > 1 else _moments_serial
            drive(
                a2,
                o2,
                w,
                min_count,
                ddof,
                op,
                rows,
                starts,
                stops,
                tb,
                sf3,
                si,
                inv,
                invd,
                guard,
                st,
                chunk,
                # line-aligned: passes (A)-(C) stream through these rows in vector steps
                aligned.empty((workers, 3, _SUB), np.float64),
                aligned.empty((workers, _SUB), np.int64),
            )
    if tmp:
        np.moveaxis(out, ax, -1)[...] = o2.reshape(moved.shape)
    return out


# --------------------------------------------------------------------------- dispatch


def _moving(
    op: int,
    a: Any,
    window: Any,
    min_count: Any,
    axis: Any,
    dim: str | None,
    ddof: Any,
    out: Any,
    threads: int | None,
) -> Any:
    if (  # the one-row path, for arguments that need no conversion (see _one_row)
        type(a) is np.ndarray
        and dim is None
        and type(window) is int
        and window >= 1
        and (min_count is None or (type(min_count) is int and 1 <= min_count <= window))
        and type(ddof) is int
        and ddof >= 0
    ):
        res = _one_row(
            op, a, window, window if min_count is None else min_count, ddof, axis, out, threads
        )
        if res is not None:
            return res
    name = _NAMES[op]
    w = check_positive_int(window, "window")
    mc = _check_min_count(min_count, w)
    dd = _check_ddof(ddof)
    if is_xarray(a):
        if out is not None:
            raise TypeError("out is not supported for xarray input")
        return _moving_xarray(op, a, w, mc, axis, dim, dd, threads)
    if dim is not None:
        raise TypeError(f"dim= is only for xarray input; use axis= for {type(a).__name__}")
    if is_dask(a):
        if out is not None:
            raise TypeError("out is not supported for dask input (the result is lazy)")
        return _moving_dask(op, a, w, mc, axis, dd, threads)
    arr = as_real_array(a, "a")
    if arr.dtype.kind in "iu":
        arr = arr.astype(np.float64)
    if arr.ndim == 0:
        raise ValueError(f"moving_{name} needs at least a 1-D array, got a scalar")
    ax = normalize_axis(axis, arr.ndim)
    return _run_numpy(op, arr, w, mc, dd, ax, out, threads)


def _moving_dask(
    op: int, a: Any, w: int, mc: int, axis: Any, ddof: int, threads: int | None
) -> Any:
    import dask.array as da

    a = da.asarray(a)
    a = as_real_lazy(a, "a")  # the one dtype rule, without computing
    if a.dtype.kind in "iu":
        a = a.astype(np.float64)
    ax = normalize_axis(axis, a.ndim)

    def block(b: np.ndarray) -> np.ndarray:
        return _run_numpy(op, b, w, mc, ddof, ax, None, threads)

    if w == 1:
        return a.map_blocks(block, dtype=a.dtype)

    # map_overlap needs depth <= every chunk along the axis: merge chunks that are too small.
    chunks = a.chunks[ax]
    if len(chunks) > 1 and min(chunks) < w - 1:
        a = a.rechunk({ax: max(w - 1, max(chunks))})
    if len(a.chunks[ax]) == 1:  # the whole axis is in every block: no halo needed
        return a.map_blocks(block, dtype=a.dtype)
    depth = {i: ((w - 1, 0) if i == ax else 0) for i in range(a.ndim)}
    return a.map_overlap(block, depth=depth, boundary="none", dtype=a.dtype)


def _moving_xarray(
    op: int, a: Any, w: int, mc: int, axis: Any, dim: str | None, ddof: int, threads: int | None
) -> Any:
    import xarray as xr

    if dim is None:
        dim = a.dims[normalize_axis(axis, a.ndim)]
    elif dim not in a.dims:
        raise ValueError(f"dim={dim!r} is not a dimension of the input (dims: {a.dims})")

    def func(x: Any) -> Any:
        return _moving(op, x, w, mc, -1, None, ddof, None, threads)

    res = xr.apply_ufunc(
        func, a, input_core_dims=[[dim]], output_core_dims=[[dim]], dask="allowed", keep_attrs=True
    )
    return res.transpose(*a.dims)


def moving_sum(
    a: Any,
    window: int,
    *,
    min_count: int | None = None,
    axis: int = -1,
    dim: str | None = None,
    out: np.ndarray | None = None,
    threads: int | None = None,
) -> Any:
    """NaN-skipping moving sum (see the module docstring for the window/NaN/inf rules)."""
    return _moving(_SUM, a, window, min_count, axis, dim, 0, out, threads)


def moving_mean(
    a: Any,
    window: int,
    *,
    min_count: int | None = None,
    axis: int = -1,
    dim: str | None = None,
    out: np.ndarray | None = None,
    threads: int | None = None,
) -> Any:
    """NaN-skipping moving mean (bottleneck ``move_mean`` / pandas ``rolling().mean()``)."""
    return _moving(_MEAN, a, window, min_count, axis, dim, 0, out, threads)


def moving_var(
    a: Any,
    window: int,
    *,
    min_count: int | None = None,
    axis: int = -1,
    dim: str | None = None,
    ddof: int = 0,
    out: np.ndarray | None = None,
    threads: int | None = None,
) -> Any:
    """NaN-skipping moving variance with ``ddof`` (0 like bottleneck; pandas' default is 1)."""
    return _moving(_VAR, a, window, min_count, axis, dim, ddof, out, threads)


def moving_std(
    a: Any,
    window: int,
    *,
    min_count: int | None = None,
    axis: int = -1,
    dim: str | None = None,
    ddof: int = 0,
    out: np.ndarray | None = None,
    threads: int | None = None,
) -> Any:
    """NaN-skipping moving standard deviation (``sqrt`` of :func:`moving_var`)."""
    return _moving(_STD, a, window, min_count, axis, dim, ddof, out, threads)


def moving_min(
    a: Any,
    window: int,
    *,
    min_count: int | None = None,
    axis: int = -1,
    dim: str | None = None,
    out: np.ndarray | None = None,
    threads: int | None = None,
) -> Any:
    """NaN-skipping moving minimum (van Herk / Gil-Werman, O(1) per element)."""
    return _moving(_MIN, a, window, min_count, axis, dim, 0, out, threads)


def moving_max(
    a: Any,
    window: int,
    *,
    min_count: int | None = None,
    axis: int = -1,
    dim: str | None = None,
    out: np.ndarray | None = None,
    threads: int | None = None,
) -> Any:
    """NaN-skipping moving maximum (van Herk / Gil-Werman, O(1) per element)."""
    return _moving(_MAX, a, window, min_count, axis, dim, 0, out, threads)
