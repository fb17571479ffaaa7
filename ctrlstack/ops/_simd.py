"""Explicit short-vector helpers for Numba kernels, written as target-independent LLVM IR.

Why this exists: some reductions that matter have no loop form LLVM's vectoriser accepts.  An
argmin over a row of 16 values is one: the scalar loop (compare, two selects per value) is a
dependency chain LLVM leaves scalar, 16 steps per row.  As vector IR it is a load, an add, one
``llvm.vector.reduce.fmin``, one compare and a count of trailing zeros, which LLVM lowers for
whatever the host has (one AVX-512 register, two AVX2 registers, four SSE ones): nothing here
names an x86 instruction, so the same code compiles on any CPU Numba supports.
"""

from __future__ import annotations

from typing import Any

import numba
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

__all__ = [
    "DOT_ROWS",
    "MASK_WIDTH",
    "NAN_SAMPLE",
    "NAN_SHARE",
    "VECTOR_BYTES",
    "WIDTH",
    "add_record4",
    "argmin_width",
    "below_mask",
    "bits_f64",
    "dot_block_below",
    "dot_block_cols",
    "f64_bits",
    "few_nans",
    "lowest_bit",
    "nan_mask",
    "nan_zero",
    "transpose_block",
    "transpose_width",
]

#: Values per vector step of :func:`argmin_width`; callers pad their rows to a multiple of it.
WIDTH = 16
#: Values screened by one :func:`below_mask` (one bit each of an int64).
MASK_WIDTH = 64


def _splat(builder: Any, value: Any, vty: Any) -> Any:
    """``value`` in every lane of vector type ``vty`` (insert into lane 0, shuffle it out)."""
    undef = ir.Constant(vty, ir.Undefined)
    first = builder.insert_element(undef, value, ir.Constant(ir.IntType(32), 0))
    zeros = ir.Constant(ir.VectorType(ir.IntType(32), vty.count), [0] * vty.count)
    return builder.shuffle_vector(first, undef, zeros)


@intrinsic
def _argmin_width(
    typingctx: Any, row: Any, off: Any, add: Any, add_off: Any
) -> Any:  # pragma: no cover - compiled
    """Index in ``0..WIDTH-1`` of the smallest ``row[off + i] + add[add_off + i]``.

    Ties go to the lowest index (the first set bit of the equality mask), like a scalar loop
    with a strict ``<``.  NaN values are skipped (``reduce.fmin``); if all ``WIDTH`` sums are
    NaN the answer is 0.  Both arrays must be 1-D, contiguous, of the same float dtype, and
    hold ``WIDTH`` values from the given offsets (not checked: callers pad).
    """
    if not (
        isinstance(row, types.Array)
        and isinstance(add, types.Array)
        and row.ndim == 1
        and add.ndim == 1
        and row.dtype == add.dtype
        and row.dtype in (types.float32, types.float64)
    ):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        rowty, _, addty, _ = sig.args
        fty = context.get_value_type(rowty.dtype)
        vty = ir.VectorType(fty, WIDTH)
        align = context.get_abi_sizeof(fty)
        a = context.make_array(rowty)(context, builder, args[0])
        b = context.make_array(addty)(context, builder, args[2])
        pa = cgutils.get_item_pointer(context, builder, rowty, a, [args[1]], wraparound=False)
        pb = cgutils.get_item_pointer(context, builder, addty, b, [args[3]], wraparound=False)
        va = builder.load(builder.bitcast(pa, vty.as_pointer()), align=align)
        vb = builder.load(builder.bitcast(pb, vty.as_pointer()), align=align)
        s = builder.fadd(va, vb)
        suffix = "f32" if rowty.dtype == types.float32 else "f64"
        reduce_min = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(fty, [vty]), f"llvm.vector.reduce.fmin.v{WIDTH}{suffix}"
        )
        m = builder.call(reduce_min, [s])
        mask = builder.bitcast(
            builder.fcmp_ordered("==", s, _splat(builder, m, vty)), ir.IntType(WIDTH)
        )
        cttz = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(ir.IntType(WIDTH), [ir.IntType(WIDTH), ir.IntType(1)]),
            f"llvm.cttz.i{WIDTH}",
        )
        tz = builder.call(cttz, [mask, ir.Constant(ir.IntType(1), 0)])
        # no lane equals the minimum only if all are NaN: answer 0, never an index past the row
        none = builder.icmp_unsigned("==", mask, ir.Constant(ir.IntType(WIDTH), 0))
        tz = builder.select(none, ir.Constant(ir.IntType(WIDTH), 0), tz)
        return builder.zext(tz, ir.IntType(64))

    return types.int64(row, off, add, add_off), codegen


