"""Linear-model hot loops: fused logistic loss + gradient, and a small dense MLP forward pass.

* :func:`logistic_loss_grad` reads ``X`` once: per row it forms ``z = x.w``, the stable
  log-sigmoid loss and ``sigmoid(z) - y``, and adds ``(sigmoid(z) - y) x`` to a per-thread
  gradient partial.  NumPy needs two GEMVs and elementwise temporaries (three passes over ``X``
  plus allocations).  ``exp`` and ``log1p`` are the vectorisable ones of
  :mod:`ctrlstack.ops._vmath` (libm's are scalar calls without SVML).
* :func:`mlp_forward` runs the whole network on blocks of rows: each block's hidden activations
  stay in a per-thread scratch buffer in cache instead of an (n, width) array per layer.  The
  per-layer GEMM is NumPy's BLAS (limited to one thread) and the bias + activation a compiled
  pass over the block while it is hot; blocks are spread over threads by
  :mod:`ctrlstack.ops._tiles` (which says why BLAS is not called from Numba).

Float32 inputs stay float32 in the inner loops (constants come from typed arrays, perf.md trap
5); the logistic loss and gradient partials are accumulated in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numba
import numpy as np
from numba import prange

from ctrlstack.ops import _aligned as aligned
from ctrlstack.ops._check import as_float_array, check_out, overlaps, result_dtype
from ctrlstack.ops._dispatch import is_dask, is_xarray, labelled, unpack_rows, values_of
from ctrlstack.ops._runtime import kernel_threads
from ctrlstack.ops._tiles import per_slot, run_tiles
from ctrlstack.ops._vmath import exp_nonpos, log1p_unit

__all__ = ["ACTIVATIONS", "logistic_loss_grad", "mlp_forward"]

ACTIVATIONS = ("relu", "tanh", "sigmoid", "identity")
_RELU, _TANH, _SIGMOID, _IDENTITY = 0, 1, 2, 3
# reassociation/contraction for vectorised dot products, but no "nnan"/"ninf": NaN in X or w
# must still come out as NaN in the loss and gradient.
_FAST = {"contract", "reassoc", "nsz", "arcp"}
_MLP_BLOCK = 256  # rows per MLP block: 256 x width activations stay in L2/L3
_LOGISTIC_BLOCK = 256  # rows per logistic block: z and the terms stay in L1


# --------------------------------------------------------------------------------------------
# kernels


@numba.njit(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy")
def _logistic_terms(zb, yb, lb, rb):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Per row of a block: loss term ``log(1 + e^z) - y z`` into ``lb``, ``sigmoid(z) - y``
    into ``rb``.  Vectorised (see :mod:`ctrlstack.ops._vmath`: no ``reassoc`` here).

    Stable and branch-free: ``log(1 + e^z) = max(z, 0) + log1p(e^-|z|)`` and ``sigmoid(z)``
    from the same ``e^-|z|``.  A NaN ``z`` gives NaN terms, an infinite one what the formulas
    give (as with libm).
    """
    for b in range(zb.shape[0]):
        z = zb[b]
        e = exp_nonpos(-abs(z))
        e = e if z == z else z  # noqa: PLR0124 - NaN in, NaN out
        y = np.float64(yb[b])
        inv = 1.0 / (1.0 + e)
        p = inv if z >= 0.0 else e * inv
        lb[b] = (max(z, 0.0) + log1p_unit(e)) - y * z
        rb[b] = p - y


