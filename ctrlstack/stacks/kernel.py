"""Kernel launcher: pin this process from the topology, size its thread pools, exec ipykernel.

A kernelspec of a stack runs ``<stack python> -m ctrlstack.stacks.kernel -f {connection_file}``.
The launcher does what a pinned worker's start does (:mod:`ctrlstack.topology.pin`), for one
process: plan one slot on the CPUs this process may use — inside a Slurm/PBS job that is the
job's cpuset, which the kernel already folds into ``sched_getaffinity`` (see
:func:`ctrlstack.topology.discover.job_context`) — set the mask, write ``NUMBA_NUM_THREADS``, the
threading layer and the BLAS/OpenMP counts for that slot, then ``exec`` ipykernel in the *same*
interpreter.  ``exec`` keeps the mask and memory policy and costs no second process, so a pinned
kernel starts about as fast as a plain one (``benchmarks/stacks.py``).

Slot size: ``--threads N`` (or ``CTRLSTACK_KERNEL_THREADS``); ``auto`` is the whole allocation
inside a batch job (the job is the user's) and one L3 domain elsewhere (a login node is shared).
Only stdlib and :mod:`ctrlstack.topology` are imported here, to keep the start cheap.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

from ctrlstack.topology.model import Machine
from ctrlstack.topology.pin import pin_threads, worker_env
from ctrlstack.topology.plan import Slot, plan

__all__ = ["kernel_env", "kernel_slot", "main"]

THREADS_ENV = "CTRLSTACK_KERNEL_THREADS"
_JOB_VARS = ("SLURM_JOB_ID", "PBS_JOBID")


def in_job(env: Mapping[str, str]) -> bool:
    return any(env.get(name) for name in _JOB_VARS)


def kernel_slot(machine: Machine, threads: int | None, *, job: bool) -> Slot:
    """The CPUs of the kernel (pure): ``threads`` of them, or the default described above."""
    if threads is None and job:
        cores = len(plan(machine, workers=None, threads=1, policy="core").slots)
        return plan(machine, workers=1, threads=cores, policy="l3").slots[0]
    if threads is None:  # the first slot of an auto plan: one L3 domain's worth of cores
        return plan(machine, workers=None, threads=None, policy="l3").slots[0]
    return plan(machine, workers=1, threads=threads, policy="l3").slots[0]


def kernel_env(slot: Slot, environ: Mapping[str, str]) -> dict[str, str]:
    """The kernel's environment: ``environ`` with the slot's thread settings over it.

    A kernel runs one task at a time, so it gets the whole slot as its thread budget.  A
    threading layer the stack chose (``NUMBA_THREADING_LAYER`` in the kernelspec's env) wins
    over the default ``workqueue``.
    """
    env = dict(environ)
    planned = worker_env(slot, 1)
    if environ.get("NUMBA_THREADING_LAYER"):
        planned.pop("NUMBA_THREADING_LAYER")
    env.update(planned)
    return env


def _threads(value: str | None) -> int | None:
    if value is None or value == "auto":
        return None
    number = int(value)
    if number < 1:
        raise ValueError(f"--threads must be >= 1 or auto, got {value!r}")
    return number


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ctrlstack.stacks.kernel")
    parser.add_argument("--threads", default=os.environ.get(THREADS_ENV, "auto"))
    parser.add_argument("--no-pin", action="store_true", help="set thread counts, do not pin")
    args, rest = parser.parse_known_args(argv)
    from ctrlstack.topology.discover import discover

    slot = kernel_slot(discover(), _threads(args.threads), job=in_job(os.environ))
    env = kernel_env(slot, os.environ)
    if args.no_pin:
        env.pop("CTRLSTACK_CPUS", None)
    else:
        pin_threads(slot.cpus)
    argv_out = [sys.executable, "-m", "ipykernel_launcher", *rest]
    os.execve(sys.executable, argv_out, env)


if __name__ == "__main__":
    main()