#: ``argmin_width(row, off, add, add_off)`` inside ``@njit`` code (typed ``Any``: mypy would
#: otherwise read the intrinsic's typing signature, which has the typing context first).
argmin_width: Any = _argmin_width


@intrinsic
def _add_record4(
    typingctx: Any, acc: Any, g: Any, a: Any, b: Any, c: Any
) -> Any:  # pragma: no cover - compiled
    """``acc[g, 0:4] += (a, b, c, 0.0)`` as one 4-wide vector load, add and store.

    Why: a scattered per-group update of three accumulators (count, sum, sum of squares) is
    three scalar read-modify-writes, and LLVM's SLP vectoriser does not merge them even when
    they sit side by side in one 32-byte record.  One vector read-modify-write retires fewer
    instructions and touches one cache line: ``group_var``'s loop 16.5 -> 14.2 ms for 1e7
    values, 1000 groups (numbagg 16.5; Zen 4, best of 20 interleaved).  ``acc`` must be a
    C-contiguous float64 array of shape ``(ngroups, 4)``; ``g`` is not bounds-checked (the
    callers test it first).  The fourth lane adds ``0.0``, which leaves any value unchanged
    except ``-0.0``; callers keep it at ``0.0``.
    """
    if not (
        isinstance(acc, types.Array)
        and acc.ndim == 2
        and acc.layout == "C"
        and acc.dtype == types.float64
        and isinstance(g, types.Integer)
    ):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        accty = sig.args[0]
        vty = ir.VectorType(ir.DoubleType(), 4)
        arr = context.make_array(accty)(context, builder, args[0])
        gi = context.cast(builder, args[1], sig.args[1], types.intp)
        zero = context.get_constant(types.intp, 0)
        p = cgutils.get_item_pointer(context, builder, accty, arr, [gi, zero], wraparound=False)
        vp = builder.bitcast(p, vty.as_pointer())
        old = builder.load(vp, align=8)  # 8: NumPy guarantees no more than element alignment
        v = ir.Constant(vty, [0.0, 0.0, 0.0, 0.0])
        for i in range(3):
            x = context.cast(builder, args[2 + i], sig.args[2 + i], types.float64)
            v = builder.insert_element(v, x, ir.Constant(ir.IntType(32), i))
        builder.store(builder.fadd(old, v), vp, align=8)
        return context.get_dummy_value()

    return types.void(acc, g, a, b, c), codegen


#: ``add_record4(acc, g, a, b, c)`` inside ``@njit`` code (typed ``Any`` like ``argmin_width``).
add_record4: Any = _add_record4


@intrinsic
def f64_bits(typingctx: Any, x: Any) -> Any:  # pragma: no cover - compiled
    """The IEEE-754 bits of float64 ``x`` as an int64 (a bitcast: vectorises, unlike a view)."""
    if x != types.float64:
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@intrinsic
def bits_f64(typingctx: Any, i: Any) -> Any:  # pragma: no cover - compiled
    """The float64 whose IEEE-754 bits are int64 ``i`` (the inverse of :func:`f64_bits`)."""
    if i != types.int64:
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@intrinsic
def _below_mask(
    typingctx: Any, row: Any, off: Any, bound: Any
) -> Any:  # pragma: no cover - compiled
    """Bit ``i`` of the int64 result is set where ``row[off + i] < bound`` (``i < MASK_WIDTH``).

    Why: a top-k merge screens candidates against the current k-th.  A scalar walk over a
    block with a hit costs a compare and a branch per candidate; this mask is one vector
    compare per register and a move of the compare bits, and the caller visits only the set
    bits (:func:`lowest_bit`).  NaN compares false, as ``<`` does.  The compare is done in
    the wider of the two types (float32 values against a float64 bound are widened, exactly).  ``row`` must be 1-D,
    contiguous, float32 or float64, and hold ``MASK_WIDTH`` values from ``off`` (not checked:
    callers do the tail with a scalar loop).
    """
    if not (
        isinstance(row, types.Array)
        and row.ndim == 1
        and row.layout in ("C", "A")
        and row.dtype in (types.float32, types.float64)
        and isinstance(off, types.Integer)
        and isinstance(bound, types.Float)
    ):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        rowty = sig.args[0]
        fty = context.get_value_type(rowty.dtype)
        vty = ir.VectorType(fty, MASK_WIDTH)
        arr = context.make_array(rowty)(context, builder, args[0])
        oi = context.cast(builder, args[1], sig.args[1], types.intp)
        p = cgutils.get_item_pointer(context, builder, rowty, arr, [oi], wraparound=False)
        v = builder.load(builder.bitcast(p, vty.as_pointer()), align=context.get_abi_sizeof(fty))
        cmpty = sig.args[2]
        if cmpty.bitwidth > rowty.dtype.bitwidth:  # float32 values, float64 bound: exact widening
            vty = ir.VectorType(context.get_value_type(cmpty), MASK_WIDTH)
            v = builder.fpext(v, vty)
        else:
            cmpty = rowty.dtype
        b = context.cast(builder, args[2], sig.args[2], cmpty)
        below = builder.fcmp_ordered("<", v, _splat(builder, b, vty))
        return builder.bitcast(below, ir.IntType(64))

    return types.int64(row, off, bound), codegen


