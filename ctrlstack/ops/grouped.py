"""NaN-skipping grouped reductions by integer labels: sum, mean, var, min, max, count.

``group_<op>(values, labels, ngroups)`` reduces ``values`` along ``axis`` into ``ngroups`` groups
given one integer label per position along that axis, like numbagg's ``group_nan<op>`` and
``pandas.DataFrame.groupby(labels).<op>()`` (which also skips NaN):

* labels must be integers in ``[0, ngroups)``; negative labels raise ``ValueError`` (numbagg
  treats them as "skip"; we refuse them so a sentinel cannot silently drop data).
  ``ngroups=None`` means ``labels.max() + 1`` (one extra pass over the labels: pass it to skip).
* empty groups (and all-NaN groups): ``sum`` 0, ``count`` 0, ``mean``/``var``/``min``/``max`` NaN;
  ``var`` is NaN where ``count - ddof <= 0``.  ``ddof`` defaults to 1 as in pandas and numbagg.
* result dtypes: ``count`` int64; otherwise float32 for float32 values and float64 for float64 or
  integer values.  Accumulation is always float64.

Kernel pattern: one pass over (row, segment) tasks spread over the threads; every worker owns
private per-group accumulators (allocated by NumPy in the wrapper) that are merged afterwards.
The label check is part of that pass (an invalid label is flagged and skipped, the wrapper
raises afterwards).  sum/mean/count feed one accumulator lane, or two (even and odd positions)
where neighbouring labels repeat (sorted or clustered labels), so that repeated adds to one
group do not form one long dependency chain.
``var`` accumulates sums of ``x - K`` rather than of ``x``, which avoids the catastrophic
cancellation of the textbook ``E[x²] - E[x]²`` for data with a large offset: ``K`` is one common
shift per task (the loop then costs what numbagg's plain sums cost) as long as a guard on every
group's cancellation holds, and each group's own first value where it does not (see the kernel
section); partials are merged with Chan et al.'s parallel formula.  Dask: the same partials per
block, tree-reduced with ``dask.array.reduction`` (labels ride along as the ``weights`` array).
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np

from ctrlstack.ops._check import (
    as_real_array,
    as_real_lazy,
    check_positive_int,
    normalize_axis,
    row_segments,
)
from ctrlstack.ops._runtime import check_threads, is_dask, is_xarray, kernel_threads
from ctrlstack.ops._simd import add_record4, few_nans, nan_zero

__all__ = ["group_count", "group_max", "group_mean", "group_min", "group_sum", "group_var"]

_SUM, _MEAN, _VAR, _MIN, _MAX, _COUNT = "sum", "mean", "var", "min", "max", "count"
_MIN_SEGMENT = 1 << 16


# --------------------------------------------------------------------------- kernels


# Each loop runs 0-based over slices of its segment: with ``range(start, stop)`` Numba cannot
# prove the index non-negative and emits negative-index wraparound code (25 % slower, measured).
#
# The label check is folded into the reduction loop: an invalid label sets a flag and is
# skipped, and the wrapper raises after the pass, so no separate pass over the labels is made.
# The label is converted to an unsigned index and tested once, ``g >= ng``: a negative label
# becomes a huge one and fails the same test, and an unsigned index needs no negative-index
# wraparound code in Numba.  Counted by valgrind (benchmarks/ops_ipe.py), the signed
# ``g < 0 or g >= ng`` test cost about 1.8 instructions per value more than this; with one
# lane ``group_mean`` retires 14.1 per value and ``group_sum`` 11.7 (numbagg, which only tests
# ``g < 0`` and writes out of bounds for ``g >= ng``: 13.3 and 11.5).  The loop is
# instruction-bound at 1 thread, not bandwidth-bound, so that is its speed.
#
# sum/mean/count (and var, always) can read two values per iteration into two accumulator lanes
# (``acc[0]``, ``acc[1]``, merged in the wrapper).  That pays only where neighbouring values
# share a label (sorted or clustered labels): one lane then chains every add through the same
# memory cell (store-to-load forwarding plus add latency), and two lanes halve the chain.  With
# scattered labels the second lane only doubles the accumulators' cache footprint: for 1000
# groups, sums and counts of two lanes are 32 KiB, a whole Zen 4 L1D.  Same process, 1 thread,
# 1e7 values, 1000 groups, AMD EPYC Zen 4: random labels one lane 9.2 ms, two lanes 15.4 ms,
# numbagg 8.7 ms; sorted labels one lane 32.7 ms, two lanes 16.5 ms, numbagg 32.8 ms.  So
# ``_sum_task`` samples the first values of its segment and takes two lanes only when at least
# one neighbour in ``_REPEAT_SHARE`` repeats its label.  Four lanes were slower (17.3 ms).

_LANES = 2
#: Ranges shorter than this count in int32 in the one-lane loop (no count can overflow).
_COUNT32_SPAN = 1 << 31
#: Sample (values) of a segment's labels inspected to choose one or two accumulator lanes.
_LANE_SAMPLE = 1024
#: Two lanes when at least one in this many sampled neighbours repeats its label.
_REPEAT_SHARE = 8


@numba.njit(cache=True, nogil=True)
def _repeats(ls):  # type: ignore[no-untyped-def]  # pragma: no cover
    """True if neighbouring labels repeat often in the first ``_LANE_SAMPLE`` values of ``ls``."""
    k = min(ls.shape[0], _LANE_SAMPLE)
    same = 0
    for j in range(1, k):
        same += ls[j] == ls[j - 1]
    return same * _REPEAT_SHARE >= k - 1 and k > 1


@numba.njit(cache=True, nogil=True, inline="always")
def _count_sum(xs, ls, ung, s0, cnt):  # type: ignore[no-untyped-def]  # pragma: no cover
    """NaN-skipping sums into ``s0`` and counts into ``cnt`` (int32 or int64); True if a label
    was invalid.  The one-value branchy loop of :func:`_sum_one_lane`."""
    bad = False
    for j in range(xs.shape[0]):
        g = numba.uint64(ls[j])
        if g >= ung:
            bad = True
            continue
        v = xs[j]
        if not np.isnan(v):
            s0[g] += v
            cnt[g] += 1
    return bad


@numba.njit(cache=True, nogil=True, inline="always")
def _count_sum_free(xs, ls, ung, s0, cnt):  # type: ignore[no-untyped-def]  # pragma: no cover
    """:func:`_count_sum` without a NaN branch, for data with many NaNs (:func:`few_nans`).

    A NaN adds 0.0 and a count of 0.  Its time does not depend on the NaN share: 4e6 values,
    1000 groups, Zen 4, ms at 0 / 1 / 10 / 30 / 50 % NaN: 4.3 at every share, against 3.2 /
    3.3 / 6.9 / 14.8 / 19.7 for the branchy loop (numbagg 3.4 / 3.8 / 7.6 / 15.3 / 20.2);
    the same with AVX2 code.
    """
    bad = False
    for j in range(xs.shape[0]):
        g = numba.uint64(ls[j])
        if g >= ung:
            bad = True
            continue
        v = xs[j]
        s0[g] += nan_zero(v)
        cnt[g] += v == v  # noqa: PLR0124 - NaN test (a 0/1 count)
    return bad


@numba.njit(cache=True, nogil=True, inline="always")
def _counted_sums(xs, ls, ung, s0, cnt):  # type: ignore[no-untyped-def]  # pragma: no cover
    """The branchy loop for few NaNs, the branch-free one otherwise; True if a label was invalid."""
    if few_nans(xs):
        return _count_sum(xs, ls, ung, s0, cnt)
    return _count_sum_free(xs, ls, ung, s0, cnt)


@numba.njit(cache=True, nogil=True, inline="always")
def _sum_one_lane(xs, ls, ung, s0, c0, count):  # type: ignore[no-untyped-def]  # pragma: no cover
    """One-lane body of :func:`_sum_task` (scattered labels); True if a label was invalid.

    Two loops, like the two-lane body, rather than one with ``if count`` inside: that single
    loop measured 1.5-3 % slower with counts (Zen 4, 1e7 values, three runs), the same without.
    Two values per step with one label test, as in the loop without counts, measured 8.17-8.30
    against 8.33-8.52 ms as a standalone loop but 8.94 against 8.45 once inlined here (Zen 4,
    1e7 values, 1000 groups): not taken.
    """
    bad = False
    if count:
        # Counts in int32 (half the cache footprint of int64, and a cheaper read-modify-write)
        # when the range is too short for one to overflow: 8.51 -> 8.13 ms for 1e7 values,
        # 1000 groups, numbagg 8.57 (Zen 4, AVX-512 and AVX2 code alike, scratch copies, best
        # of 12).  Flushing int32 counts every 2**30 values instead measured slower (9.4 ms).
        if xs.shape[0] < _COUNT32_SPAN:
            c32 = np.zeros(c0.shape[0], dtype=np.int32)
            bad = _counted_sums(xs, ls, ung, s0, c32)
            for g in range(c32.shape[0]):
                c0[g] += c32[g]
        else:
            bad = _counted_sums(xs, ls, ung, s0, c0)
    else:
        # Sums only: two values per step, one label test for both (their max), and NaN
        # replaced by 0.0 instead of a branch.  Fewer instructions per value: 7.7 against
        # 8.8 ms for the one-value loop (numbagg 9.3; Zen 3, 1e7 values, 1000 groups, best
        # of 15 interleaved).  With counts the select loses (11.2 vs 10.1 ms): kept branchy.
        m = xs.shape[0] // 2
        for j in range(m):
            g = numba.uint64(ls[2 * j])
            h = numba.uint64(ls[2 * j + 1])
            if max(g, h) >= ung:
                bad = True
                continue
            v = xs[2 * j]
            u = xs[2 * j + 1]
            s0[g] += v if v == v else 0.0  # noqa: PLR0124 - NaN test
            s0[h] += u if u == u else 0.0  # noqa: PLR0124 - NaN test
        if xs.shape[0] > 2 * m:  # odd length: the last value
            g = numba.uint64(ls[2 * m])
            if g >= ung:
                bad = True
            else:
                v = xs[2 * m]
                if not np.isnan(v):
                    s0[g] += v
    return bad


@numba.njit(cache=True, nogil=True, inline="always")
def _sum_two_lanes_free(xs, ls, ung, s0, s1, c0, c1, count):  # type: ignore[no-untyped-def]  # pragma: no cover
    """The two-lane loop of :func:`_sum_task` without a NaN branch (many NaNs, see few_nans).

    With runs of equal labels every add waits for the previous one through memory, and the
    branchy loop adds to that wait a mispredicted branch per NaN: 4e6 sorted values, 1000
    groups, 1 thread, Zen 4 with AVX2 code, ``group_mean`` at 30 / 50 % NaN 14.5 / 19.5 ms
    (numbagg 15.2 / 20.1).  A NaN here adds 0.0 and a count of 0, so the time is the NaN-free
    loop's at any share (docs/benchmarks.md, seventh session).  The odd last value is left to
    the caller.
    """
    bad = False
    for j in range(xs.shape[0] // 2):
        g = numba.uint64(ls[2 * j])
        h = numba.uint64(ls[2 * j + 1])
        if g >= ung or h >= ung:
            bad = True
            continue
        v = xs[2 * j]
        u = xs[2 * j + 1]
        s0[g] += nan_zero(v)
        s1[h] += nan_zero(u)
        if count:
            c0[g] += v == v  # noqa: PLR0124 - NaN test (a 0/1 count)
            c1[h] += u == u  # noqa: PLR0124 - NaN test
    return bad


@numba.njit(cache=True, nogil=True)
def _sum_task(x, lab, start, stop, ng, cr, sr, count):  # type: ignore[no-untyped-def]  # pragma: no cover
    """NaN-skipping sums, and counts unless ``count`` is False (``group_sum`` needs none).

    ``cr``/``sr`` are (2, ng).  With repeating neighbour labels (:func:`_repeats`) lane 0
    takes even positions of the segment and lane 1 odd ones; otherwise lane 0 takes them all
    (lane 1 stays zero and the merge is unchanged).
    """
    bad = False
    xs = x[start:stop]
    ls = lab[start:stop]
    s0 = sr[0]
    s1 = sr[1]
    c0 = cr[0]
    c1 = cr[1]
    ung = numba.uint64(ng)
    if not _repeats(ls):
        return _sum_one_lane(xs, ls, ung, s0, c0, count)
    m = xs.shape[0] // 2
    if not few_nans(xs):
        bad = _sum_two_lanes_free(xs, ls, ung, s0, s1, c0, c1, count)
    elif count:  # two loops instead of a test per element
        for j in range(m):
            g = numba.uint64(ls[2 * j])
            h = numba.uint64(ls[2 * j + 1])
            if g >= ung or h >= ung:
                bad = True
                continue
            v = xs[2 * j]
            u = xs[2 * j + 1]
            if not np.isnan(v):
                s0[g] += v
                c0[g] += 1
            if not np.isnan(u):
                s1[h] += u
                c1[h] += 1
    else:
        for j in range(m):
            g = numba.uint64(ls[2 * j])
            h = numba.uint64(ls[2 * j + 1])
            if g >= ung or h >= ung:
                bad = True
                continue
            v = xs[2 * j]
            u = xs[2 * j + 1]
            if not np.isnan(v):
                s0[g] += v
            if not np.isnan(u):
                s1[h] += u
    if xs.shape[0] > 2 * m:  # odd length: the last value goes to lane 0
        g = ls[2 * m]
        if g < 0 or g >= ng:
            bad = True
        else:
            v = xs[2 * m]
            if not np.isnan(v):
                s0[g] += v
                c0[g] += 1
    return bad


# ``var`` in one pass, exact with large offsets, at the speed of the textbook sums where it can.
#
# The textbook ``sum(x**2) - sum(x)**2 / n`` (numbagg) loses every digit when the values sit on
# a large offset.  Sums of ``x - K`` with ``K`` near the group's values keep them: the result's
# relative error grows with ``s2 / M2``, the ratio of the shifted sum of squares to the result.
# Two ways of choosing ``K``:
#
# * common shift (``_var_common``): one ``K`` per task, its first non-NaN value, kept in a
#   register.  The loop is numbagg's plus one subtraction; it is exact while every group's mean
#   lies within ``2**(_VAR_GUARD_BITS / 2)`` standard deviations of ``K`` (data with one large
#   offset, groups that overlap).
# * own shift (``_var_own``): each group's first value, set on its first visit.  Exact for any
#   spread of group means, but each value pays a test of the count and a load of the shift:
#   17.8 ms against the common shift's 12.9 and numbagg's 13.1 (1e7 values, 1000 groups,
#   1 thread, AMD EPYC Zen 3; scratch copies of the loops, best of 15).
#
# Both accumulate into 32-byte records ``(count, sum d, sum d**2, shift or 0)`` per group and
# lane, updated by one 4-wide vector read-modify-write (``_simd.add_record4``) instead of three
# scalar ones: the common-shift loop 16.5 -> 14.2 ms, numbagg 16.5 (Zen 4, 1e7 values, 1000
# groups, best of 20 interleaved).  Counts are float64 there, exact up to 2**53.
#
# A task starts with the common shift on its first ``max(_VAR_PROBE, 4 ngroups)`` values and
# checks the guard (``s2 <= 2**_VAR_GUARD_BITS * M2`` for every group with two or more values;
# NaN fails it); if a group already fails it, the task restarts with own shifts.  After the
# pass the wrapper checks the guard again on every common-shift partial (a group may drift or
# first appear after the probe); groups that fail are computed again, in a second pass with own
# shifts restricted to them, and that result replaces theirs.  So every group's variance comes
# from shifted sums that passed the guard or from its own shift.

#: A common-shift partial is kept when cancellation cost at most this many bits (s2 <= 2**b M2).
_VAR_GUARD_BITS = 8
_VAR_GUARD = float(2**_VAR_GUARD_BITS)
#: Values a task accumulates with the common shift before it checks the guard once.
_VAR_PROBE = 1 << 14


@numba.njit(cache=True, nogil=True)
def _first_value(xs):  # type: ignore[no-untyped-def]  # pragma: no cover
    """First non-NaN value of ``xs`` (0.0 if there is none): the task's common shift."""
    for j in range(xs.shape[0]):
        if not np.isnan(xs[j]):
            return xs[j]
    return 0.0


