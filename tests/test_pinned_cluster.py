"""A real pinned local cluster on this machine: every worker thread inside its slot.

The checks read /proc from inside each worker process (thread affinities), ask Numba how many
threads it runs after a real parallel region, and ask threadpoolctl about BLAS — so they test the
effect of pinning, not the plan we intended.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import ctrlstack
from ctrlstack.topology.cpuset import parse_cpulist
from ctrlstack.topology.pin import placement

pytestmark = pytest.mark.slow

NCPU = len(os.sched_getaffinity(0))

# Workers cannot import this test module: ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def run_parallel_kernel() -> int:
    """Start Numba's pool inside the worker with a real parallel region."""
    import numba
    import numpy as np

    @numba.njit(parallel=True)
    def total(x: Any) -> float:
        s = 0.0
        for i in numba.prange(x.shape[0]):
            s += x[i]
        return s

    return int(total(np.ones(10_000)))


def test_each_worker_thread_is_pinned_to_its_slot(state_dir: Path) -> None:
    handle = ctrlstack.launch("local", name="pinned", workers=NCPU, threads=1)
    try:
        client = handle.client()
        client.wait_for_workers(NCPU, timeout=60)
        assert set(client.run(run_parallel_kernel).values()) == {10_000}
        places = client.run(placement)
        assert len(places) == NCPU

        slots = []
        for info in places.values():
            slot = parse_cpulist(info["slot_cpus"])
            assert len(slot) == 1
            slots.append(slot)
            # Every thread of the worker process — event loop, task executor, Numba pool, OpenBLAS
            # pool created at import time — may run only on the slot's CPU.
            for thread in info["threads"]:
                assert parse_cpulist(thread["affinity"]) == slot, thread
            # A thread's last CPU is stale until it runs again; the main thread has run since.
            main = next(t for t in info["threads"] if t["tid"] == info["pid"])
            assert main["last_cpu"] in slot, main
            assert info["numba"]["num_threads"] == 1
            assert info["numba"]["threading_layer"] == "workqueue"  # one task thread per worker
            blas = [p for p in info["threadpools"] if p["user_api"] == "blas"]
            assert blas
            assert all(p["num_threads"] == 1 for p in blas)
        # Disjoint slots covering the allowed CPUs (one per core on this machine).
        assert frozenset().union(*slots) == frozenset(os.sched_getaffinity(0))
        assert sum(len(s) for s in slots) == NCPU

        report = ctrlstack.crowding(client)
        assert report.ok, str(report)
        client.close()
    finally:
        handle.stop()


def test_task_threads_share_the_slot_with_a_threadsafe_layer(state_dir: Path) -> None:
    handle = ctrlstack.launch("local", name="shared", workers=1, threads=NCPU, task_threads=NCPU)
    try:
        client = handle.client()
        client.wait_for_workers(1, timeout=60)
        client.run(run_parallel_kernel)
        (info,) = client.run(placement).values()
        assert info["budget"] == "1"  # NCPU CPUs shared by NCPU task threads
        if NCPU > 1:
            assert info["numba"]["threading_layer"] in ("omp", "tbb")
        client.close()
    finally:
        handle.stop()