#: ``below_mask(row, off, bound)`` inside ``@njit`` code (typed ``Any`` like ``argmin_width``).
below_mask: Any = _below_mask


@intrinsic
def _nan_mask(typingctx: Any, row: Any, off: Any) -> Any:  # pragma: no cover - compiled
    """Bit ``i`` of the int64 result is set where ``row[off + i]`` is NaN (``i < MASK_WIDTH``).

    Why: a running sum that branches on "this step holds a NaN" pays a mispredicted branch per
    NaN entering or leaving the window, and the branch resolves only after its four loads and
    adds.  Testing a bit of a mask made ahead of the steps resolves in a cycle, so far less
    work is thrown away per miss.  One vector compare per register and a move of the compare
    bits.  ``row`` must be 1-D, contiguous, float32 or float64, and hold ``MASK_WIDTH`` values
    from ``off`` (not checked: callers do the tail with a scalar loop).
    """
    if not (
        isinstance(row, types.Array)
        and row.ndim == 1
        and row.layout in ("C", "A")
        and row.dtype in (types.float32, types.float64)
        and isinstance(off, types.Integer)
    ):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        rowty = sig.args[0]
        fty = context.get_value_type(rowty.dtype)
        vty = ir.VectorType(fty, MASK_WIDTH)
        arr = context.make_array(rowty)(context, builder, args[0])
        oi = context.cast(builder, args[1], sig.args[1], types.intp)
        p = cgutils.get_item_pointer(context, builder, rowty, arr, [oi], wraparound=False)
        v = builder.load(builder.bitcast(p, vty.as_pointer()), align=context.get_abi_sizeof(fty))
        return builder.bitcast(builder.fcmp_unordered("uno", v, v), ir.IntType(64))

    return types.int64(row, off), codegen


#: ``nan_mask(row, off)`` inside ``@njit`` code (typed ``Any`` like ``argmin_width``).
nan_mask: Any = _nan_mask


@intrinsic
def _nan_zero(typingctx: Any, v: Any) -> Any:  # pragma: no cover - compiled
    """``v`` if it is not NaN, else ``0.0`` (float32 or float64), without a branch.

    Why: ``v if v == v else 0.0`` is a select, and LLVM turns such a select into a branch when
    it judges the condition predictable (it does for x86 Zen targets: a compare and a jump
    around a zeroing).  In the steps that exist *because* a NaN is there, that branch is
    mispredicted once more per NaN.  Here the all-ones/all-zeros mask passes through an empty
    inline ``asm`` (the usual "opaque value" barrier, no instruction emitted), so LLVM cannot
    fold ``bits & mask`` back into a select, and the code is a compare, a negate and an
    ``and``.  The constraint string ``"=r,0"`` (a general register, tied to the input) is one
    every LLVM target accepts.  With AVX2 code on Zen 4, ``moving_mean`` on rows of 20 000
    values: 11.2 -> 10.2 ms per 1e7 values at 1 % NaN, and 30.6 -> 5.6 ms per 4e6 values at
    30 % NaN, where the select's branch mispredicted on every NaN (with the walk as its own
    function, ``moving._walk_row``).  A mask kept in a vector register (``"=x"``) measured
    the same; AVX-512 code, which had a masked move for the select, is not slower.
    """
    if v not in (types.float32, types.float64):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        x = args[0]
        ity = ir.IntType(64 if sig.args[0] == types.float64 else 32)
        mask = builder.sext(builder.fcmp_ordered("ord", x, x), ity)
        mask = builder.asm(ir.FunctionType(ity, [ity]), "", "=r,0", [mask], False)
        return builder.bitcast(builder.and_(builder.bitcast(x, ity), mask), x.type)

    return v(v), codegen