@numba.njit(cache=True, nogil=True, inline="always")
def _common_add(acc, g, d):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Add ``d = x - c`` to group ``g``'s record ``(count, sum, sum of squares, 0)`` (one lane)."""
    add_record4(acc, g, 1.0, d, d * d)


@numba.njit(cache=True, nogil=True, inline="always")
def _guard_ok(n, a, q):  # type: ignore[no-untyped-def]  # pragma: no cover
    """The guard for ``n`` values with shifted sums ``a``, ``q``: at most ``_VAR_GUARD_BITS`` lost.

    ``q <= 2**b * M2`` with ``M2 = q - a**2 / n``; NaN (an inf among the values) fails it.
    Groups with fewer than two values pass (their ``M2`` is 0 by definition).
    """
    return n < 2 or q <= _VAR_GUARD * (q - a * a / n)


@numba.njit(cache=True, nogil=True)
def _var_common(xs, ls, ung, c, acc, two):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Counts and sums of ``d = x - c`` and ``d**2`` into records ``acc[0]`` (``[1]`` if ``two``)."""
    bad = False
    a0, a1 = acc[0], acc[1]
    if not two and few_nans(xs):
        for j in range(xs.shape[0]):
            g = numba.uint64(ls[j])
            if g >= ung:
                bad = True
                continue
            v = xs[j]
            if not np.isnan(v):
                _common_add(a0, g, v - c)
        return bad
    if not two:  # many NaNs: a NaN adds the record (0, 0, 0), no branch (see few_nans)
        for j in range(xs.shape[0]):
            g = numba.uint64(ls[j])
            if g >= ung:
                bad = True
                continue
            v = xs[j]
            d = nan_zero(v - c)
            add_record4(a0, g, np.float64(v == v), d, d * d)  # noqa: PLR0124 - NaN test
        return bad
    m = xs.shape[0] // 2
    if few_nans(xs):
        for j in range(m):
            g = numba.uint64(ls[2 * j])
            h = numba.uint64(ls[2 * j + 1])
            if g >= ung or h >= ung:
                bad = True
                continue
            v = xs[2 * j]
            u = xs[2 * j + 1]
            if not np.isnan(v):
                _common_add(a0, g, v - c)
            if not np.isnan(u):
                _common_add(a1, h, u - c)
    else:  # many NaNs, two lanes: as the one-lane loop above, no branch on a NaN
        for j in range(m):
            g = numba.uint64(ls[2 * j])
            h = numba.uint64(ls[2 * j + 1])
            if g >= ung or h >= ung:
                bad = True
                continue
            v = xs[2 * j]
            u = xs[2 * j + 1]
            d = nan_zero(v - c)
            e = nan_zero(u - c)
            add_record4(a0, g, np.float64(v == v), d, d * d)  # noqa: PLR0124 - NaN test
            add_record4(a1, h, np.float64(u == u), e, e * e)  # noqa: PLR0124 - NaN test
    if xs.shape[0] > 2 * m:  # odd length: the last value goes to lane 0
        g = numba.uint64(ls[2 * m])
        if g >= ung:
            bad = True
        else:
            v = xs[2 * m]
            if not np.isnan(v):
                _common_add(a0, g, v - c)
    return bad


@numba.njit(cache=True, nogil=True)
def _guard_holds(acc):  # type: ignore[no-untyped-def]  # pragma: no cover
    """True if every group's common-shift sums (both lanes) lost at most ``_VAR_GUARD_BITS`` bits."""
    for g in range(acc.shape[1]):
        if not _guard_ok(
            acc[0, g, 0] + acc[1, g, 0], acc[0, g, 1] + acc[1, g, 1], acc[0, g, 2] + acc[1, g, 2]
        ):
            return False
    return True


