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

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

__all__ = [
    "MASK_WIDTH",
    "WIDTH",
    "add_record4",
    "argmin_width",
    "below_mask",
    "bits_f64",
    "f64_bits",
    "lowest_bit",
]

#: Values per vector step of :func:`argmin_width`; callers pad their rows to a multiple of it.
WIDTH = 16
#: Values screened by one :func:`below_mask` (one bit each of an int64).
MASK_WIDTH = 64


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
        undef = ir.Constant(vty, ir.Undefined)
        first = builder.insert_element(undef, m, ir.Constant(ir.IntType(32), 0))
        splat = builder.shuffle_vector(
            first, undef, ir.Constant(ir.VectorType(ir.IntType(32), WIDTH), [0] * WIDTH)
        )
        mask = builder.bitcast(builder.fcmp_ordered("==", s, splat), ir.IntType(WIDTH))
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
        undef = ir.Constant(vty, ir.Undefined)
        first = builder.insert_element(undef, b, ir.Constant(ir.IntType(32), 0))
        splat = builder.shuffle_vector(
            first, undef, ir.Constant(ir.VectorType(ir.IntType(32), MASK_WIDTH), [0] * MASK_WIDTH)
        )
        return builder.bitcast(builder.fcmp_ordered("<", v, splat), ir.IntType(64))

    return types.int64(row, off, bound), codegen


#: ``below_mask(row, off, bound)`` inside ``@njit`` code (typed ``Any`` like ``argmin_width``).
below_mask: Any = _below_mask


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