#: ``nan_zero(v)`` inside ``@njit`` code (typed ``Any`` like ``argmin_width``).
nan_zero: Any = _nan_zero


#: Which loop a NaN-skipping kernel runs: a branchy one (work only for numbers) when fewer than
#: one in ``NAN_SHARE`` of the first ``NAN_SAMPLE`` values is NaN, else a branch-free one
#: (:func:`nan_zero`), whose time does not depend on the NaN share.  Each NaN is a likely
#: mispredicted branch in the first; near 2.5 % the two cost the same (the running sum and
#: ``group_mean``'s scattered sums measured 2.5-4 %).
NAN_SAMPLE = 2048
NAN_SHARE = 40


@numba.njit(cache=True, nogil=True, inline="always")
def few_nans(x):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """True if fewer than one in ``NAN_SHARE`` of ``x``'s first ``NAN_SAMPLE`` values is NaN."""
    m = min(x.shape[0], NAN_SAMPLE)
    nans = 0
    for i in range(m):
        nans += x[i] != x[i]  # NaN test
    return nans * NAN_SHARE < m


@intrinsic
def _lowest_bit(typingctx: Any, m: Any) -> Any:  # pragma: no cover - compiled
    """Index of the lowest set bit of int64 ``m`` (64 for ``m == 0``): one ``tzcnt``."""
    if m != types.int64:
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        i64 = ir.IntType(64)
        cttz = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(i64, [i64, ir.IntType(1)]), "llvm.cttz.i64"
        )
        return builder.call(cttz, [args[0], ir.Constant(ir.IntType(1), 0)])

    return types.int64(types.int64), codegen


#: ``lowest_bit(m)`` inside ``@njit`` code (typed ``Any`` like ``argmin_width``).
lowest_bit: Any = _lowest_bit


def _vector_bytes() -> int:
    """Bytes of the widest vector register Numba compiles for: 64 with AVX-512F, else 32.

    Read from the features Numba targets (``NUMBA_CPU_FEATURES`` when set, the host's
    otherwise), so code built for AVX2 on an AVX-512 host (``benchmarks/ops.py --isa avx2``)
    gets AVX2 blocking.  Numba's cache is keyed by those features too, so a ``$HOME`` shared
    by both CPU kinds holds one build of each.
    """
    from numba.core import config

    features = getattr(config, "CPU_FEATURES", None)
    if features is None:
        import llvmlite.binding as ll

        features = ll.get_host_cpu_features().flatten()
    return 64 if "+avx512f" in features.split(",") else 32


#: Rows of one :func:`dot_block_below` block (each holds two vectors of accumulators).
DOT_ROWS = 4
#: Bytes of one vector register of the code Numba builds here (32 AVX2, 64 AVX-512).
VECTOR_BYTES = _vector_bytes()


def dot_block_cols(itemsize: int) -> int:
    """Columns of one :func:`dot_block_below` block: two vector registers of ``itemsize`` values.

    ``DOT_ROWS`` x 2 accumulator registers are 8 independent FMA chains, enough to keep two
    FMA units busy through their 4-cycle latency, and leave registers for the operands (AVX2
    has 16): 4 x 8 float64 with AVX2, 4 x 16 with AVX-512.
    """
    return 2 * VECTOR_BYTES // itemsize