@numba.njit(cache=True, nogil=True)
def _records_out(acc, cnt, s1, s2, sh):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Copy the records ``acc`` (2 lanes, ng, 4) out to the partial arrays (2 lanes, ng)."""
    for lane in range(2):
        for g in range(acc.shape[1]):
            cnt[lane, g] = numba.int64(acc[lane, g, 0])
            s1[lane, g] = acc[lane, g, 1]
            s2[lane, g] = acc[lane, g, 2]
            sh[lane, g] = acc[lane, g, 3]


@numba.njit(cache=True, nogil=True, inline="always")
def _own_add(acc, g, v):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Add ``v`` to group ``g``'s record ``(count, sum d, sum d**2, shift)``, ``d = v - shift``."""
    if acc[g, 0] == 0.0:
        acc[g, 3] = v  # the group's shift: its first value
    d = v - acc[g, 3]
    add_record4(acc, g, 1.0, d, d * d)  # the shift's lane adds 0.0


@numba.njit(cache=True, nogil=True)
def _var_own(xs, ls, ung, keep, acc):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Own-shift sums of the groups with ``keep[g]`` into records ``acc[0]``, ``acc[1]`` (lanes).

    Accumulated in one 32-byte record per group (array of structs: each value touches one
    cache line; 23.5 -> 21.3 ms against four arrays, measured in round 1), two lanes (even and
    odd positions: sorted labels would otherwise chain every add through one cell), each
    updated by one vector add; the caller copies them out (:func:`_records_out`).
    """
    bad = False
    a0 = acc[0]
    a1 = acc[1]
    m = xs.shape[0] // 2
    for j in range(m):
        g = numba.uint64(ls[2 * j])
        h = numba.uint64(ls[2 * j + 1])
        if g >= ung or h >= ung:
            bad = True
            continue
        v = xs[2 * j]
        u = xs[2 * j + 1]
        if keep[g] and not np.isnan(v):
            _own_add(a0, g, v)
        if keep[h] and not np.isnan(u):
            _own_add(a1, h, u)
    if xs.shape[0] > 2 * m:
        g = numba.uint64(ls[2 * m])
        if g >= ung:
            bad = True
        else:
            v = xs[2 * m]
            if keep[g] and not np.isnan(v):
                _own_add(a0, g, v)
    return bad


@numba.njit(cache=True, nogil=True)
def _var_task(xs, ls, ng, keep, own, cnt, s1, s2, sh):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Shifted moments of one (worker, row) range into ``cnt``/``s1``/``s2``/``sh`` (2 lanes, ng).

    Returns ``(bad label seen, own shifts used)``.  ``own`` forces own shifts (the wrapper's
    second pass, with ``keep`` marking the groups to redo).
    """
    ung = numba.uint64(ng)
    acc = np.zeros((2, ng, 4))
    if not own:
        c = _first_value(xs)
        two = _repeats(ls)
        p = min(xs.shape[0], max(_VAR_PROBE, 4 * ng))
        bad = _var_common(xs[:p], ls[:p], ung, c, acc, two)
        if _guard_holds(acc):
            bad |= _var_common(xs[p:], ls[p:], ung, c, acc, two)
            acc[:, :, 3] = c
            _records_out(acc, cnt, s1, s2, sh)
            return bad, False
        acc[:, :, :] = 0.0
    bad = _var_own(xs, ls, ung, keep, acc)
    _records_out(acc, cnt, s1, s2, sh)
    return bad, True


