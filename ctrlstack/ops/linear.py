"""Linear-model hot loops: fused logistic loss + gradient, and a small dense MLP forward pass.

* :func:`logistic_loss_grad` reads ``X`` once: per row it forms ``z = x.w``, the stable
  log-sigmoid loss and ``sigmoid(z) - y``, and adds ``(sigmoid(z) - y) x`` to a per-thread
  gradient partial.  NumPy needs two GEMVs and elementwise temporaries (three passes over ``X``
  plus allocations); this is why the fused loop wins although ``exp`` is scalar here (no SVML).
* :func:`mlp_forward` runs the whole network on blocks of rows: each block's hidden activations
  stay in a per-thread scratch buffer in cache instead of an (n, width) array per layer, and the
  per-layer GEMM is BLAS limited to one thread inside ``prange`` (perf.md trap 3).

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

from ctrlstack.ops._ml_common import (
    as_float_array,
    result_dtype,
    single_threaded_blas,
)
from ctrlstack.ops._runtime import is_dask, is_xarray, kernel_threads

__all__ = ["ACTIVATIONS", "logistic_loss_grad", "mlp_forward"]

ACTIVATIONS = ("relu", "tanh", "sigmoid", "identity")
_RELU, _TANH, _SIGMOID, _IDENTITY = 0, 1, 2, 3
# reassociation/contraction for vectorised dot products, but no "nnan"/"ninf": NaN in X or w
# must still come out as NaN in the loss and gradient.
_FAST = {"contract", "reassoc", "nsz", "arcp"}
_MLP_BLOCK = 128  # rows per MLP block: 128 x width activations stay in L2


# --------------------------------------------------------------------------------------------
# kernels


@numba.njit(cache=True, parallel=True, fastmath=_FAST, nogil=True)
def _logistic(X, y, w, consts, grad_parts, loss_parts):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Per slot: ``sum_i log(1 + e^z_i) - y_i z_i`` and ``sum_i (sigmoid(z_i) - y_i) x_i``."""
    n, d = X.shape
    n_slots = grad_parts.shape[0]
    per = (n + n_slots - 1) // n_slots
    zero = consts[0]
    one = consts[1]
    for t in prange(n_slots):
        g = grad_parts[t]
        loss = 0.0
        for i in range(t * per, min(n, (t + 1) * per)):
            z = zero
            for j in range(d):
                z += X[i, j] * w[j]
            # stable and branch-free (labels are random, a branch would mispredict):
            # log(1 + e^z) = max(z, 0) + log1p(e^-|z|), sigmoid(z) from the same e^-|z|
            e = math.exp(-abs(z))
            l_i = max(z, zero) + math.log1p(e)
            inv = one / (one + e)
            p = inv if z >= zero else e * inv
            yi = y[i]
            loss += l_i - yi * z
            r = p - yi
            for j in range(d):
                g[j] += r * X[i, j]
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


@numba.njit(cache=True, nogil=True)
def _mlp_block(  # type: ignore[no-untyped-def]  # pragma: no cover
    xb, w_flat, w_off, w_shape, b_flat, b_off, act, consts, buf0, buf1, ob
):  # pragma: no cover
    """Forward pass of one row block ``xb`` into ``ob`` using ping-pong buffers."""
    nr = xb.shape[0]
    n_layers = w_shape.shape[0]
    a, c = w_shape[0, 0], w_shape[0, 1]
    cur = buf0[: nr * c].reshape((nr, c))
    np.dot(xb, w_flat[w_off[0] : w_off[0] + a * c].reshape((a, c)), cur)
    for layer in range(1, n_layers):
        _activate(cur, b_flat[b_off[layer - 1] : b_off[layer - 1] + c], act, consts)
        a, c = w_shape[layer, 0], w_shape[layer, 1]
        W = w_flat[w_off[layer] : w_off[layer] + a * c].reshape((a, c))
        nxt = (buf1 if layer % 2 == 1 else buf0)[: nr * c].reshape((nr, c))
        np.dot(cur, W, nxt)
        cur = nxt
    last = n_layers - 1
    _softmax_rows(cur, b_flat[b_off[last] : b_off[last] + c], ob, consts)