@intrinsic
def _dot_block_below(
    typingctx: Any,
    xp: Any,
    xo: Any,
    yp: Any,
    yo: Any,
    depth: Any,
    bound: Any,
    bo: Any,
    out: Any,
    masks: Any,
) -> Any:  # pragma: no cover - compiled
    """A ``DOT_ROWS`` x ``C`` block of dot products in registers, stored with their "below" masks.

    ``C = dot_block_cols(itemsize)``.  Packed operands (no strides in the inner loop):
    ``xp[xo + t * DOT_ROWS + r]`` is row ``r``'s value ``t`` and ``yp[yo + t * C + c]`` column
    ``c``'s, for ``t < depth``.  Sets ``out[r * C + c] = sum_t x[r, t] * y[c, t]`` (one fused
    multiply-add per ``t``, in order), ``masks[r]`` to the bits ``c`` with
    ``out[r * C + c] < bound[bo + r]`` (compared in float64), and returns the OR of the masks.

    Why: a top-k search over ``|y|^2 - 2 x.y`` through BLAS writes every key to memory and reads
    it back to screen it; here the keys of a block never leave the registers unless a mask bit
    says a candidate may enter the top-k.  Written as target-independent vector IR (``llvm.fma``
    on vectors of ``C`` values), so LLVM picks the instructions.  Arrays must be 1-D and
    contiguous, ``xp``/``yp``/``out`` of one float dtype, ``bound`` float64, ``masks`` int64;
    bounds are not checked (callers pad).
    """
    if not (
        all(isinstance(a, types.Array) and a.ndim == 1 for a in (xp, yp, bound, out, masks))
        and xp.dtype in (types.float32, types.float64)
        and yp.dtype == xp.dtype
        and out.dtype == xp.dtype
        and bound.dtype == types.float64
        and masks.dtype == types.int64
        and all(isinstance(i, types.Integer) for i in (xo, yo, depth, bo))
    ):
        return None
    cols = dot_block_cols(xp.dtype.bitwidth // 8)
    rows = DOT_ROWS

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        xpty, _, ypty, _, _, bty, _, outty, mty = sig.args
        fty = context.get_value_type(xpty.dtype)
        dty = ir.DoubleType()
        i64 = ir.IntType(64)
        vty = ir.VectorType(fty, cols)
        align = context.get_abi_sizeof(fty)

        def ptr(arrty: Any, arr: Any, idx: Any, idxty: Any) -> Any:
            a = context.make_array(arrty)(context, builder, arr)
            i = context.cast(builder, idx, idxty, types.intp)
            return cgutils.get_item_pointer(context, builder, arrty, a, [i], wraparound=False)

        px = ptr(xpty, args[0], args[1], sig.args[1])
        py = ptr(ypty, args[2], args[3], sig.args[3])
        depth = context.cast(builder, args[4], sig.args[4], types.intp)
        suffix = f"v{cols}{'f32' if xpty.dtype == types.float32 else 'f64'}"
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vty, [vty, vty, vty]), f"llvm.fma.{suffix}"
        )
        accs = [
            cgutils.alloca_once_value(builder, ir.Constant(vty, [0.0] * cols)) for _ in range(rows)
        ]
        with cgutils.for_range(builder, depth) as loop:
            t = loop.index
            yv = builder.load(
                builder.bitcast(
                    builder.gep(py, [builder.mul(t, ir.Constant(t.type, cols))]), vty.as_pointer()
                ),
                align=align,
            )
            base = builder.mul(t, ir.Constant(t.type, rows))
            for r in range(rows):
                xs = builder.load(builder.gep(px, [builder.add(base, ir.Constant(t.type, r))]))
                acc = builder.call(fma, [_splat(builder, xs, vty), yv, builder.load(accs[r])])
                builder.store(acc, accs[r])
        pout = ptr(outty, args[7], ir.Constant(i64, 0), types.int64)
        pb = ptr(bty, args[5], args[6], sig.args[6])
        pm = ptr(mty, args[8], ir.Constant(i64, 0), types.int64)
        total = ir.Constant(i64, 0)
        wide = ir.VectorType(dty, cols)
        for r in range(rows):
            acc = builder.load(accs[r])
            dst = builder.gep(pout, [ir.Constant(i64, r * cols)])
            builder.store(acc, builder.bitcast(dst, vty.as_pointer()), align=align)
            keys = acc if fty == dty else builder.fpext(acc, wide)
            b = builder.load(builder.gep(pb, [ir.Constant(i64, r)]))
            below = builder.fcmp_ordered("<", keys, _splat(builder, b, wide))
            m = builder.zext(builder.bitcast(below, ir.IntType(cols)), i64)
            builder.store(m, builder.gep(pm, [ir.Constant(i64, r)]))
            total = builder.or_(total, m)
        return total

    return types.int64(xp, xo, yp, yo, depth, bound, bo, out, masks), codegen