@numba.njit(cache=True, nogil=True)
def _ext_task(x, lab, start, stop, ng, cr, er, is_max):  # type: ignore[no-untyped-def]  # pragma: no cover
    bad = False
    xs = x[start:stop]
    ls = lab[start:stop]
    ung = numba.uint64(ng)
    # A count for every value (0 for NaN) and a store only for a better value: NaN compares
    # false, so the one branch is "a new extreme", rare after a group's first values and
    # well predicted whatever the NaN share.  4e6 values, 1000 groups, 1 thread, Zen 4 with
    # AVX2 code, ms at 0 / 1 / 10 / 30 % NaN: see docs/benchmarks.md (seventh session).
    for i in range(xs.shape[0]):
        g = numba.uint64(ls[i])
        if g >= ung:
            bad = True
            continue
        v = xs[i]
        cr[g] += v == v  # noqa: PLR0124 - NaN test (a 0/1 count)
        if (v > er[g]) if is_max else (v < er[g]):
            er[g] = v
    return bad


# Drivers: one worker's share of the plan (``_*_worker``), run on threads by the parallel
# driver and called directly when the plan has one worker: a ``parallel=True`` function costs
# its thread launch even then (0.17 ms of 8.4 for group_mean, 1e7 values, 1 thread, Zen 4).