@numba.njit(cache=True, parallel=True, fastmath=_FAST, nogil=True)
def _logistic(X, y, w, consts, grad_parts, loss_parts):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Per slot: ``sum_i log(1 + e^z_i) - y_i z_i`` and ``sum_i (sigmoid(z_i) - y_i) x_i``.

    ``grad_parts`` is (slots, >= d), each row on its own cache line (:mod:`._aligned`): the
    gradient partial is rewritten for every row of ``X``, and a misaligned one cost 1.5x.

    Blocks of ``_LOGISTIC_BLOCK`` rows, in three steps so that each is a loop LLVM vectorises:
    the dot products ``z = X w`` (in the data dtype), the loss and residual terms in float64
    (:func:`_logistic_terms`), then the loss sum and ``g += r x`` per row.
    """
    n, d = X.shape
    n_slots = grad_parts.shape[0]
    per = (n + n_slots - 1) // n_slots
    zero = consts[0]
    for t in prange(n_slots):
        g = grad_parts[t]
        zs = np.empty(_LOGISTIC_BLOCK)
        ls = np.empty(_LOGISTIC_BLOCK)
        rs = np.empty(_LOGISTIC_BLOCK)
        loss = 0.0
        hi = min(n, (t + 1) * per)
        for i0 in range(t * per, hi, _LOGISTIC_BLOCK):
            m = min(_LOGISTIC_BLOCK, hi - i0)
            zb = zs[:m]
            for b in range(m):
                z = zero
                for j in range(d):
                    z += X[i0 + b, j] * w[j]
                zb[b] = z
            lb = ls[:m]
            rb = rs[:m]
            _logistic_terms(zb, y[i0 : i0 + m], lb, rb)
            for b in range(m):
                loss += lb[b]
                r = rb[b]
                for j in range(d):
                    g[j] += r * X[i0 + b, j]
        loss_parts[t] = loss


@numba.njit(cache=True, nogil=True)
def _activate(h, bias, act, consts):  # type: ignore[no-untyped-def]  # pragma: no cover
    """``h += bias`` then the activation, in place (h is (rows, width)).

    ``consts = [0, 1]`` in the data dtype keeps float32 arithmetic in float32.
    """
    zero = consts[0]
    one = consts[1]
    for r in range(h.shape[0]):
        row = h[r]
        for c in range(h.shape[1]):
            v = row[c] + bias[c]
            if act == _RELU:
                v = max(v, zero)  # NaN stays NaN, like np.maximum
            elif act == _TANH:
                v = math.tanh(v)
            elif act == _SIGMOID:
                v = one / (one + math.exp(-v))
            row[c] = v


@numba.njit(cache=True, nogil=True)
def _softmax_rows(logits, bias, out, consts):  # type: ignore[no-untyped-def]  # pragma: no cover
    """``out = softmax(logits + bias)`` row by row (max-subtracted, so no overflow)."""
    for r in range(logits.shape[0]):
        row = logits[r]
        o = out[r]
        m = row[0] + bias[0]
        for c in range(row.shape[0]):
            m = max(m, row[c] + bias[c])
        s = consts[0]
        for c in range(row.shape[0]):
            e = math.exp(row[c] + bias[c] - m)
            o[c] = e
            s += e
        for c in range(row.shape[0]):
            o[c] = o[c] / s


# --------------------------------------------------------------------------------------------
# logistic regression


def logistic_loss_grad(
    w: Any,
    X: Any,
    y: Any,
    *,
    l2: float = 0.0,
    out: np.ndarray | None = None,
    threads: int | None = None,
    feature_dim: str | None = None,
) -> tuple[Any, Any]:
    """Mean logistic loss and its gradient for weights ``w`` (d,), data ``X`` (n, d), ``y`` (n,).

    ``loss = mean_i[log(1 + exp(z_i)) - y_i z_i] + l2/2 |w|^2`` with ``z = X w`` (no intercept:
    add a column of ones), ``grad = X^T (sigmoid(z) - y) / n + l2 w``.  ``y`` holds labels in
    [0, 1] (0/1 or probabilities).  The log-sigmoid is evaluated stably for any ``z``.
    ``out`` (d,) receives the gradient.  Float32 inputs give a float32 gradient.

    Dask ``X`` (row chunks) and ``y``: lazy ``(loss, grad)`` from a tree reduction of per-block
    partial sums; nothing is materialised.  xarray ``X`` (sample, feature; ``feature_dim``
    defaults to the last dim): the gradient is a DataArray over the feature dim.
    """
    l2 = _check_l2(l2)
    if is_xarray(X):
        rows = unpack_rows(X, "X", feature_dim)
        loss, grad = logistic_loss_grad(
            values_of(w), rows.data, values_of(y), l2=l2, out=out, threads=threads
        )
        return loss, labelled(grad, (rows.feature,), rows.feature_coords)
    if is_dask(X) or is_dask(y):
        if out is not None:
            raise TypeError("out= is not supported for dask input")
        return _logistic_dask(w, X, y, l2, threads)
    dt = result_dtype(X, w)
    Xa = as_float_array("X", X, 2, dtype=dt)
    wa = as_float_array("w", w, 1, dtype=dt)
    ya = _check_y(y, Xa.shape[0], dt)
    n, d = Xa.shape
    if wa.shape[0] != d:
        raise ValueError(f"w must have length X.shape[1] = {d}, got {wa.shape[0]}")
    if n == 0:
        raise ValueError("X must have at least one row (the loss is a mean over rows)")
    grad = _check_grad_out(out, d, dt)
    loss_sum, grad_sum = _logistic_sums(wa, Xa, ya, threads)
    loss = loss_sum / n + 0.5 * l2 * float(np.dot(wa.astype(np.float64), wa))
    np.divide(grad_sum, n, out=grad_sum)
    if l2:
        grad_sum += l2 * wa
    grad[:] = grad_sum
    return float(loss), grad


def _logistic_sums(
    w: np.ndarray, X: np.ndarray, y: np.ndarray, threads: int | None
) -> tuple[float, np.ndarray]:
    """Un-normalised loss sum and gradient sum (float64) over the rows of ``X``."""
    d = X.shape[1]
    consts = np.array([0, 1], dtype=X.dtype)
    with kernel_threads(threads) as nt:
        n_slots = max(1, min(nt, X.shape[0]))
        grad_parts = aligned.line_rows(n_slots, d)
        loss_parts = np.zeros(n_slots)
        _logistic(X, y, w, consts, grad_parts, loss_parts)
    return float(loss_parts.sum()), grad_parts[:, :d].sum(axis=0)


def _check_l2(l2: Any) -> float:
    if isinstance(l2, bool) or not isinstance(l2, int | float | np.floating | np.integer):
        raise TypeError(f"l2 must be a float, got {type(l2).__name__}")
    if not l2 >= 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    return float(l2)


def _check_y(y: Any, n: int, dt: np.dtype[Any]) -> np.ndarray:
    ya = np.asarray(y)
    if ya.dtype.kind == "b":
        ya = ya.astype(dt)
    ya = as_float_array("y", ya, 1, dtype=dt)
    if ya.shape[0] != n:
        raise ValueError(f"y must have one label per row of X ({n}), got length {ya.shape[0]}")
    if ya.size and not ((ya >= 0) & (ya <= 1)).all():
        raise ValueError("y must hold labels in [0, 1] (0/1 classes or probabilities)")
    return ya


def _check_grad_out(out: np.ndarray | None, d: int, dt: np.dtype[Any]) -> np.ndarray:
    if out is None:
        return np.empty(d, dtype=dt)
    return check_out(out, (d,), dt)


def _logistic_dask(w: Any, X: Any, y: Any, l2: float, threads: int | None) -> tuple[Any, Any]:
    import dask.array as da

    if not is_dask(X):
        X = da.from_array(np.asarray(X), chunks=(-1, -1))
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D, got shape {X.shape}")
    n, d = X.shape
    dt = result_dtype(np.empty(0, X.dtype), np.asarray(w))
    wa = as_float_array("w", w, 1, dtype=dt)
    if wa.shape[0] != d:
        raise ValueError(f"w must have length X.shape[1] = {d}, got {wa.shape[0]}")
    if n == 0:
        raise ValueError("X must have at least one row (the loss is a mean over rows)")
    X = X.rechunk({1: -1})
    ydask = y if is_dask(y) else da.from_array(np.asarray(y), chunks=(X.chunks[0],))
    if ydask.ndim != 1 or ydask.shape[0] != n:
        raise ValueError(f"y must have one label per row of X ({n}), got shape {ydask.shape}")
    ydask = ydask.rechunk((X.chunks[0],))

    def partial(xb: np.ndarray, yb: np.ndarray) -> np.ndarray:
        xa = as_float_array("X", xb, 2, dtype=dt)
        ya = _check_y(yb[:, 0], xa.shape[0], dt)
        loss_sum, grad_sum = _logistic_sums(wa, xa, ya, threads)
        return np.concatenate([[loss_sum], grad_sum])[None, :]

    parts = da.map_blocks(
        partial,
        X,
        ydask[:, None],
        chunks=((1,) * X.numblocks[0], (d + 1,)),
        dtype=np.float64,
    )
    total = parts.sum(axis=0)  # dask's tree reduction over row blocks
    w64 = wa.astype(np.float64)
    loss = total[0] / n + 0.5 * l2 * float(w64 @ w64)
    grad = (total[1:] / n + l2 * w64).astype(dt)
    return loss, grad


# --------------------------------------------------------------------------------------------
# MLP forward


def mlp_forward(
    X: Any,
    weights: Sequence[Any],
    biases: Sequence[Any],
    *,
    activation: str = "relu",
    out: np.ndarray | None = None,
    threads: int | None = None,
    feature_dim: str | None = None,
) -> Any:
    """Class probabilities of a dense MLP: hidden layers ``act(h W + b)``, softmax output.

    ``weights[l]`` is (in, out) with ``weights[0].shape[0] == X.shape[1]`` and each layer's
    ``out`` equal to the next ``in``; ``biases[l]`` is (out,).  ``activation`` is one of
    ``relu``, ``tanh``, ``sigmoid``, ``identity`` (hidden layers only).  Returns (n, n_classes);
    float32 only when ``X`` and all parameters are float32.  ``out`` receives the result.

    Dask ``X`` (row chunks): lazy ``map_blocks``.  xarray ``X`` (sample, feature): a DataArray
    over ``(sample, "class")`` with the sample coordinates.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    act = ACTIVATIONS.index(activation)
    if is_xarray(X):
        rows = unpack_rows(X, "X", feature_dim)
        probs = mlp_forward(
            rows.data, weights, biases, activation=activation, out=out, threads=threads
        )
        return labelled(probs, (rows.sample, "class"), rows.sample_coords)
    dask_in = is_dask(X)
    if not dask_in:
        X = np.asarray(X)
    dt = result_dtype(np.empty(0, X.dtype), *weights, *biases)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D, got shape {X.shape}")
    params = _pack_params(weights, biases, dt, X.shape[1])
    if dask_in:
        if out is not None:
            raise TypeError("out= is not supported for dask input")
        n_out = int(params[0][-1].shape[1])
        Xr = X.rechunk({1: -1})
        return Xr.map_blocks(
            lambda xb: _mlp_numpy(as_float_array("X", xb, 2, dtype=dt), params, act, None, threads),
            chunks=(Xr.chunks[0], (n_out,)),
            dtype=dt,
        )
    Xa = as_float_array("X", X, 2, dtype=dt)
    return _mlp_numpy(Xa, params, act, out, threads)