@numba.njit(cache=True, parallel=True, nogil=True)
def _mlp(X, w_flat, w_off, w_shape, b_flat, b_off, act, consts, scratch, out):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Forward pass per row block; ``scratch[t, 0/1]`` are slot ``t``'s ping-pong buffers.

    The block body is a separate function: Numba's parfor array analysis cannot follow the
    per-layer reshapes inside ``prange``.
    """
    n = X.shape[0]
    n_slots = scratch.shape[0]
    block = _MLP_BLOCK
    n_blocks = (n + block - 1) // block
    for t in prange(n_slots):
        for b in range(t, n_blocks, n_slots):
            s = b * block
            e = min(s + block, n)
            _mlp_block(
                X[s:e],
                w_flat,
                w_off,
                w_shape,
                b_flat,
                b_off,
                act,
                consts,
                scratch[t, 0],
                scratch[t, 1],
                out[s:e],
            )


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
) -> tuple[Any, Any]:
    """Mean logistic loss and its gradient for weights ``w`` (d,), data ``X`` (n, d), ``y`` (n,).

    ``loss = mean_i[log(1 + exp(z_i)) - y_i z_i] + l2/2 |w|^2`` with ``z = X w`` (no intercept:
    add a column of ones), ``grad = X^T (sigmoid(z) - y) / n + l2 w``.  ``y`` holds labels in
    [0, 1] (0/1 or probabilities).  The log-sigmoid is evaluated stably for any ``z``.
    ``out`` (d,) receives the gradient.  Float32 inputs give a float32 gradient.

    Dask ``X`` (row chunks) and ``y``: lazy ``(loss, grad)`` from a tree reduction of per-block
    partial sums; nothing is materialised.
    """
    l2 = _check_l2(l2)
    if is_xarray(X):
        raise TypeError("logistic_loss_grad takes NumPy or dask arrays; pass DataArray.data")
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
        grad_parts = np.zeros((n_slots, d))
        loss_parts = np.zeros(n_slots)
        _logistic(X, y, w, consts, grad_parts, loss_parts)
    return float(loss_parts.sum()), grad_parts.sum(axis=0)


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
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a NumPy array, got {type(out).__name__}")
    if out.shape != (d,) or out.dtype != dt:
        raise ValueError(f"out must be a {dt} array of shape ({d},), got {out.dtype} {out.shape}")
    return out


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
) -> Any:
    """Class probabilities of a dense MLP: hidden layers ``act(h W + b)``, softmax output.

    ``weights[l]`` is (in, out) with ``weights[0].shape[0] == X.shape[1]`` and each layer's
    ``out`` equal to the next ``in``; ``biases[l]`` is (out,).  ``activation`` is one of
    ``relu``, ``tanh``, ``sigmoid``, ``identity`` (hidden layers only).  Returns (n, n_classes);
    float32 only when ``X`` and all parameters are float32.  ``out`` receives the result.

    Dask ``X`` (row chunks): lazy ``map_blocks``; xarray: pass ``DataArray.data``.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    act = ACTIVATIONS.index(activation)
    if is_xarray(X):
        raise TypeError("mlp_forward takes NumPy or dask arrays; pass DataArray.data")
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
        n_out = int(params[2][-1, 1])
        Xr = X.rechunk({1: -1})
        return Xr.map_blocks(
            lambda xb: _mlp_numpy(as_float_array("X", xb, 2, dtype=dt), params, act, None, threads),
            chunks=(Xr.chunks[0], (n_out,)),
            dtype=dt,
        )
    Xa = as_float_array("X", X, 2, dtype=dt)
    return _mlp_numpy(Xa, params, act, out, threads)


_Params = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _pack_params(weights: Sequence[Any], biases: Sequence[Any], dt: Any, d_in: int) -> _Params:
    """Flatten the layers into one weight and one bias buffer plus offsets and shapes.

    Numba cannot take a list of differently shaped arrays cheaply; flat buffers can be sliced
    and reshaped inside the kernel without copies.
    """
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
    w_off = np.cumsum([0] + [w.size for w in ws])[:-1].astype(np.int64)
    b_off = np.cumsum([0] + [b.size for b in bs])[:-1].astype(np.int64)
    w_shape = np.array([w.shape for w in ws], dtype=np.int64)
    w_flat = np.concatenate([w.ravel() for w in ws])
    b_flat = np.concatenate(bs)
    return w_flat, w_off, w_shape, b_flat, b_off


def _mlp_numpy(
    X: np.ndarray, params: _Params, act: int, out: np.ndarray | None, threads: int | None
) -> np.ndarray:
    w_flat, w_off, w_shape, b_flat, b_off = params
    n = X.shape[0]
    n_out = int(w_shape[-1, 1])
    if out is None:
        out = np.empty((n, n_out), dtype=X.dtype)
    elif not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a NumPy array, got {type(out).__name__}")
    elif out.shape != (n, n_out) or out.dtype != X.dtype or not out.flags.c_contiguous:
        raise ValueError(
            f"out must be a C-contiguous {X.dtype} array of shape {(n, n_out)}, "
            f"got {out.dtype} {out.shape}"
        )
    if n == 0:
        return out
    width = int(w_shape[:, 1].max())
    with kernel_threads(threads) as nt, single_threaded_blas():
        n_slots = max(1, min(nt, math.ceil(n / _MLP_BLOCK)))
        scratch = np.empty((n_slots, 2, _MLP_BLOCK * width), dtype=X.dtype)
        consts = np.array([0, 1], dtype=X.dtype)
        _mlp(X, w_flat, w_off, w_shape, b_flat, b_off, act, consts, scratch, out)
    return out