@numba.njit(cache=True, nogil=True)
def _sum_worker(t, a2, lab, ng, rows, starts, stops, tb, cnt, s1, count, bad):  # type: ignore[no-untyped-def]  # pragma: no cover
    for k in range(tb[t], tb[t + 1]):
        r = rows[k]
        if _sum_task(a2[r], lab, starts[k], stops[k], ng, cnt[t, r], s1[t, r], count):
            bad[t] = True


@numba.njit(cache=True, nogil=True, parallel=True)
def _g_sum(a2, lab, ng, rows, starts, stops, tb, cnt, s1, count, bad):  # type: ignore[no-untyped-def]  # pragma: no cover
    for t in numba.prange(tb.shape[0] - 1):
        _sum_worker(t, a2, lab, ng, rows, starts, stops, tb, cnt, s1, count, bad)


@numba.njit(cache=True, nogil=True)
def _g_sum_serial(a2, lab, ng, rows, starts, stops, tb, cnt, s1, count, bad):  # type: ignore[no-untyped-def]  # pragma: no cover
    _sum_worker(0, a2, lab, ng, rows, starts, stops, tb, cnt, s1, count, bad)


@numba.njit(cache=True, nogil=True)
def _var_worker(t, a2, lab, ng, rows, starts, stops, tb, keep, own, cnt, s1, s2, sh, used_own, bad):  # type: ignore[no-untyped-def]  # pragma: no cover
    """``var`` partials per (worker, row): a worker's consecutive segments of a row are one range.

    (With fewer rows than threads a worker can hold two adjacent segments of one row; the
    common shift and the guard are per range, so they are joined, not run one after another.)
    """
    k = tb[t]
    while k < tb[t + 1]:
        r = rows[k]
        lo = starts[k]
        hi = stops[k]
        while k + 1 < tb[t + 1] and rows[k + 1] == r and starts[k + 1] == hi:
            k += 1
            hi = stops[k]
        x = a2[r]
        b, u = _var_task(
            x[lo:hi],
            lab[lo:hi],
            ng,
            keep[min(r, keep.shape[0] - 1)],
            own,
            cnt[t, r],
            s1[t, r],
            s2[t, r],
            sh[t, r],
        )
        if b:
            bad[t] = True
        used_own[t, r] = u
        k += 1


@numba.njit(cache=True, nogil=True, parallel=True)
def _g_var(a2, lab, ng, rows, starts, stops, tb, keep, own, cnt, s1, s2, sh, used_own, bad):  # type: ignore[no-untyped-def]  # pragma: no cover
    for t in numba.prange(tb.shape[0] - 1):
        _var_worker(
            t, a2, lab, ng, rows, starts, stops, tb, keep, own, cnt, s1, s2, sh, used_own, bad
        )


@numba.njit(cache=True, nogil=True)
def _g_var_serial(a2, lab, ng, rows, starts, stops, tb, keep, own, cnt, s1, s2, sh, used_own, bad):  # type: ignore[no-untyped-def]  # pragma: no cover
    _var_worker(0, a2, lab, ng, rows, starts, stops, tb, keep, own, cnt, s1, s2, sh, used_own, bad)


@numba.njit(cache=True, nogil=True)
def _ext_worker(t, a2, lab, ng, rows, starts, stops, tb, cnt, ext, is_max, bad):  # type: ignore[no-untyped-def]  # pragma: no cover
    for k in range(tb[t], tb[t + 1]):
        r = rows[k]
        if _ext_task(a2[r], lab, starts[k], stops[k], ng, cnt[t, r], ext[t, r], is_max):
            bad[t] = True


@numba.njit(cache=True, nogil=True, parallel=True)
def _g_ext(a2, lab, ng, rows, starts, stops, tb, cnt, ext, is_max, bad):  # type: ignore[no-untyped-def]  # pragma: no cover
    for t in numba.prange(tb.shape[0] - 1):
        _ext_worker(t, a2, lab, ng, rows, starts, stops, tb, cnt, ext, is_max, bad)


@numba.njit(cache=True, nogil=True)
def _g_ext_serial(a2, lab, ng, rows, starts, stops, tb, cnt, ext, is_max, bad):  # type: ignore[no-untyped-def]  # pragma: no cover
    _ext_worker(0, a2, lab, ng, rows, starts, stops, tb, cnt, ext, is_max, bad)


# --------------------------------------------------------------------------- partials (pure)


def _plan(nrows: int, n: int, threads: int) -> tuple[np.ndarray, ...]:
    """(rows, starts, stops, worker_bounds): rows, or segments of one row, per worker."""
    return row_segments(nrows, n, threads, _MIN_SEGMENT)


def _partials(
    op: str, a2: np.ndarray, lab: np.ndarray, ng: int, threads: int | None
) -> dict[str, np.ndarray]:
    """Per-row partial statistics, each shaped (rows, ngroups), merged over workers.

    Keys: ``n`` always; ``sum`` (sum/mean), ``shift`` + ``mean`` (relative to it) + ``m2``
    (var), ``ext`` (min/max).
    """
    nrows, n = a2.shape
    if nrows == 1 and n < 2 * _MIN_SEGMENT:
        # One task whatever the thread count: no thread switch and no planning, which were
        # 7 of the 30 us of a 10 000-value call (Zen 4); the serial drivers run it.
        if threads is not None:
            check_threads(threads)
        plan = _one_task(n)
        return _partials_of(op, a2, lab, ng, plan)
    with kernel_threads(threads) as nthreads:
        return _partials_of(op, a2, lab, ng, _plan(nrows, n, nthreads))


def _one_task(n: int) -> tuple[np.ndarray, ...]:
    """The plan of :func:`_plan` for one row as one task, built directly."""
    zero = np.zeros(1, dtype=np.int64)
    return zero, zero, np.array([n], dtype=np.int64), np.array([0, 1], dtype=np.int64)


