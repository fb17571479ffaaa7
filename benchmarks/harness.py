"""Side-by-side timing harness shared by the benchmark scripts.

Timing rules (see docs/benchmarks.md): every implementation of a case runs in the same process,
interleaved over repeats, and we report the median.  Thread counts are set for *both* sides:
``numba.set_num_threads`` for ours, ``threadpoolctl`` (BLAS + OpenMP) for the references.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Case:
    """One kernel measured against its references.

    ``work`` is bytes moved (``kind="bandwidth"``) or flops (``kind="compute"``) per call, used to
    express ours as a fraction of the same-run triad bandwidth or GEMM rate.
    """

    family: str
    name: str
    size: str
    kind: str  # "bandwidth" | "compute" | "latency"
    work: float
    ours: Callable[[], Any]
    references: dict[str, Callable[[], Any]]
    check: Callable[[Any, Any], None] | None = None
    repeat: int = 5
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def median_time(fns: Sequence[Callable[[], Any]], repeat: int) -> list[float]:
    """Interleave ``fns`` ``repeat`` times (after one warm-up each); median seconds per fn.

    The order rotates every repeat, so no implementation always runs right after another one has
    flushed the caches (or left BLAS threads spinning).
    """
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for r in range(repeat):
        order = [(r + k) % len(fns) for k in range(len(fns))]
        for i in order:
            fn = fns[i]
            gc.collect()
            t0 = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def triad_gbs(n: int = 20_000_000, repeat: int = 5) -> float:
    """STREAM-style triad ``a = b + s*c`` with NumPy into a preallocated ``a`` (GB/s, 3 arrays)."""
    b = np.random.default_rng(0).random(n)
    c = np.random.default_rng(1).random(n)
    a = np.empty_like(b)

    def triad() -> None:
        np.multiply(c, 3.0, out=a)
        np.add(a, b, out=a)

    # NumPy's two-pass triad moves 5 arrays' worth; STREAM counts 3.  Use the Numba one-pass
    # version when available, since that is what a fused kernel can reach.
    try:
        import numba

        @numba.njit(parallel=True, fastmath=True, cache=False)
        def _triad(a: Any, b: Any, c: Any, s: float) -> None:  # pragma: no cover - jitted
            for i in numba.prange(a.shape[0]):
                a[i] = b[i] + s * c[i]

        def triad_nb() -> None:
            _triad(a, b, c, 3.0)

        (t,) = median_time([triad_nb], repeat)
    except ImportError:  # pragma: no cover - numba missing
        (t,) = median_time([triad], repeat)
    return 3 * 8 * n / t / 1e9


def gemm_gflops(dtype: Any = np.float64, n: int = 1024, repeat: int = 3) -> float:
    """NumPy matmul rate (GFLOP/s) at the current BLAS thread limit."""
    rng = np.random.default_rng(0)
    a = rng.random((n, n)).astype(dtype)
    b = rng.random((n, n)).astype(dtype)
    (t,) = median_time([lambda: a @ b], repeat)
    return 2 * n**3 / t / 1e9


def set_threads(n: int) -> Any:
    """Limit ours (Numba) and the references (BLAS/OpenMP) to ``n`` threads; returns the limiter."""
    import numba
    from threadpoolctl import threadpool_limits

    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    return threadpool_limits(limits=n)


def fmt_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """Render rows as a Markdown table (what docs/benchmarks.md records)."""
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    head = "| " + " | ".join(c.ljust(widths[c]) for c in columns) + " |"
    sep = "|" + "|".join("-" * (widths[c] + 2) for c in columns) + "|"
    body = [
        "| " + " | ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) + " |" for r in rows
    ]
    return "\n".join([head, sep, *body])
