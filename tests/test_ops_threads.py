"""Parallel kernels called from several Python threads at once must neither abort nor hang.

This is what a Dask worker with ``nthreads > 1`` does.  With Numba's ``workqueue`` layer the
process aborts; ``ctrlstack.ops._runtime`` picks a thread-safe layer at import.  Every kernel
family is run from four threads at once (each asking for 2 Numba threads, i.e. oversubscribed
on purpose) and each result must equal the one computed alone.  The scientific families
(histograms, stencils, moving windows, grouped reductions) are included when their modules are
present.  A ``slow`` test repeats this inside a real multi-threaded ``distributed`` worker.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple, is_dataclass
from typing import Any

import numpy as np
import pytest

from ctrlstack.ops.clustering import kmeans, kmeans_predict
from ctrlstack.ops.distances import knn, pairwise_distances
from ctrlstack.ops.linear import logistic_loss_grad, mlp_forward

N_CALLERS = 4
ROUNDS = 3
TIMEOUT_S = 120


def _flatten(result: Any) -> list[np.ndarray]:
    if is_dataclass(result):
        result = astuple(result)  # type: ignore[arg-type]
    if isinstance(result, tuple | list):
        return [a for item in result for a in _flatten(item)]
    return [np.asarray(result)]


def assert_same(got: Any, expected: Any) -> None:
    g, e = _flatten(got), _flatten(expected)
    assert len(g) == len(e)
    for a, b in zip(g, e, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=0, equal_nan=True)


def _ml_calls() -> dict[str, Callable[[], Any]]:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((4000, 8))
    Y = rng.standard_normal((300, 8))
    w = rng.standard_normal(8)
    y = (rng.random(4000) < 0.5).astype(np.float64)
    weights = [rng.standard_normal((8, 16)), rng.standard_normal((16, 3))]
    biases = [np.zeros(16), np.zeros(3)]
    return {
        "kmeans": lambda: kmeans(X[:2000], 5, init=X[:5], max_iter=10, threads=2),
        "kmeans_predict": lambda: kmeans_predict(X, Y[:6], threads=2),
        "pairwise_distances": lambda: pairwise_distances(X[:500], Y, threads=2),
        "knn": lambda: knn(X[:500], Y, 4, threads=2),
        "logistic_loss_grad": lambda: logistic_loss_grad(w, X, y, threads=2),
        "mlp_forward": lambda: mlp_forward(X, weights, biases, threads=2),
    }


def _sci_calls() -> dict[str, Callable[[], Any]]:
    """Calls into the scientific families that exist in this checkout (owned by another team)."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal(20_000)
    a[::97] = np.nan
    u = rng.random((128, 96))
    labels = rng.integers(0, 9, size=20_000)
    calls: dict[str, Callable[[], Any]] = {}
    if importlib.util.find_spec("ctrlstack.ops.histograms"):
        from ctrlstack.ops.histograms import histogram

        calls["histogram"] = lambda: histogram(np.nan_to_num(a), bins=32, threads=2)
    if importlib.util.find_spec("ctrlstack.ops.stencils"):
        from ctrlstack.ops.stencils import jacobi_step

        calls["jacobi_step"] = lambda: jacobi_step(u, threads=2)
    if importlib.util.find_spec("ctrlstack.ops.moving"):
        from ctrlstack.ops.moving import moving_mean

        calls["moving_mean"] = lambda: moving_mean(a, 25, threads=2)
    if importlib.util.find_spec("ctrlstack.ops.grouped"):
        from ctrlstack.ops.grouped import group_sum

        calls["group_sum"] = lambda: group_sum(a, labels, 9, threads=2)
    return calls


def _all_calls() -> dict[str, Callable[[], Any]]:
    return {**_ml_calls(), **_sci_calls()}