def _partials_of(
    op: str, a2: np.ndarray, lab: np.ndarray, ng: int, plan: tuple[np.ndarray, ...]
) -> dict[str, np.ndarray]:
    """:func:`_partials` for a given plan (run with the thread count it was made for)."""
    nrows = a2.shape[0]
    rows, starts, stops, tb = plan
    workers = tb.shape[0] - 1
    bad = np.zeros(workers, dtype=np.bool_)
    if op == _VAR:
        parts, failed = _var_moments(a2, lab, ng, plan, np.ones((1, ng), np.bool_), False)
        if failed.any():  # groups whose common-shift sums lost too much: own shifts
            redo, _ = _var_moments(a2, lab, ng, plan, failed, True)
            parts = {key: np.where(failed, redo[key], parts[key]) for key in parts}
        return parts
    if op in (_SUM, _MEAN, _COUNT):
        # (worker, row, lane, group); lanes are merged like workers
        lanes = (workers, nrows, _LANES, ng)
        cnt = np.zeros(lanes, dtype=np.int64)
        s1 = np.zeros(lanes, dtype=np.float64)
        drive = _g_sum if workers > 1 else _g_sum_serial
        drive(a2, lab, ng, rows, starts, stops, tb, cnt, s1, op != _SUM, bad)
        _raise_if_bad(bad, lab, ng)
        return {"n": cnt.sum(axis=(0, 2)), "sum": s1.sum(axis=(0, 2))}
    shape = (workers, nrows, ng)
    cnt = np.zeros(shape, dtype=np.int64)
    ident = -np.inf if op == _MAX else np.inf
    ext = np.full(shape, ident, dtype=np.float64)
    run = _g_ext if workers > 1 else _g_ext_serial
    run(a2, lab, ng, rows, starts, stops, tb, cnt, ext, op == _MAX, bad)
    _raise_if_bad(bad, lab, ng)
    reduce = np.max if op == _MAX else np.min
    return {"n": cnt.sum(axis=0), "ext": reduce(ext, axis=0)}


