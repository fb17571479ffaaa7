"""Pinned local cluster vs bare ``distributed.LocalCluster``, side by side in one run.

Measures, interleaved over repeats (median reported):

* start and close time of an in-process cluster with the same shape (workers × 1 thread);
* task overhead: ``client.map`` of N no-op tasks + ``gather`` (per-task milliseconds);
* for information, ``ctrlstack.launch`` → ready → ``stop`` through a supervisor process, which
  adds a Python start-up that a bare LocalCluster in the caller does not pay.

Usage: ``python benchmarks/cluster.py [--repeat 5] [--tasks 10000] [--workers 2]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from typing import Any

import dask
import distributed
from distributed import Client, LocalCluster

import ctrlstack
from ctrlstack.deploy.local import PinnedLocalCluster
from ctrlstack.topology.discover import discover


def noop(x: int) -> int:
    return x


def start_close(make: Any) -> tuple[float, float, Any]:
    t0 = time.perf_counter()
    cluster = make()
    client = Client(cluster)
    client.wait_for_workers(len(cluster.worker_spec))
    t1 = time.perf_counter()
    client.close()
    cluster.close()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, None


def overhead(make: Any, tasks: int) -> float:
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

    def bare() -> LocalCluster:
        return LocalCluster(n_workers=w, threads_per_worker=1, processes=True,
                            dashboard_address="127.0.0.1:0", host="127.0.0.1")  # fmt: skip

    def pinned() -> PinnedLocalCluster:
        return PinnedLocalCluster(machine, workers=w, threads=1, dashboard=True)

    print(f"# cluster benchmark: {platform.processor() or platform.machine()}, "
          f"{len(os.sched_getaffinity(0))} CPUs allowed, Linux {platform.release()}, "
          f"Python {platform.python_version()}, distributed {distributed.__version__}")  # fmt: skip
    print(f"# {w} workers × 1 thread, {args.repeat} repeats interleaved, medians\n")

    results: dict[str, list[float]] = {
        k: [] for k in ("bare_start", "bare_close", "pin_start", "pin_close")
    }
    for _ in range(args.repeat):
        s, c, _ = start_close(bare)
        results["bare_start"].append(s)
        results["bare_close"].append(c)
        s, c, _ = start_close(pinned)
        results["pin_start"].append(s)
        results["pin_close"].append(c)
    ov_bare, ov_pin = [], []
    for _ in range(max(1, args.repeat // 2)):
        ov_bare.append(overhead(bare, args.tasks))
        ov_pin.append(overhead(pinned, args.tasks))
    launches = [launch_stop(w) for _ in range(max(1, args.repeat // 2))]

    med = {k: statistics.median(v) for k, v in results.items()}
    rows = [
        ("start (s)", med["bare_start"], med["pin_start"], "≤ 1.2×"),
        ("close (s)", med["bare_close"], med["pin_close"], "≤ 1.2×"),
        (f"{args.tasks} no-op tasks (ms/task)", statistics.median(ov_bare),
         statistics.median(ov_pin), "≤ 1.05×"),
    ]  # fmt: skip
    print("| metric | LocalCluster | ctrlstack pinned | ratio (ours/bare) | target |")
    print("|---|---|---|---|---|")
    for label, ref, ours, target in rows:
        print(f"| {label} | {ref:.3f} | {ours:.3f} | {ours / ref:.2f}× | {target} |")
    ls = statistics.median(x[0] for x in launches)
    lc = statistics.median(x[1] for x in launches)
    print(f"\nctrlstack.launch via supervisor process: ready in {ls:.2f} s, stop in {lc:.2f} s "
          f"(includes a fresh Python interpreter; compare with start above)")  # fmt: skip


if __name__ == "__main__":
    main()
