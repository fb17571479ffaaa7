"""Benchmark cases for the ML kernel families: clustering, distances, linear models.

Exports ``cases(quick=False) -> list[harness.Case]`` and ``compile_probes()`` for the runner
``benchmarks/ops.py``.  Every reference computes the same result as ours (checked once before
timing by ``Case.check``); sizes follow perf.md, scaled so the family runs in about two minutes
for 1 and 2 threads.  ``--quick`` sizes are for smoke runs only.

The thread count is set by the runner (``CTRLSTACK_THREAD_BUDGET`` for ours, threadpoolctl for
the references), so no case passes ``threads=``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from harness import Case

from ctrlstack.ops.clustering import kmeans
from ctrlstack.ops.distances import knn, pairwise_distances
from ctrlstack.ops.linear import logistic_loss_grad, mlp_forward

__all__ = ["cases", "compile_probes"]


def _kmeans_cases(quick: bool) -> list[Case]:
    from sklearn.cluster import KMeans

    n, d, k, iters = (200_000 if quick else 1_000_000), 16, 16, 20
    out = []
    for dtype in (np.float64, np.float32):
        rng = np.random.default_rng(0)
        centres = rng.uniform(-10, 10, size=(k, d))
        X = (centres[rng.integers(k, size=n)] + rng.standard_normal((n, d))).astype(dtype)
        init = X[rng.choice(n, k, replace=False)].copy()

        def ours(X: np.ndarray = X, init: np.ndarray = init) -> Any:
            return kmeans(X, k, init=init, max_iter=iters, tol=0.0)

        def sk(X: np.ndarray = X, init: np.ndarray = init) -> Any:
            return KMeans(k, init=init, n_init=1, algorithm="lloyd", max_iter=iters, tol=0.0).fit(X)

        def check(a: Any, b: Any) -> None:
            agree = float(np.mean(a.labels == b.labels_))
            assert a.n_iter == b.n_iter_, f"n_iter {a.n_iter} vs {b.n_iter_}"
            assert agree >= 0.999, f"labels agree on only {agree:.4%}"
            assert abs(a.inertia - b.inertia_) <= 1e-4 * b.inertia_, (a.inertia, b.inertia_)

        out.append(
            Case(
                family="clustering",
                name=f"kmeans lloyd {np.dtype(dtype).name}",
                size=f"{n // 1000}k x {d}, k={k}, {iters} it",
                kind="compute",
                work=2.0 * n * d * k * (iters + 1),  # GEMM-form flops of the E-steps
                ours=ours,
                references={"sklearn KMeans(lloyd).fit": sk},
                check=check,
                repeat=3,
                notes="equal init, tol=0, so both run exactly max_iter iterations",
                extra={"dtype": np.dtype(dtype).name},
            )
        )
    return out


def _pairwise_cases(quick: bool) -> list[Case]:
    from scipy.spatial.distance import cdist
    from sklearn.metrics import pairwise_distances as sk_pairwise

    m, d = (1500 if quick else 4000), 64
    out = []
    for dtype in (np.float64, np.float32):
        X = np.random.default_rng(1).random((m, d)).astype(dtype)
        buf = np.empty((m, m), dtype=dtype)
        ref_buf = np.empty((m, m))

        def ours(X: np.ndarray = X, buf: np.ndarray = buf) -> Any:
            return pairwise_distances(X, out=buf)

        def blas_trick(X: np.ndarray = X) -> Any:
            sq = np.einsum("ij,ij->i", X, X)
            D = X @ X.T
            D *= -2
            D += sq[:, None]
            D += sq[None, :]
            np.maximum(D, 0, out=D)
            return np.sqrt(D, out=D)

        def sklearn_ref(X: np.ndarray = X) -> Any:
            return sk_pairwise(X)

        def scipy_cdist(X: np.ndarray = X, ref_buf: np.ndarray = ref_buf) -> Any:
            return cdist(X, X, out=ref_buf) if X.dtype == np.float64 else cdist(X, X)

        def check(a: Any, b: Any) -> None:
            tol = 1e-10 if a.dtype == np.float64 else 1e-4
            np.testing.assert_allclose(a, b, atol=tol, rtol=0)

        out.append(
            Case(
                family="distances",
                name=f"pairwise euclidean {np.dtype(dtype).name}",
                size=f"{m} x {m}, d={d}",
                kind="compute",
                work=2.0 * m * m * d,
                ours=ours,
                references={
                    "scipy cdist": scipy_cdist,
                    "sklearn pairwise_distances": sklearn_ref,
                    "numpy BLAS trick": blas_trick,
                },
                check=check,
                repeat=3,
                notes="ours writes into a reused out= buffer (the API's way to avoid trap 1)",
                extra={"dtype": np.dtype(dtype).name},
            )
        )
    return out


def _knn_cases(quick: bool) -> list[Case]:
    from sklearn.neighbors import NearestNeighbors

    m, n, d, k = (1000 if quick else 4000), (5000 if quick else 20_000), 32, 10
    rng = np.random.default_rng(2)
    X = rng.random((m, d))
    Y = rng.random((n, d))
    nn = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(Y)

    def check(a: Any, b: Any) -> None:
        np.testing.assert_allclose(a[0], b[0], atol=1e-10)
        agree = float(np.mean(a[1] == b[1]))
        assert agree >= 0.9999, f"indices agree on only {agree:.4%}"

    return [
        Case(
            family="distances",
            name="knn euclidean float64",
            size=f"{m} queries x {n}, d={d}, k={k}",
            kind="compute",
            work=2.0 * m * n * d,
            ours=lambda: knn(X, Y, k),
            references={"sklearn NearestNeighbors(brute)": lambda: nn.kneighbors(X)},
            check=check,
            repeat=3,
        )
    ]


def _logistic_cases(quick: bool) -> list[Case]:
    from scipy.special import expit

    n, d = (200_000 if quick else 1_000_000), 32
    out = []
    for dtype in (np.float64, np.float32):
        rng = np.random.default_rng(3)
        X = rng.standard_normal((n, d)).astype(dtype)
        w = (rng.standard_normal(d) / np.sqrt(d)).astype(dtype)
        y = (rng.random(n) < 0.5).astype(dtype)
        grad = np.empty(d, dtype=dtype)

        def ours(w: np.ndarray = w, X: np.ndarray = X, y: np.ndarray = y, g: Any = grad) -> Any:
            return logistic_loss_grad(w, X, y, out=g)

        def numpy_ref(w: np.ndarray = w, X: np.ndarray = X, y: np.ndarray = y) -> Any:
            z = X @ w
            loss = float(np.mean(np.logaddexp(0, z) - y * z))
            return loss, X.T @ (expit(z) - y) / len(y)

        def check(a: Any, b: Any) -> None:
            tol = 1e-9 if a[1].dtype == np.float64 else 1e-4
            np.testing.assert_allclose(a[0], b[0], rtol=tol)
            np.testing.assert_allclose(a[1], b[1], atol=tol)

        out.append(
            Case(
                family="linear",
                name=f"logistic loss+grad {np.dtype(dtype).name}",
                size=f"{n // 1000}k x {d}",
                kind="bandwidth",
                work=float(X.nbytes),
                ours=ours,
                references={"numpy (2 GEMV + expit)": numpy_ref},
                check=check,
                repeat=7,
                extra={"dtype": np.dtype(dtype).name},
            )
        )
    return out


def _mlp_cases(quick: bool) -> list[Case]:
    from scipy.special import softmax

    n, d, h, c = (16_384 if quick else 65_536), 256, 512, 10
    out = []
    for dtype in (np.float32, np.float64):
        rng = np.random.default_rng(4)
        X = rng.standard_normal((n, d)).astype(dtype)
        W = [(rng.standard_normal(s) / np.sqrt(s[0])).astype(dtype) for s in ((d, h), (h, c))]
        b = [rng.standard_normal(s).astype(dtype) for s in (h, c)]
        buf = np.empty((n, c), dtype=dtype)

        def ours(X: np.ndarray = X, W: list = W, b: list = b, buf: np.ndarray = buf) -> Any:
            return mlp_forward(X, W, b, out=buf)

        def numpy_ref(X: np.ndarray = X, W: list = W, b: list = b) -> Any:
            hidden = X @ W[0]
            hidden += b[0]
            np.maximum(hidden, 0, out=hidden)
            return softmax(hidden @ W[1] + b[1], axis=1)

        def check(a: Any, b: Any) -> None:
            np.testing.assert_allclose(a, b, atol=1e-10 if a.dtype == np.float64 else 1e-5)

        out.append(
            Case(
                family="linear",
                name=f"mlp forward {np.dtype(dtype).name}",
                size=f"{n // 1024}Ki x {d} -> {h} relu -> {c} softmax",
                kind="compute",
                work=2.0 * n * (d * h + h * c),
                ours=ours,
                references={"numpy (BLAS matmul)": numpy_ref},
                check=check,
                repeat=5,
                extra={"dtype": np.dtype(dtype).name},
            )
        )
    return out


def cases(quick: bool = False) -> list[Case]:
    """All ML cases, smaller and fewer repeats with ``quick``."""
    out = [
        *_kmeans_cases(quick),
        *_pairwise_cases(quick),
        *_knn_cases(quick),
        *_logistic_cases(quick),
        *_mlp_cases(quick),
    ]
    if quick:
        for case in out:
            case.repeat = 2
    return out


def compile_probes() -> dict[str, tuple[str, str]]:
    """``name -> (setup, first_call)``: the call compiles (cold) or loads (cached) one kernel."""
    data = "import numpy as np\nX = np.random.default_rng(0).random((1000, 8))\n"
    return {
        "kmeans_predict": (
            data + "from ctrlstack.ops.clustering import kmeans_predict",
            "kmeans_predict(X, X[:4])",
        ),
        "kmeans": (
            data + "from ctrlstack.ops.clustering import kmeans",
            "kmeans(X, 4, seed=0)",
        ),
        "knn": (
            data + "from ctrlstack.ops.distances import knn",
            "knn(X, X[:100], 3)",
        ),
        "pairwise_distances": (
            data + "from ctrlstack.ops.distances import pairwise_distances",
            "pairwise_distances(X)",
        ),
        "logistic_loss_grad": (
            data + "from ctrlstack.ops.linear import logistic_loss_grad",
            "logistic_loss_grad(np.ones(8), X, np.ones(1000))",
        ),
        "mlp_forward": (
            data + "from ctrlstack.ops.linear import mlp_forward",
            "mlp_forward(X, [np.ones((8, 4))], [np.ones(4)])",
        ),
    }
