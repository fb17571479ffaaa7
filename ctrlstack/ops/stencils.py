"""Explicit heat-diffusion / Jacobi steps: 2-D 5-point and 3-D 7-point, fixed boundary.

One step computes, for every interior point,

    out = u + alpha * (sum of the 2*ndim neighbours - 2*ndim * u)

and copies the boundary ring (the outermost rows/columns/planes) unchanged: a Dirichlet boundary.
With ``alpha = 1 / (2*ndim)`` (the ``jacobi_step`` default) this is exactly the Jacobi relaxation
``out = mean of the neighbours`` for Laplace's equation.  ``alpha`` above ``1 / (2*ndim)`` makes
the explicit scheme unstable, so it is rejected.

Why a kernel: NumPy slicing makes five temporaries per step; one fused pass that reads ``u`` and
writes ``out`` moves 16 bytes per point (float64) and runs near memory bandwidth (perf.md §3).
Rows (2-D) or planes (3-D) are split across threads with ``prange``.

Dask: each step is one ``map_overlap(depth=1, boundary="none")``: a block sees one ghost layer
from each neighbour; blocks on the global edge get no padding, so their outer ring *is* the global
boundary and stays fixed, exactly as in the full-array computation.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np

from ctrlstack.ops._check import as_real_array, as_real_lazy, check_out, overlaps
from ctrlstack.ops._runtime import is_dask, is_xarray, kernel_threads

__all__ = ["heat_diffusion", "jacobi_step"]


@numba.njit(cache=True, nogil=True, parallel=True)
def _step2d(u, out, alpha):  # type: ignore[no-untyped-def]  # pragma: no cover
    n0, n1 = u.shape
    if n0 == 0 or n1 == 0:
        return
    for j in range(n1):
        out[0, j] = u[0, j]
        out[n0 - 1, j] = u[n0 - 1, j]
    for i in numba.prange(1, n0 - 1):
        out[i, 0] = u[i, 0]
        out[i, n1 - 1] = u[i, n1 - 1]
        # 0-based views of the five streams: Numba then emits no negative-index wraparound
        # code for ``j - 1`` and the loop vectorises.
        up = u[i - 1, 1 : n1 - 1]
        down = u[i + 1, 1 : n1 - 1]
        left = u[i, 0 : n1 - 2]
        mid = u[i, 1 : n1 - 1]
        right = u[i, 2:n1]
        dst = out[i, 1 : n1 - 1]
        for j in range(n1 - 2):
            c = mid[j]
            c4 = (c + c) + (c + c)  # 4*c exactly, without widening float32 to float64
            dst[j] = c + alpha * (up[j] + down[j] + left[j] + right[j] - c4)


@numba.njit(cache=True, nogil=True, parallel=True)
def _step3d(u, out, alpha):  # type: ignore[no-untyped-def]  # pragma: no cover
    n0, n1, n2 = u.shape
    if n0 == 0 or n1 == 0 or n2 == 0:
        return
    for i in numba.prange(n0):
        edge_i = i == 0 or i == n0 - 1
        for j in range(n1):
            if edge_i or j == 0 or j == n1 - 1:
                for k in range(n2):
                    out[i, j, k] = u[i, j, k]
                continue
            out[i, j, 0] = u[i, j, 0]
            out[i, j, n2 - 1] = u[i, j, n2 - 1]
            back = u[i - 1, j, 1 : n2 - 1]
            front = u[i + 1, j, 1 : n2 - 1]
            up = u[i, j - 1, 1 : n2 - 1]
            down = u[i, j + 1, 1 : n2 - 1]
            left = u[i, j, 0 : n2 - 2]
            mid = u[i, j, 1 : n2 - 1]
            right = u[i, j, 2:n2]
            dst = out[i, j, 1 : n2 - 1]
            for k in range(n2 - 2):
                c = mid[k]
                c6 = (c + c) + (c + c) + (c + c)
                s = back[k] + front[k] + up[k] + down[k] + left[k] + right[k]
                dst[k] = c + alpha * (s - c6)


# --------------------------------------------------------------------------- validation


def _as_field(u: Any) -> np.ndarray:
    arr = as_real_array(u, "u")  # the one dtype rule (and native byte order)
    if arr.dtype.kind in "iu":
        arr = arr.astype(np.float64)
    if arr.ndim not in (2, 3):
        raise ValueError(f"u must be 2-D (5-point) or 3-D (7-point), got ndim={arr.ndim}")
    return arr


def _check_alpha(alpha: Any, ndim: int) -> float:
    limit = 1.0 / (2 * ndim)
    if alpha is None:
        return limit
    if isinstance(alpha, bool | np.bool_) or not isinstance(alpha, int | float | np.number):
        raise TypeError(f"alpha must be a real number, got {type(alpha).__name__}")
    value = float(alpha)
    if not math.isfinite(value) or value < 0 or value > limit * (1 + 1e-12):
        raise ValueError(
            f"alpha must be in [0, {limit:g}] for a {ndim}-D explicit step (larger values are "
            f"unstable), got {alpha!r}"
        )
    return value


def _check_steps(steps: Any) -> int:
    if isinstance(steps, bool | np.bool_) or not isinstance(steps, int | np.integer):
        raise TypeError(f"steps must be an integer, got {type(steps).__name__}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    return int(steps)


def _prepare_out(u: np.ndarray, out: Any) -> np.ndarray:
    if out is None:
        return np.empty(u.shape, dtype=u.dtype)
    return check_out(out, u.shape, u.dtype)


def _run_steps(
    u: np.ndarray, out: np.ndarray, alpha: float, steps: int, threads: int | None
) -> None:
    """Ping-pong between ``out`` and one scratch buffer so the last step lands in ``out``."""
    if steps == 0:
        np.copyto(out, u)
        return
    kernel = _step2d if u.ndim == 2 else _step3d
    a = u.dtype.type(alpha)
    scratch = np.empty_like(out) if steps > 1 else out
    src = u
    with kernel_threads(threads):
        for k in range(steps):
            dst = out if (steps - 1 - k) % 2 == 0 else scratch
            kernel(src, dst, a)
            src = dst


# --------------------------------------------------------------------------- public


def jacobi_step(
    u: Any, out: Any = None, *, alpha: float | None = None, threads: int | None = None
) -> Any:
    """One explicit diffusion step of ``u`` (2-D 5-point or 3-D 7-point) with a fixed boundary.

    ``alpha`` defaults to ``1 / (2*ndim)`` (pure Jacobi averaging).  ``out`` (same shape and
    float dtype as the result; it may be ``u`` itself) receives the result; integer ``u`` is
    computed in float64.  Dask input gives a lazy dask array, xarray input keeps its labels.
    """
    return heat_diffusion(u, 1, alpha=alpha, out=out, threads=threads)


def heat_diffusion(
    u: Any,
    steps: int,
    *,
    alpha: float | None,
    out: Any = None,
    threads: int | None = None,
) -> Any:
    """``steps`` explicit diffusion steps (see :func:`jacobi_step`); ``u`` is not modified
    unless it is ``out``.

    ``alpha=None`` means ``1 / (2*ndim)``.  NumPy input writes into ``out`` when given (one
    scratch buffer of the same size is allocated for ``steps > 1``).
    """
    steps = _check_steps(steps)
    if is_xarray(u):
        return _heat_xarray(u, steps, alpha, threads)
    if is_dask(u):
        if out is not None:
            raise TypeError("out is not supported for dask input (the result is lazy)")
        return _heat_dask(u, steps, alpha, threads)
    arr = _as_field(u)
    a = _check_alpha(alpha, arr.ndim)
    buf = _prepare_out(arr, out)
    # Kernels see C-contiguous arrays only (one compiled layout; strided stencils are slow).
    src = np.ascontiguousarray(arr)
    # An out overlapping u (jacobi_step(u, u): in place) is computed apart, then copied:
    # every point reads its neighbours' old values.
    if buf.flags.c_contiguous and not overlaps(buf, arr, src):
        _run_steps(src, buf, a, steps, threads)
    else:
        tmp = np.empty(buf.shape, dtype=buf.dtype)
        _run_steps(src, tmp, a, steps, threads)
        np.copyto(buf, tmp)
    return buf


def _heat_dask(u: Any, steps: int, alpha: float | None, threads: int | None) -> Any:
    u = as_real_lazy(u, "u")  # the one dtype rule, without computing
    if u.dtype.kind in "iu":
        u = u.astype(np.float64)
    if u.ndim not in (2, 3):
        raise ValueError(f"u must be 2-D (5-point) or 3-D (7-point), got ndim={u.ndim}")
    a = _check_alpha(alpha, u.ndim)

    def block(b: np.ndarray) -> np.ndarray:
        res = np.empty_like(b)
        _run_steps(b, res, a, 1, threads)
        return res

    for _ in range(steps):
        u = u.map_overlap(block, depth=1, boundary="none", dtype=u.dtype)
    return u


def _heat_xarray(u: Any, steps: int, alpha: float | None, threads: int | None) -> Any:
    import xarray as xr

    dims = list(u.dims)
    return xr.apply_ufunc(
        heat_diffusion,
        u,
        steps,
        input_core_dims=[dims, []],
        output_core_dims=[dims],
        dask="allowed",
        kwargs={"alpha": alpha, "threads": threads},
        keep_attrs=True,
    )