_Params = tuple[list[np.ndarray], list[np.ndarray]]


def _pack_params(weights: Sequence[Any], biases: Sequence[Any], dt: Any, d_in: int) -> _Params:
    """The layers' weights and biases, validated and converted to ``dt``."""
    if isinstance(weights, np.ndarray) or isinstance(biases, np.ndarray):
        raise TypeError("weights and biases must be sequences (lists) of arrays, one per layer")
    if len(weights) == 0 or len(weights) != len(biases):
        raise ValueError(
            f"weights and biases must be non-empty lists of equal length, got "
            f"{len(weights)} and {len(biases)}"
        )
    ws = [as_float_array(f"weights[{i}]", w, 2, dtype=dt) for i, w in enumerate(weights)]
    bs = [as_float_array(f"biases[{i}]", b, 1, dtype=dt) for i, b in enumerate(biases)]
    prev = d_in
    for i, (w, b) in enumerate(zip(ws, bs, strict=True)):
        if w.shape[0] != prev:
            source = "X.shape[1]" if i == 0 else f"the columns of weights[{i - 1}]"
            raise ValueError(f"weights[{i}] must have {source} = {prev} rows, got shape {w.shape}")
        if w.shape[1] == 0:
            raise ValueError(f"weights[{i}] must have at least one column, got shape {w.shape}")
        if b.shape[0] != w.shape[1]:
            raise ValueError(f"biases[{i}] must have length {w.shape[1]}, got {b.shape[0]}")
        prev = w.shape[1]
    return ws, bs