def _var_moments(
    a2: np.ndarray,
    lab: np.ndarray,
    ng: int,
    plan: tuple[np.ndarray, ...],
    keep: np.ndarray,
    own: bool,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Merged (count, mean, M2) per (row, group), and where a common-shift partial failed the guard.

    ``keep`` (rows or 1, ngroups) restricts an ``own``-shift pass to the groups it marks.
    """
    rows, starts, stops, tb = plan
    workers = tb.shape[0] - 1
    shape = (workers, a2.shape[0], _LANES, ng)
    cnt = np.zeros(shape, dtype=np.int64)
    s1 = np.zeros(shape, dtype=np.float64)
    s2 = np.zeros(shape, dtype=np.float64)
    sh = np.zeros(shape, dtype=np.float64)
    used_own = np.zeros(shape[:2], dtype=np.bool_)
    bad = np.zeros(workers, dtype=np.bool_)
    drive = _g_var if workers > 1 else _g_var_serial
    drive(a2, lab, ng, rows, starts, stops, tb, keep, own, cnt, s1, s2, sh, used_own, bad)
    _raise_if_bad(bad, lab, ng)
    failed = np.zeros(shape[1:2] + shape[3:], dtype=np.bool_)
    n, ref, rel, m2 = _merge_shifted(cnt, sh, s1, s2, used_own, failed)
    return {"n": n, "shift": ref, "mean": rel, "m2": m2}, failed


@numba.njit(cache=True, nogil=True)
def _merge_shifted(cnt, sh, s1, s2, used_own, failed):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Chan-merge (worker, row, lane, group) shifted sums into (row, group) moments; flag the guard.

    Each (worker, lane) is one partial: ``cnt`` values with sums ``s1``/``s2`` of ``x - sh``.
    Common-shift partials (``used_own[worker, row]`` False) that fail the guard set
    ``failed[row, group]``.  See :func:`_merge_moments` for the merge itself.
    """
    workers, nrows, lanes, ng = cnt.shape
    mean = np.zeros(cnt.shape)
    m2 = np.zeros(cnt.shape)
    for t in range(workers):
        for r in range(nrows):
            for lane in range(lanes):
                for g in range(ng):
                    c = cnt[t, r, lane, g]
                    if c == 0:
                        continue
                    a = s1[t, r, lane, g]
                    q = s2[t, r, lane, g]
                    mean[t, r, lane, g] = a / c
                    m2[t, r, lane, g] = q - a * a / c
                    if not used_own[t, r] and not _guard_ok(c, a, q):
                        failed[r, g] = True
    return _merge_moments(cnt, sh, mean, m2)


@numba.njit(cache=True, nogil=True)
def _merge_moments(n, shift, mean, m2):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Merge (count, shift, mean - shift, M2) partials over axes 0 and 2 of (p, rows, q, groups).

    Chan, Golub & LeVeque's parallel formula; empty parts drop out.  Means travel as offsets
    from a shift, and the merge works relative to the first non-empty part's shift: with
    absolute means the spread term ``n (mean - mean_all)**2`` inherits the rounding of the
    offset itself (one ulp of 5e9 is 1e-6), and its cross term cost 1e-9 of relative accuracy
    at that offset.  Differences of nearby shifts are exact (Sterbenz), so the offsets keep
    every digit.  Compiled: the same merge in NumPy (a dozen whole-array steps) cost 0.12 ms
    per call for 1000 groups, a tenth of a 1e6-value ``group_var``.
    """
    np_, nrows, nq, ng = n.shape
    total = np.zeros((nrows, ng), dtype=np.int64)
    ref = np.zeros((nrows, ng))
    rel = np.full((nrows, ng), np.nan)
    spread = np.zeros((nrows, ng))
    for r in range(nrows):
        for g in range(ng):
            tot = 0
            have = False
            k = shift[0, r, 0, g]
            for p in range(np_):
                for q in range(nq):
                    c = n[p, r, q, g]
                    if c > 0:
                        if not have:
                            k = shift[p, r, q, g]
                            have = True
                        tot += c
            total[r, g] = tot
            ref[r, g] = k
            if not have:
                continue
            acc = 0.0
            for p in range(np_):
                for q in range(nq):
                    c = n[p, r, q, g]
                    if c > 0:
                        acc += c * ((shift[p, r, q, g] - k) + mean[p, r, q, g])
            mu = acc / tot
            sp = 0.0
            for p in range(np_):
                for q in range(nq):
                    c = n[p, r, q, g]
                    if c > 0:
                        dlt = (shift[p, r, q, g] - k) + mean[p, r, q, g] - mu
                        sp += m2[p, r, q, g] + c * dlt * dlt
            rel[r, g] = mu
            spread[r, g] = sp
    return total, ref, rel, spread


def _combine(op: str, parts: list[dict[str, np.ndarray]], axis: int) -> dict[str, np.ndarray]:
    """Merge partial dicts (one per block) along ``axis`` of their arrays' block dimension."""
    n = np.stack([p["n"] for p in parts])
    if op == _VAR:
        shift, mean, m2 = (np.stack([p[k] for p in parts]) for k in ("shift", "mean", "m2"))
        one = (n.shape[0], -1, 1, n.shape[-1])  # (blocks, rows, 1, groups)
        total, ref, rel, spread = _merge_moments(
            n.reshape(one), shift.reshape(one), mean.reshape(one), m2.reshape(one)
        )
        shape = n.shape[1:]
        return {
            "n": total.reshape(shape),
            "shift": ref.reshape(shape),
            "mean": rel.reshape(shape),
            "m2": spread.reshape(shape),
        }
    if op in (_MIN, _MAX):
        ext = np.stack([p["ext"] for p in parts])
        return {"n": n.sum(axis=0), "ext": (np.max if op == _MAX else np.min)(ext, axis=0)}
    return {"n": n.sum(axis=0), "sum": np.stack([p["sum"] for p in parts]).sum(axis=0)}


def _finalize(op: str, p: dict[str, np.ndarray], ddof: int, dtype: np.dtype) -> np.ndarray:
    n = p["n"]
    if op == _COUNT:
        return n
    # Masked divisions (``where=``) instead of ``np.errstate`` + ``np.where``: no warning to
    # silence, and the context manager alone was a tenth of a small call's fixed cost.
    if op == _SUM:
        res = p["sum"]
    elif op == _MEAN:
        res = np.divide(p["sum"], n, out=np.full(n.shape, np.nan), where=n > 0)
    elif op == _VAR:
        dof = n - ddof
        res = np.divide(np.maximum(p["m2"], 0.0), dof, out=np.full(n.shape, np.nan), where=dof > 0)
    else:
        res = np.where(n > 0, p["ext"], np.nan)
    return res.astype(dtype, copy=False)


def _raise_if_bad(bad: np.ndarray, lab: np.ndarray, ng: int) -> None:
    if bad.any():
        lo, hi = int(lab.min()), int(lab.max())
        if lo < 0:
            raise ValueError(
                f"labels must be >= 0 (negative labels are not a 'skip' marker here), got {lo}"
            )
        raise ValueError(f"labels must be < ngroups={ng}, got a label {hi}")


# --------------------------------------------------------------------------- validation


def _check_labels(labels: Any, n: int) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.dtype.kind not in "iu":
        raise TypeError(f"labels must have an integer dtype, got {lab.dtype}")
    if not lab.dtype.isnative:  # byte-swapped: the compiled loops read native integers only
        lab = lab.astype(lab.dtype.newbyteorder("="))
    if lab.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {lab.shape}")
    if lab.shape[0] != n:
        raise ValueError(
            f"labels must have one entry per position along axis: {lab.shape[0]} != {n}"
        )
    return lab


def _check_ngroups(ngroups: Any, lab: np.ndarray) -> int:
    if ngroups is not None:
        return check_positive_int(ngroups, "ngroups", minimum=0)
    if lab.shape[0] == 0:
        return 0
    lo = int(lab.min())
    if lo < 0:
        raise ValueError(f"labels must be >= 0 (negative labels are not a 'skip' marker), got {lo}")
    return int(lab.max()) + 1


def _result_dtype(op: str, dtype: np.dtype) -> np.dtype:
    if op == _COUNT:
        return np.dtype(np.int64)
    return np.dtype(np.float32) if dtype == np.float32 else np.dtype(np.float64)


# --------------------------------------------------------------------------- dispatch


def _group(
    op: str,
    values: Any,
    labels: Any,
    ngroups: Any,
    axis: Any,
    dim: str | None,
    ddof: Any,
    threads: int | None,
) -> Any:
    dd = check_positive_int(ddof, "ddof", minimum=0)
    if is_xarray(values):
        return _group_xarray(op, values, labels, ngroups, axis, dim, dd, threads)
    if dim is not None:
        raise TypeError(f"dim= is only for xarray input; use axis= for {type(values).__name__}")
    if is_dask(values):
        return _group_dask(op, values, labels, ngroups, axis, dd, threads)
    arr = as_real_array(values, "values")
    if arr.ndim == 0:
        raise ValueError(f"group_{op} needs at least a 1-D values array, got a scalar")
    ax = normalize_axis(axis, arr.ndim)
    lab = _check_labels(labels, arr.shape[ax])
    ng = _check_ngroups(ngroups, lab)
    return _group_numpy(op, arr, lab, ng, ax, dd, threads)


def _group_numpy(
    op: str, arr: np.ndarray, lab: np.ndarray, ng: int, ax: int, ddof: int, threads: int | None
) -> np.ndarray:
    last = ax == arr.ndim - 1
    moved = arr if last else np.moveaxis(arr, ax, -1)
    a2 = moved.reshape(math.prod(moved.shape[:-1]), moved.shape[-1])
    # One layout (C) and two dtypes reach the kernels: fewer compiled specialisations.
    a2 = np.ascontiguousarray(a2, dtype=np.float64 if a2.dtype.kind in "iu" else a2.dtype)
    lab = np.ascontiguousarray(lab)
    parts = _partials(op, a2, lab, ng, threads)
    res = _finalize(op, parts, ddof, _result_dtype(op, arr.dtype))
    res = res.reshape(*moved.shape[:-1], ng)
    return res if last else np.moveaxis(res, -1, ax)


def _group_dask(
    op: str, values: Any, labels: Any, ngroups: Any, axis: Any, ddof: int, threads: int | None
) -> Any:
    import dask.array as da

    v = da.asarray(values)
    v = as_real_lazy(v, "values")  # the one dtype rule, without computing
    ax = normalize_axis(axis, v.ndim)
    n = v.shape[ax]
    if is_dask(labels):
        if ngroups is None:
            raise ValueError("ngroups is required when labels is a dask array")
        lab = labels
        if lab.dtype.kind not in "iu" or lab.ndim != 1 or lab.shape[0] != n:
            raise ValueError(
                f"labels must be 1-D integers of length {n}, got {lab.shape} {lab.dtype}"
            )
        ng = check_positive_int(ngroups, "ngroups", minimum=0)
    else:
        lab = _check_labels(labels, n)
        ng = _check_ngroups(ngroups, lab)
    if v.size == 0:
        empty = _group_numpy(
            op, np.empty(v.shape, dtype=v.dtype), np.zeros(n, np.int64), ng, ax, ddof, threads
        )
        return da.from_array(empty)
    shape = [1] * v.ndim
    shape[ax] = n
    weights = da.asarray(lab).reshape(shape).rechunk({ax: v.chunks[ax]})
    out_dtype = _result_dtype(op, v.dtype)

    def chunk(x: np.ndarray, weights: np.ndarray, axis: Any, keepdims: bool) -> np.ndarray:
        if x.size == 0:
            # Only Dask's meta inference calls us with an empty block (empty inputs are handled
            # before the reduction); refusing makes it fall back to the meta we pass.
            raise ValueError("empty block")
        index = tuple(slice(None) if i == ax else 0 for i in range(x.ndim))
        block_labels = np.asarray(weights[index])
        moved = np.moveaxis(x, ax, -1)
        a2 = moved.reshape(math.prod(moved.shape[:-1]), moved.shape[-1])
        a2 = np.ascontiguousarray(a2, dtype=np.float64 if a2.dtype.kind in "iu" else a2.dtype)
        parts = _partials(op, a2, np.ascontiguousarray(block_labels), ng, threads)
        return _box({k: val.reshape(*moved.shape[:-1], ng) for k, val in parts.items()})

    def combine(parts: Any, axis: Any, keepdims: bool) -> np.ndarray:
        return _box(_combine(op, _flatten(parts), ax))

    def aggregate(parts: Any, axis: Any, keepdims: bool) -> np.ndarray:
        merged = _combine(op, _flatten(parts), ax)
        res = _finalize(op, merged, ddof, out_dtype)
        return np.moveaxis(res, -1, ax)

    return da.reduction(
        v,
        chunk,
        aggregate,
        combine=combine,
        axis=ax,
        keepdims=True,
        dtype=out_dtype,
        concatenate=False,
        output_size=ng,
        weights=weights,
        meta=np.empty((0,) * v.ndim, dtype=out_dtype),
    )


def _box(parts: dict[str, np.ndarray]) -> np.ndarray:
    """Wrap partials in a 0-d object array: Dask's meta inference needs something with a dtype."""
    out = np.empty((), dtype=object)
    out[()] = parts
    return out


def _flatten(parts: Any) -> list[dict[str, np.ndarray]]:
    """The partial dicts inside Dask's (possibly nested) lists of boxes."""
    if isinstance(parts, np.ndarray) and parts.dtype == object:
        parts = parts.ravel().tolist()
    if isinstance(parts, dict):
        return [parts]
    out: list[dict[str, np.ndarray]] = []
    for p in parts:
        out.extend(_flatten(p))
    return out


def _group_xarray(
    op: str,
    values: Any,
    labels: Any,
    ngroups: Any,
    axis: Any,
    dim: str | None,
    ddof: int,
    threads: int | None,
) -> Any:
    import xarray as xr

    if dim is None:
        dim = values.dims[normalize_axis(axis, values.ndim)]
    elif dim not in values.dims:
        raise ValueError(f"dim={dim!r} is not a dimension of values (dims: {values.dims})")
    if is_xarray(labels):
        labels = labels.data
    lab = labels if is_dask(labels) else _check_labels(labels, values.sizes[dim])
    ng = ngroups if (ngroups is not None or is_dask(lab)) else _check_ngroups(None, lab)

    def func(x: Any) -> Any:
        return _group(op, x, lab, ng, -1, None, ddof, threads)

    res = xr.apply_ufunc(
        func,
        values,
        input_core_dims=[[dim]],
        output_core_dims=[["group"]],
        dask="allowed",
        keep_attrs=True,
    )
    return res.assign_coords(group=np.arange(res.sizes["group"]))


# --------------------------------------------------------------------------- public


def group_sum(
    values: Any,
    labels: Any,
    ngroups: int | None = None,
    *,
    axis: int = -1,
    dim: str | None = None,
    threads: int | None = None,
) -> Any:
    """NaN-skipping sum per group (0 for empty groups); see the module docstring."""
    return _group(_SUM, values, labels, ngroups, axis, dim, 0, threads)


def group_mean(
    values: Any,
    labels: Any,
    ngroups: int | None = None,
    *,
    axis: int = -1,
    dim: str | None = None,
    threads: int | None = None,
) -> Any:
    """NaN-skipping mean per group (NaN for empty groups)."""
    return _group(_MEAN, values, labels, ngroups, axis, dim, 0, threads)


def group_var(
    values: Any,
    labels: Any,
    ngroups: int | None = None,
    *,
    axis: int = -1,
    dim: str | None = None,
    ddof: int = 1,
    threads: int | None = None,
) -> Any:
    """NaN-skipping variance per group with ``ddof`` (default 1, like pandas/numbagg)."""
    return _group(_VAR, values, labels, ngroups, axis, dim, ddof, threads)


def group_min(
    values: Any,
    labels: Any,
    ngroups: int | None = None,
    *,
    axis: int = -1,
    dim: str | None = None,
    threads: int | None = None,
) -> Any:
    """NaN-skipping minimum per group (NaN for empty groups)."""
    return _group(_MIN, values, labels, ngroups, axis, dim, 0, threads)


def group_max(
    values: Any,
    labels: Any,
    ngroups: int | None = None,
    *,
    axis: int = -1,
    dim: str | None = None,
    threads: int | None = None,
) -> Any:
    """NaN-skipping maximum per group (NaN for empty groups)."""
    return _group(_MAX, values, labels, ngroups, axis, dim, 0, threads)


def group_count(
    values: Any,
    labels: Any,
    ngroups: int | None = None,
    *,
    axis: int = -1,
    dim: str | None = None,
    threads: int | None = None,
) -> Any:
    """Number of non-NaN values per group (int64, 0 for empty groups)."""
    return _group(_COUNT, values, labels, ngroups, axis, dim, 0, threads)
