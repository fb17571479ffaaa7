"""The NaN helpers of ctrlstack.ops._simd against NumPy, and the property they exist for."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from typing import Any

import numba
import numpy as np
import pytest

from ctrlstack.ops._simd import MASK_WIDTH, nan_mask, nan_zero


@numba.njit
def _mask_bits(row: np.ndarray, off: int) -> np.ndarray:
    m = nan_mask(row, off)
    out = np.zeros(MASK_WIDTH, dtype=np.bool_)
    for i in range(MASK_WIDTH):
        out[i] = (m >> i) & 1
    return out


@numba.njit
def _zeroed(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = nan_zero(x[i])
    return out


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_nan_mask_marks_nans_and_only_nans(dtype: Any) -> None:
    row = np.arange(3 * MASK_WIDTH, dtype=dtype)
    row[[0, 5, 63, 64, 100, 191]] = np.nan
    row[7] = np.copysign(np.nan, -1.0)
    row[[8, 9]] = [np.inf, -np.inf]  # infinities are numbers here
    for off in (0, 1, MASK_WIDTH, 2 * MASK_WIDTH - 1):
        np.testing.assert_array_equal(_mask_bits(row, off), np.isnan(row[off : off + MASK_WIDTH]))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_nan_zero_keeps_every_number_bit_for_bit(dtype: Any) -> None:
    x = np.array([np.nan, -np.nan, 1.5, -0.0, 0.0, np.inf, -np.inf, 1e-310, -2.0], dtype=dtype)
    x[1] = np.copysign(np.nan, -1.0)
    got = _zeroed(x)
    expected = np.where(np.isnan(x), dtype(0.0), x)
    assert got.dtype == x.dtype
    np.testing.assert_array_equal(got.view(f"u{x.itemsize}"), expected.view(f"u{x.itemsize}"))


_ASM_PROBE = """
import json, numba
from ctrlstack.ops._simd import nan_zero

def steps(clean):
    def f(x, y, o, scale):
        s = 0.0
        c = 0
        for i in range(4):
            v = x[i]
            u = y[i]
            s += clean(v) - clean(u)
            c += int(v == v) - int(u == u)
            o[i] = s * scale[numba.uint64(c)]
        return s
    return f

select = numba.njit(inline="always")(lambda v: v if v == v else 0.0)
sig = "float64(float64[::1], float64[::1], float64[::1], float64[::1])"
out = {}
for name, clean in (("select", select), ("nan_zero", nan_zero)):
    f = numba.njit(sig)(steps(clean))
    body = f.inspect_asm(f.signatures[0]).split(".Lfunc_end0")[0]
    out[name] = [ln.split()[0] for ln in body.splitlines() if ln.strip().startswith("j")]
print(json.dumps(out))
"""


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="reads x86 assembly")
def test_nan_zero_compiles_without_a_branch_where_a_select_does_not(tmp_path: Any) -> None:
    """Why nan_zero exists, checked on the compiler: for a Zen 3 target (the AVX2 machines this
    project runs on) LLVM compiles ``v if v == v else 0.0`` in the running-sum walk to a
    compare and a jump per value; with nan_zero the same loop has no conditional jump.

    Compiled only (eager signature, never run), in a child process, because the target CPU
    is chosen per process; so this runs on any x86-64 host.
    """
    cache = tmp_path / "numba-cache"  # code for another CPU goes nowhere it could be loaded
    env = dict(
        os.environ, NUMBA_CPU_NAME="znver3", NUMBA_CPU_FEATURES="", NUMBA_CACHE_DIR=str(cache)
    )
    proc = subprocess.run(
        [sys.executable, "-c", _ASM_PROBE],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    jumps = json.loads(proc.stdout.strip().splitlines()[-1])
    conditional = {k: [j for j in v if j != "jmp"] for k, v in jumps.items()}
    assert conditional["select"], jumps  # the compiler behaviour that motivates nan_zero
    assert conditional["nan_zero"] == [], jumps
    assert not cache.exists() or not any(cache.rglob("*.nbc"))  # nothing was run or cached