def _mlp_numpy(
    X: np.ndarray, params: _Params, act: int, out: np.ndarray | None, threads: int | None
) -> np.ndarray:
    ws, bs = params
    n = X.shape[0]
    n_out = ws[-1].shape[1]
    if out is None:
        out = np.empty((n, n_out), dtype=X.dtype)
    else:
        check_out(out, (n, n_out), X.dtype, c_contiguous=True)
    if n == 0:
        return out
    if overlaps(out, X, *ws, *bs):  # later row blocks still read X after earlier ones are out
        np.copyto(out, _mlp_numpy(X, params, act, None, threads))
        return out
    width = max(w.shape[1] for w in ws)
    block = _MLP_BLOCK
    consts = np.array([0, 1], dtype=X.dtype)
    with kernel_threads(threads) as nt:
        # line-aligned: the activation pass rewrites them in vector steps
        scratch = per_slot(
            nt,
            lambda: (aligned.empty(block * width, X.dtype), aligned.empty(block * width, X.dtype)),
        )

        def body(slot: int, b: int) -> None:
            bufs = scratch(slot)
            s = b * block
            e = min(s + block, n)
            nr = e - s
            cur = X[s:e]
            for layer, (W, bias) in enumerate(zip(ws, bs, strict=True)):
                nxt = bufs[layer % 2][: nr * W.shape[1]].reshape(nr, W.shape[1])
                np.matmul(cur, W, out=nxt)
                if layer < len(ws) - 1:
                    _activate(nxt, bias, act, consts)
                else:
                    _softmax_rows(nxt, bias, out[s:e], consts)
                cur = nxt

        run_tiles(-(-n // block), nt, body)
    return out
