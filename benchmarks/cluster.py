"""Pinned local cluster (TLS, as ctrlstack runs it) vs bare ``distributed.LocalCluster`` (tcp).

Every ctrlstack cluster speaks mutual TLS (issue 6), so the comparison that matters to a user is
ctrlstack's cluster *with* TLS against the plain ``LocalCluster`` they would otherwise start.
TLS's own cost is reported separately: bare ``LocalCluster`` over tcp vs the same
``LocalCluster`` with a ``Security`` built from ctrlstack's per-cluster
:class:`~ctrlstack.deploy.security.Credentials` (fresh ones for every start, as a launch does).

Measured, alternating the three clusters in every repeat (medians reported):

* start and close time of an in-process cluster of the same shape (workers × 1 thread);
* task overhead: ``client.map`` of N no-op tasks + ``gather`` (per-task milliseconds);
* for information, ``ctrlstack.launch`` → ready → ``stop`` through a supervisor process, which
  adds a Python start-up that a bare LocalCluster in the caller does not pay.

Usage: ``python benchmarks/cluster.py [--repeat 5] [--tasks 10000] [--workers 2]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import dask
import distributed
from distributed import Client, LocalCluster, SpecCluster

import ctrlstack
from ctrlstack.deploy.local import PinnedLocalCluster
from ctrlstack.deploy.security import Credentials
from ctrlstack.topology.discover import discover

Make = Callable[[], SpecCluster]


def noop(x: int) -> int:
    return x


def _fresh_security(tmp: str) -> Any:
    """New credentials in a fresh directory, as every ctrlstack launch creates them."""
    return Credentials.create(tempfile.mkdtemp(dir=tmp)).security()


def start_close(make: Make) -> tuple[float, float]:
    t0 = time.perf_counter()
    cluster = make()
    client = Client(cluster)
    client.wait_for_workers(len(cluster.worker_spec))
    t1 = time.perf_counter()
    client.close()
    cluster.close()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def overhead(make: Make, tasks: int) -> float:
    cluster = make()
    with Client(cluster) as client:
        client.wait_for_workers(len(cluster.worker_spec))
        client.gather(client.map(noop, range(200), pure=False))  # warm-up
        t0 = time.perf_counter()
        client.gather(client.map(noop, range(tasks), pure=False))
        elapsed = time.perf_counter() - t0
    cluster.close()
    return elapsed / tasks * 1e3


def launch_stop(workers: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as state, dask.config.set({"ctrlstack.state-dir": state}):
        t0 = time.perf_counter()
        handle = ctrlstack.launch("local", name="bench", workers=workers, threads=1)
        handle.wait_for_workers(workers)
        t1 = time.perf_counter()
        handle.stop()
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=min(2, len(os.sched_getaffinity(0))))
    args = parser.parse_args()
    w = args.workers
    machine = discover()
    tmp = tempfile.mkdtemp(prefix="ctrlstack-bench-")

    def bare() -> LocalCluster:
        return LocalCluster(n_workers=w, threads_per_worker=1, processes=True,
                            dashboard_address="127.0.0.1:0", host="127.0.0.1")  # fmt: skip

    def bare_tls() -> LocalCluster:
        return LocalCluster(n_workers=w, threads_per_worker=1, processes=True,
                            dashboard_address="127.0.0.1:0", host="127.0.0.1",
                            protocol="tls", security=_fresh_security(tmp))  # fmt: skip

    def pinned() -> PinnedLocalCluster:
        return PinnedLocalCluster(
            machine, workers=w, threads=1, dashboard=True, security=_fresh_security(tmp),
            silence_logs=logging.WARNING,  # as LocalCluster's default and the supervisor's
        )  # fmt: skip

    makers: dict[str, Make] = {"bare": bare, "tls": bare_tls, "pin": pinned}
    print(f"# cluster benchmark: {platform.processor() or platform.machine()}, "
          f"{len(os.sched_getaffinity(0))} CPUs allowed, Linux {platform.release()}, "
          f"Python {platform.python_version()}, distributed {distributed.__version__}")  # fmt: skip
    print(f"# {w} workers × 1 thread, {args.repeat} repeats alternating "
          f"bare tcp / bare TLS / ctrlstack TLS, medians\n")  # fmt: skip

    start: dict[str, list[float]] = {k: [] for k in makers}
    close: dict[str, list[float]] = {k: [] for k in makers}
    per_task: dict[str, list[float]] = {k: [] for k in makers}
    for i in range(args.repeat):
        # Rotate the order so no variant always runs first (or right after another) in a round.
        order = list(makers)[i % 3 :] + list(makers)[: i % 3]
        for key in order:
            s, c = start_close(makers[key])
            start[key].append(s)
            close[key].append(c)
    for i in range(max(1, (args.repeat + 1) // 2)):
        order = list(makers)[i % 3 :] + list(makers)[: i % 3]
        for key in order:
            per_task[key].append(overhead(makers[key], args.tasks))
    launches = [launch_stop(w) for _ in range(max(1, args.repeat // 2))]

    def med(d: dict[str, list[float]], key: str) -> float:
        return statistics.median(d[key])

    rows = [
        ("start (s)", start, "≤ 1.2×", "%.3f"),
        ("close (s)", close, "≤ 1.2×", "%.3f"),
        (f"{args.tasks} no-op tasks (ms/task)", per_task, "≤ 1.05×", "%.3f"),
    ]
    print("ctrlstack (pinned, TLS) vs bare LocalCluster (tcp):\n")
    print("| metric | LocalCluster tcp | ctrlstack pinned TLS | ratio (ours/bare) | target |")
    print("|---|---|---|---|---|")
    for label, data, target, fmt in rows:
        ref, ours = med(data, "bare"), med(data, "pin")
        print(f"| {label} | {fmt % ref} | {fmt % ours} | {ours / ref:.2f}× | {target} |")
    print("\nTLS's own cost (same LocalCluster, tcp vs TLS with ctrlstack's credentials):\n")
    print("| metric | LocalCluster tcp | LocalCluster TLS | ratio (TLS/tcp) |")
    print("|---|---|---|---|")
    for label, data, _, fmt in rows:
        ref, tls = med(data, "bare"), med(data, "tls")
        print(f"| {label} | {fmt % ref} | {fmt % tls} | {tls / ref:.2f}× |")
    ls = statistics.median(x[0] for x in launches)
    lc = statistics.median(x[1] for x in launches)
    print(f"\nctrlstack.launch via supervisor process: ready in {ls:.2f} s, stop in {lc:.2f} s "
          f"(includes a fresh Python interpreter; compare with start above)")  # fmt: skip
    for label, data in (("start s", start), ("close s", close), ("ms/task", per_task)):
        samples = {k: [round(x, 3) for x in v] for k, v in data.items()}
        print(f"samples {label}: {samples}")


if __name__ == "__main__":
    main()