def test_every_kernel_from_several_python_threads_at_once() -> None:
    calls = _all_calls()
    expected = {name: fn() for name, fn in calls.items()}  # alone (also compiles)
    jobs = [(name, fn) for _ in range(ROUNDS) for name, fn in calls.items()]
    with ThreadPoolExecutor(max_workers=N_CALLERS) as pool:
        futures = [(name, pool.submit(fn)) for name, fn in jobs for _ in range(N_CALLERS // 2)]
        for name, fut in futures:
            assert_same(fut.result(timeout=TIMEOUT_S), expected[name])


def test_thread_budget_is_restored_after_each_call() -> None:
    import numba

    before = numba.get_num_threads()
    pairwise_distances(np.ones((10, 2)), threads=1)
    logistic_loss_grad(np.ones(2), np.ones((10, 2)), np.ones(10), threads=1)
    assert numba.get_num_threads() == before


def _worker_check(names: list[str]) -> list[str]:
    """Runs inside a worker thread: every named call must equal its value computed there alone."""
    calls = _all_calls()
    with ThreadPoolExecutor(max_workers=N_CALLERS) as pool:
        alone = {n: calls[n]() for n in names}
        futures = {n: pool.submit(calls[n]) for n in names}
        for n, fut in futures.items():
            assert_same(fut.result(timeout=TIMEOUT_S), alone[n])
    return names


@pytest.mark.slow
def test_kernels_inside_a_multithreaded_distributed_worker() -> None:
    distributed = pytest.importorskip("distributed")
    da = pytest.importorskip("dask.array")
    cloudpickle = pytest.importorskip("cloudpickle")
    # the worker cannot import this test module by name: ship its functions by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    names = list(_all_calls())
    rng = np.random.default_rng(2)
    X = rng.standard_normal((6000, 6))
    Y = rng.standard_normal((50, 6))
    w = rng.standard_normal(6)
    y = (rng.random(6000) < 0.5).astype(np.float64)
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        # plain tasks, two at a time on the worker's two threads, each running kernels from
        # more Python threads again
        futures = [client.submit(_worker_check, names, pure=False) for _ in range(4)]
        for fut in futures:
            assert fut.result(timeout=300) == names
        # the dask paths: blocks run concurrently on the worker's threads
        Xd = da.from_array(X, chunks=(1000, 6))
        d, i = knn(Xd, Y, 3)
        ed, ei = knn(X, Y, 3)
        got_d, got_i = client.compute([d, i], sync=True)
        np.testing.assert_array_equal(got_i, ei)
        np.testing.assert_allclose(got_d, ed, rtol=1e-12)
        loss, grad = logistic_loss_grad(w, Xd, y)
        got_loss, got_grad = client.compute([loss, grad], sync=True)
        el, eg = logistic_loss_grad(w, X, y)
        np.testing.assert_allclose(float(got_loss), el, rtol=1e-12)
        np.testing.assert_allclose(got_grad, eg, rtol=1e-10, atol=1e-14)
        res = kmeans(Xd, 4, init=X[:4], tol=0.0)
        ref = kmeans(X, 4, init=X[:4], tol=0.0)
        np.testing.assert_allclose(res.centers, ref.centers, atol=1e-10)
        np.testing.assert_array_equal(client.compute(res.labels, sync=True), ref.labels)


def test_work_splits_are_exact_and_cover_every_value() -> None:
    """Task boundaries: integer floor(i * n / parts), contiguous, covering [0, n) exactly."""
    from ctrlstack.ops._check import row_segments, split

    for n, parts in ((10, 3), (7, 7), (5, 9), (0, 4), (2**62 + 1, 3)):
        b = split(n, parts)
        assert b[0] == 0
        assert b[-1] == n
        assert (np.diff(b) >= 0).all()
        if n < 2**53:
            np.testing.assert_array_equal(b, np.linspace(0, n, b.size).astype(np.int64))
    rows, starts, stops, bounds = row_segments(1, 1_000_000, 3, 1 << 16)
    assert starts[0] == 0
    assert stops[-1] == 1_000_000
    np.testing.assert_array_equal(starts[1:], stops[:-1])
    assert bounds[0] == 0
    assert bounds[-1] == rows.shape[0] == 3


@pytest.mark.parametrize("bad", ["2", 2.5, True, None.__class__])
def test_threads_must_be_an_integer(bad: Any) -> None:
    """``threads`` was taken through ``int()``: "2", 2.5 and True passed silently."""
    from ctrlstack.ops import group_mean, moving_mean

    v = np.arange(50.0)
    for call in (
        lambda: moving_mean(v, 5, threads=bad),
        lambda: group_mean(v, np.zeros(50, dtype=np.int64), 1, threads=bad),
        lambda: pairwise_distances(v.reshape(10, 5), threads=bad),
        lambda: knn(v.reshape(10, 5), k=2, threads=bad),
    ):
        with pytest.raises(TypeError, match="threads must be an integer"):
            call()
