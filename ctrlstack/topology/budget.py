"""The thread budget: how many threads a parallel kernel may use *here*.

Inside a pinned worker the budget comes from the plan slot, exported by
:func:`ctrlstack.topology.pin.worker_env` as ``CTRLSTACK_THREAD_BUDGET`` (the slot's CPUs divided
among the worker's task threads).  Without a plan it is the number of CPUs this thread may run on,
which already honours ``taskset``, ``numactl``, Slurm bindings and cgroup cpusets.  Kernels never
guess from ``os.cpu_count()``: on a 256-CPU node inside a 4-CPU Slurm step that guess is 64× off.
"""

from __future__ import annotations

import os

BUDGET_ENV = "CTRLSTACK_THREAD_BUDGET"

__all__ = ["BUDGET_ENV", "thread_budget"]


def thread_budget() -> int:
    """Threads a parallel kernel may use from the calling thread (always ≥ 1)."""
    allowed = len(os.sched_getaffinity(0))
    raw = os.environ.get(BUDGET_ENV, "").strip()
    if raw:
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value > 0:
            return max(1, min(value, allowed))
    return max(1, allowed)
