"""Precompile every kernel into Numba's on-disk cache: :func:`ctrlstack.ops.warm`.

Why: a ``parallel=True`` kernel costs seconds to compile cold and ~20 ms to load from the cache
(perf.md).  Every kernel is compiled with ``cache=True``, and workers of a cluster on one machine
(or on a shared file system) share that cache, so one ``warm()`` before the cluster starts (the
``ctrlstack ops warm`` command, or a stack build step) makes each worker's first call a cache
load instead of a compile.

Each op is warmed by calling its public function on tiny inputs in float64 and float32 (the
dtypes the kernels are specialised for; integer inputs are converted to float64 by the ML
families) in the array shapes the kernels see: 1-D and 2-D for the moving-window, grouped and
histogram kernels, 2-D and 3-D for the stencils.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

__all__ = ["OPS", "warm"]

_DTYPES = (np.float64, np.float32)


def _rows(dt: type) -> np.ndarray:
    return np.random.default_rng(0).random((64, 4)).astype(dt)


def _series(dt: type) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.random(200).astype(dt), rng.random((3, 200)).astype(dt)]


def _warm_kmeans() -> None:
    from ctrlstack.ops.clustering import kmeans

    for dt in _DTYPES:
        X = _rows(dt)
        kmeans(X, 3, init=X[:3], max_iter=2, threads=1)
        kmeans(X, 3, seed=0, max_iter=2)


def _warm_kmeans_predict() -> None:
    from ctrlstack.ops.clustering import kmeans_predict

    for dt in _DTYPES:
        X = _rows(dt)
        kmeans_predict(X, X[:3])


def _warm_pairwise() -> None:
    from ctrlstack.ops.distances import METRICS, pairwise_distances

    for dt in _DTYPES:
        X = _rows(dt)
        for metric in METRICS:
            pairwise_distances(X, metric=metric)
            pairwise_distances(X, X[:5], metric=metric)


def _warm_knn() -> None:
    from ctrlstack.ops.distances import knn

    for dt in _DTYPES:
        X = _rows(dt)
        knn(X, X[:10], 2)  # finite rows: the register-blocked search
        knn(X, k=2, metric="cosine")
        bad = X.copy()
        bad[0, 0] = np.nan  # a non-finite row: the BLAS tiles and the direct recomputation
        knn(bad, X[:10], 2)
        knn(bad, k=2, metric="cosine")


def _warm_logistic() -> None:
    from ctrlstack.ops.linear import logistic_loss_grad

    for dt in _DTYPES:
        X = _rows(dt)
        logistic_loss_grad(np.ones(4, dt), X, np.ones(64, dt))


def _warm_mlp() -> None:
    from ctrlstack.ops.linear import mlp_forward

    for dt in _DTYPES:
        X = _rows(dt)
        mlp_forward(X, [np.ones((4, 3), dt), np.ones((3, 2), dt)], [np.ones(3, dt), np.ones(2, dt)])


def _warm_histogram() -> None:
    from ctrlstack.ops.histograms import histogram

    for dt in _DTYPES:
        for a in _series(dt):
            histogram(a, 8)
            histogram(a, 8, weights=a)
            histogram(a, np.linspace(0, 1, 9))


def _warm_histogram2d() -> None:
    from ctrlstack.ops.histograms import histogram2d

    for dt in _DTYPES:
        a = _series(dt)[0]
        histogram2d(a, a[::-1].copy(), 8)
        histogram2d(a, a[::-1].copy(), 8, weights=a)


def _warm_stencils() -> None:
    from ctrlstack.ops.stencils import heat_diffusion, jacobi_step

    for dt in _DTYPES:
        for shape in ((16, 16), (8, 8, 8)):
            u = np.ones(shape, dt)
            jacobi_step(u)
            heat_diffusion(u, 2, alpha=None)


def _moving(name: str) -> Callable[[], None]:
    def run() -> None:
        from ctrlstack.ops import moving

        fn = getattr(moving, name)
        for dt in _DTYPES:
            one, rows = _series(dt)
            fn(one, 5)  # a short row: the one-task path
            fn(rows, 5, threads=2)  # the parallel driver (several workers), whatever the budget ...
            fn(rows, 5, threads=1)  # ... and the serial one

    return run


def _grouped(name: str) -> Callable[[], None]:
    def run() -> None:
        from ctrlstack.ops import grouped

        fn = getattr(grouped, name)
        labels = np.arange(200) % 7
        for dt in _DTYPES:
            one, rows = _series(dt)
            fn(one, labels, 7)  # one task: the serial driver
            fn(rows, labels, 7, threads=2)  # the parallel driver, whatever the thread budget
            fn(rows, labels, 7, threads=1)

    return run


#: public op name -> the tiny calls that compile (or load) its kernels
OPS: dict[str, Callable[[], None]] = {
    "kmeans": _warm_kmeans,
    "kmeans_predict": _warm_kmeans_predict,
    "pairwise_distances": _warm_pairwise,
    "knn": _warm_knn,
    "logistic_loss_grad": _warm_logistic,
    "mlp_forward": _warm_mlp,
    "histogram": _warm_histogram,
    "histogram2d": _warm_histogram2d,
    "jacobi_step": _warm_stencils,
    **{f"moving_{s}": _moving(f"moving_{s}") for s in ("sum", "mean", "var", "std", "min", "max")},
    **{f"group_{s}": _grouped(f"group_{s}") for s in ("sum", "mean", "var", "min", "max", "count")},
}
_ALIASES = {"assign": "kmeans_predict", "heat_diffusion": "jacobi_step"}


def warm(names: Iterable[str] | None = None) -> list[str]:
    """Compile (or load from Numba's on-disk cache) the kernels behind the named public ops.

    ``names``: public op names (``"kmeans"``, ``"moving_std"``, ...; ``None`` means all of
    them).  Returns the names warmed, in order, each once.  Unknown names raise ``ValueError``
    before anything is compiled.  Safe to call repeatedly: a second call only loads the cache.
    """
    if isinstance(names, str):
        raise TypeError("names must be an iterable of op names, not a single string")
    wanted = list(OPS) if names is None else [_ALIASES.get(n, n) for n in names]
    unknown = [n for n in wanted if n not in OPS]
    if unknown:
        raise ValueError(f"unknown op name(s) {unknown}; known: {sorted(OPS)}")
    done: list[str] = []
    for name in wanted:
        if name not in done:
            OPS[name]()
            done.append(name)
    return done