#: ``dot_block_below(xp, xo, yp, yo, depth, bound, bo, out, masks)`` inside ``@njit`` code.
dot_block_below: Any = _dot_block_below


def transpose_width(itemsize: int) -> int:
    """Side of one :func:`transpose_block`: the values of one vector register.

    Register-wide, not line-wide: 16 x 16 float32 with AVX2 code is 32 half-vectors, more
    than the 16 registers, and measured 6 % slower than the scalar mirror (4000 x 4000);
    8 x 8 keeps it in registers.
    """
    return VECTOR_BYTES // itemsize


@intrinsic
def _transpose_block(
    typingctx: Any, src: Any, sr: Any, sc: Any, dst: Any, dr: Any, dc: Any
) -> Any:  # pragma: no cover - compiled
    """``dst[dr + j, dc + i] = src[sr + i, sc + j]`` for ``i, j < T`` (``T = transpose_width``).

    Why: mirroring a finished distance tile onto the other triangle with scalar code is one
    store per value, each to a different row.  Here the ``T x T`` block is ``T`` vector loads,
    ``T log2 T`` two-input shuffles (at each stage the rows ``i`` and ``i + s`` swap their
    ``s``-wide lane groups, ``s = T/2 .. 1``) and ``T`` vector stores, in IR
    that LLVM lowers for the host.  ``src`` and ``dst`` are 2-D float arrays of one dtype,
    C-contiguous (``T`` values along a row are adjacent); the block must lie inside both (not
    checked) and must not overlap itself.
    """
    if not (
        isinstance(src, types.Array)
        and isinstance(dst, types.Array)
        and src.ndim == 2
        and dst.ndim == 2
        and src.layout == "C"
        and dst.layout == "C"
        and src.dtype == dst.dtype
        and src.dtype in (types.float32, types.float64)
        and all(isinstance(i, types.Integer) for i in (sr, sc, dr, dc))
    ):
        return None
    width = transpose_width(src.dtype.bitwidth // 8)

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        srcty, srty, scty, dstty, drty, dcty = sig.args
        fty = context.get_value_type(srcty.dtype)
        vty = ir.VectorType(fty, width)
        align = context.get_abi_sizeof(fty)
        i32 = ir.IntType(32)

        def row_ptr(arrty: Any, arr: Any, r: Any, rty: Any, c: Any, cty: Any, i: int) -> Any:
            a = context.make_array(arrty)(context, builder, arr)
            ri = builder.add(
                context.cast(builder, r, rty, types.intp), ir.Constant(ir.IntType(64), i)
            )
            ci = context.cast(builder, c, cty, types.intp)
            p = cgutils.get_item_pointer(context, builder, arrty, a, [ri, ci], wraparound=False)
            return builder.bitcast(p, vty.as_pointer())

        rows = [
            builder.load(row_ptr(srcty, args[0], args[1], srty, args[2], scty, i), align=align)
            for i in range(width)
        ]
        s = width // 2
        while s >= 1:
            lo, hi = [], []
            for base in range(0, width, 2 * s):
                lo += [base + t for t in range(s)] + [width + base + t for t in range(s)]
                hi += [base + s + t for t in range(s)] + [width + base + s + t for t in range(s)]
            nxt = list(rows)
            for i in range(width):
                if i % (2 * s) < s:
                    a, b = rows[i], rows[i + s]
                    nxt[i] = builder.shuffle_vector(
                        a, b, ir.Constant(ir.VectorType(i32, width), lo)
                    )
                    nxt[i + s] = builder.shuffle_vector(
                        a, b, ir.Constant(ir.VectorType(i32, width), hi)
                    )
            rows = nxt
            s //= 2
        for j in range(width):
            builder.store(
                rows[j], row_ptr(dstty, args[3], args[4], drty, args[5], dcty, j), align=align
            )
        return context.get_dummy_value()

    return types.void(src, sr, sc, dst, dr, dc), codegen


#: ``transpose_block(src, sr, sc, dst, dr, dc)`` inside ``@njit`` code.
transpose_block: Any = _transpose_block
