"""Apply a plan slot to worker processes: environment before start, thread affinities inside.

This is the one module of :mod:`ctrlstack.topology` with side effects.  The order matters, for
reasons measured on this project's machines (topology notes §3):

1. **Before the worker imports Numba** (:func:`worker_env`, passed as ``Nanny(env=...)``, which
   distributed applies in the child before any task or preload runs): Numba sizes its pool from
   ``NUMBA_NUM_THREADS`` — or, when unset, from the affinity mask *at import* — and libgomp reads
   ``OMP_NUM_THREADS`` when it loads.  OpenBLAS is different: ``distributed`` imports NumPy in the
   child *before* ``env=`` is applied, so its pool already exists with distributed's
   ``pre-spawn-environ`` size; :func:`apply_from_env` resizes it with threadpoolctl.  The BLAS
   variables still matter for processes the worker starts.
2. **Inside the worker, as early as possible** (:func:`dask_setup`, a Dask preload calling
   :func:`apply_from_env`): a CPU mask belongs to a *thread*.  ``os.sched_setaffinity(0, ...)``
   and ``psutil.Process().cpu_affinity(...)`` change only the calling thread; the OpenBLAS pool
   made at ``import numpy`` (``distributed`` imports numpy before any preload runs) keeps its old
   mask.  So :func:`pin_threads` sets the mask of *every* thread in ``/proc/self/task``; threads
   created afterwards (Dask's executor threads, Numba's pool) inherit it from their creator.
3. Pinning never widens: the slot is intersected with the current mask first, because asking for
   CPUs outside a Slurm/cgroup cpuset fails with ``EINVAL`` (dask/distributed#8857).
4. The slot's NUMA node(s) travel as ``CTRLSTACK_MEMORY_NODES``; :func:`apply_from_env` gives the
   calling thread (and the threads it creates later) the memory policy that
   :func:`ctrlstack.topology.mempolicy.decide` picks, and records the kernel's answer instead of
   failing when it refuses.

:func:`placement` is the matching diagnostic, run inside workers with ``client.run``; it reads
back what every thread is allowed to run on and where it last ran.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from . import mempolicy
from .budget import BUDGET_ENV
from .cpuset import CpuSet, format_cpulist, parse_cpulist
from .mempolicy import MEMORY_NODES_ENV, MEMORY_POLICY_ENV
from .plan import Plan, Slot

__all__ = [
    "CPUS_ENV",
    "MEMORY_NODES_ENV",
    "MEMORY_POLICY_ENV",
    "TASK_THREADS_ENV",
    "THREADS_ENV",
    "apply_from_env",
    "dask_setup",
    "pin_threads",
    "placement",
    "set_parent_death_signal",
    "threadsafe_layer",
    "worker_env",
    "worker_envs",
]

logger = logging.getLogger(__name__)

CPUS_ENV = "CTRLSTACK_CPUS"
THREADS_ENV = "CTRLSTACK_THREADS"
TASK_THREADS_ENV = "CTRLSTACK_TASK_THREADS"
_BLAS_ENVS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

# The threadpoolctl limiter must stay referenced: dropping it does not undo the limit, but keeping
# it lets a later call (or a test) restore the original sizes deliberately.
_LIMITER: Any = None


# ---------------------------------------------------------------------------------- environment
@functools.cache
def threadsafe_layer() -> str:
    """The thread-safe Numba threading layer to request for workers with several task threads.

    ``omp`` first: the PyPI wheel ships ``omppool`` linked against the system libgomp (it loads
    here although the Numba docs say it is disabled in wheels), its team size is exactly
    ``NUMBA_NUM_THREADS`` and its threads inherit the worker's mask.  ``tbb`` second: it caps its
    workers by the affinity mask at initialisation and, pip-installed in a venv, needs
    ``LD_LIBRARY_PATH`` to be found.  If neither loads, ``"threadsafe"`` is returned (with a
    warning): Numba then raises a clear "No threading layer could be loaded" at the first
    parallel call instead of the ``workqueue`` layer aborting the process when two task threads
    enter parallel regions at once.  Checked by importing the layer in this process, which is the
    same installation the worker processes run.
    """
    for layer, module in (("omp", "numba.np.ufunc.omppool"), ("tbb", "numba.np.ufunc.tbbpool")):
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        return layer
    logger.warning(
        "neither the omp nor the tbb Numba threading layer loads; workers with several task "
        "threads get NUMBA_THREADING_LAYER=threadsafe and parallel kernels will fail there "
        "(install libgomp, or `pip install tbb`, or use one task thread per worker)"
    )
    return "threadsafe"


def worker_env(
    slot: Slot | None, task_threads: int, *, pin: bool = True, memory: str | None = None
) -> dict[str, str]:
    """Environment for a worker process *before it starts* (``Nanny(env=...)``).

    ``task_threads`` is the worker's Dask ``nthreads``; each task thread gets a budget of
    ``max(1, slot.threads // task_threads)`` threads for Numba kernels and BLAS.  ``slot=None``
    (or ``pin=False``, for plans with ``pinned=False``) omits ``CTRLSTACK_CPUS`` so the worker is
    not pinned; without a slot the thread count is this process's allowed CPU count.

    A pinned slot with NUMA information also gets ``CTRLSTACK_MEMORY_NODES`` (its nodes; one node
    is ``slot.memory_node``).  Unpinned workers get none: their threads roam every node, so no
    node is "theirs".  ``memory`` (``preferred``, ``bind`` or ``none``) is written as
    ``CTRLSTACK_MEMORY_POLICY`` only when given, so that a profile's ``env`` can choose the mode;
    the worker's default is ``preferred``.
    """
    if isinstance(task_threads, bool) or not isinstance(task_threads, int) or task_threads < 1:
        raise ValueError(f"task_threads must be an integer >= 1, got {task_threads!r}")
    if memory is not None and memory not in mempolicy.MODES:
        raise ValueError(
            f"memory must be one of {', '.join(mempolicy.MODES)} or None, got {memory!r}"
        )
    threads = slot.threads if slot is not None else len(os.sched_getaffinity(0))
    budget = max(1, threads // task_threads)
    env = {
        THREADS_ENV: str(threads),
        TASK_THREADS_ENV: str(task_threads),
        BUDGET_ENV: str(budget),
        "NUMBA_NUM_THREADS": str(threads),
        "NUMBA_THREADING_LAYER": "workqueue" if task_threads == 1 else threadsafe_layer(),
    }
    env.update({name: str(budget) for name in _BLAS_ENVS})
    if slot is not None and pin:
        env[CPUS_ENV] = format_cpulist(slot.cpus)
        if slot.numa_nodes:
            env[MEMORY_NODES_ENV] = format_cpulist(slot.numa_nodes)
    if memory is not None:
        env[MEMORY_POLICY_ENV] = memory
    return env


def worker_envs(
    plan: Plan, task_threads: int = 1, *, memory: str | None = None
) -> list[dict[str, str]]:
    """:func:`worker_env` for every slot of ``plan`` (unpinned plans get no ``CTRLSTACK_CPUS``)."""
    return [worker_env(slot, task_threads, pin=plan.pinned, memory=memory) for slot in plan.slots]


# ---------------------------------------------------------------------------------- pinning
def _tids() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/task")}


def pin_threads(cpus: Iterable[int]) -> list[int]:
    """Set the affinity of every thread of this process to ``cpus ∩ current mask``.

    Returns the thread ids pinned.  Threads that exit meanwhile are skipped; threads that appear
    meanwhile are picked up by re-listing ``/proc/self/task`` until no new ones show up.  When the
    intersection is empty (a slot planned outside this job's cpuset) nothing is changed and a
    warning is logged: running unpinned is better than failing to start.
    """
    wanted = frozenset(cpus)
    target = wanted & os.sched_getaffinity(0)
    if not target:
        logger.warning(
            "not pinning: CPUs %s are outside this process's allowed CPUs %s",
            format_cpulist(wanted),
            format_cpulist(os.sched_getaffinity(0)),
        )
        return []
    if target != wanted:
        logger.warning(
            "pinning to %s only: %s are outside this process's allowed CPUs",
            format_cpulist(target),
            format_cpulist(wanted - target),
        )
    done: set[int] = set()
    for _ in range(10):  # a few passes catch threads started while we were pinning
        todo = _tids() - done
        if not todo:
            break
        for tid in sorted(todo):
            try:
                os.sched_setaffinity(tid, target)
            except ProcessLookupError:
                continue  # the thread exited
            except OSError as error:
                logger.debug("could not pin thread %d: %s", tid, error)
                continue
            done.add(tid)
    return sorted(done & _tids())


# ---------------------------------------------------------------------------------- in the worker
def _env_int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"environment variable {name} must be an integer >= 1, got {raw!r}")
    return value


def _memory_decision(env: Mapping[str, str]) -> mempolicy.Decision | None:
    """The memory policy the environment asks for; ``None`` when it asks for nothing."""
    raw_nodes = env.get(MEMORY_NODES_ENV, "").strip()
    mode = env.get(MEMORY_POLICY_ENV, "").strip().lower() or mempolicy.DEFAULT_MODE
    if not raw_nodes and MEMORY_POLICY_ENV not in env:
        return None
    if mode not in mempolicy.MODES:
        raise ValueError(
            f"environment variable {MEMORY_POLICY_ENV} must be one of "
            f"{', '.join(mempolicy.MODES)}, got {env[MEMORY_POLICY_ENV]!r}"
        )
    try:
        nodes = parse_cpulist(raw_nodes) if raw_nodes else frozenset()
    except ValueError:
        raise ValueError(
            f"environment variable {MEMORY_NODES_ENV} must be a node list like 0 or 0-3, "
            f"got {raw_nodes!r}"
        ) from None
    return mempolicy.decide(nodes, mode)


def apply_from_env(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Inside a worker: pin every thread, set the memory policy, size Numba/BLAS pools.

    ``numba.set_num_threads`` is thread-local, so it is applied here for the calling thread only;
    kernels in :mod:`ctrlstack.ops` apply the budget per call from ``CTRLSTACK_THREAD_BUDGET``.
    Numba is not imported here: a worker that never uses it should not pay for it, and its pool,
    when launched later, inherits the mask and memory policy set now.  The memory policy, like the
    mask, reaches this thread and the threads created after it; ``result["memory"]`` is the
    record of :func:`ctrlstack.topology.mempolicy.apply` (``None`` when nothing was asked).
    """
    global _LIMITER
    env = os.environ if env is None else env
    result: dict[str, Any] = {"cpus": None, "pinned_tids": [], "warnings": [], "memory": None}
    raw_cpus = env.get(CPUS_ENV, "").strip()
    threads = _env_int(env, THREADS_ENV)
    budget = _env_int(env, BUDGET_ENV)
    decision = _memory_decision(env)
    result.update(threads=threads, task_threads=_env_int(env, TASK_THREADS_ENV), budget=budget)
    if raw_cpus:
        cpus = parse_cpulist(raw_cpus)
        result["pinned_tids"] = pin_threads(cpus)
        result["cpus"] = format_cpulist(cpus & os.sched_getaffinity(0)) or None
        if not result["pinned_tids"]:
            result["warnings"].append(f"slot CPUs {raw_cpus} are outside the allowed CPUs")
    if decision is not None:
        memory = mempolicy.apply(decision)
        result["memory"] = memory
        if memory["status"] in ("refused", "unavailable", "narrowed"):
            for text in memory["diagnostics"]:
                logger.warning("memory policy: %s", text)
                result["warnings"].append(f"memory policy: {text}")
    if budget is not None:
        numba = sys.modules.get("numba")
        if numba is not None:
            n = min(budget, int(numba.config.NUMBA_NUM_THREADS))
            numba.set_num_threads(n)
            result["numba_threads"] = n
        from threadpoolctl import threadpool_limits

        _LIMITER = threadpool_limits(limits=budget)
        result["blas_limit"] = budget
    return result


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux ``prctl``).

    Why: a worker must not outlive the nanny/cluster that started it.  Distributed's own guard is
    a Python thread reading a pipe, which cannot run while a long Numba or C call holds the GIL,
    and nothing at all covers a parent killed with SIGKILL before that thread notices.  The
    kernel signal needs no cooperation from the worker.  Caveat: "parent" is the *thread* that
    spawned us (for a Nanny, the AsyncProcess thread that lives as long as the worker's handle).
    Returns whether the signal was set; if the parent is already gone, signals ourselves.
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    if libc.prctl(pr_set_pdeathsig, int(sig), 0, 0, 0) != 0:
        logger.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
        return False
    parent = multiprocessing.parent_process()
    if parent is not None and parent.pid is not None and os.getppid() != parent.pid:
        os.kill(os.getpid(), sig)  # the parent died before the signal was armed
    return True


def dask_setup(worker: Any) -> None:
    """Dask preload hook: ``Nanny(preload=["ctrlstack.topology.pin"], env=worker_env(...))``.

    Pins the worker's threads from its environment, records the outcome as
    ``worker.ctrlstack_pin``, and (for nanny-managed workers) arms the parent-death signal.
    """
    result = apply_from_env()
    if getattr(worker, "nanny", None):
        result["parent_death_signal"] = set_parent_death_signal()
    with contextlib.suppress(AttributeError):
        worker.ctrlstack_pin = result
    logger.info("ctrlstack pinning: %s", result)
    _preload_ops(worker)


def _preload_ops(worker: Any) -> None:
    """Load the kernels named by ``ctrlstack.ops.preload`` now that the threads are pinned.

    Here rather than as a second preload so that every ctrlstack worker (local, nanny or forked
    in a batch job) gets it from one setting, and so that Numba (imported by the load) starts
    its pool only after the mask and memory policy are in place.  Nothing is imported when the
    setting is empty (the default): ``ctrlstack.ops`` imports Numba, so only the key is read.
    """
    import dask.config

    if dask.config.get("ctrlstack.ops.preload", default=None):
        from ctrlstack.ops.preload import dask_setup as ops_setup  # imports Numba

        ops_setup(worker)


# ---------------------------------------------------------------------------------- diagnostics
def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _last_cpu(stat: str | None) -> int | None:
    """Field 39 ("processor") of ``/proc/<pid>/task/<tid>/stat``.

    The second field is the command in parentheses and may contain spaces or ')', so count the
    fields after the *last* ')': that text starts at field 3.
    """
    if not stat:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        return int(fields[39 - 3])
    except (IndexError, ValueError):
        return None


def _affinity(tid: int) -> CpuSet | None:
    try:
        return frozenset(os.sched_getaffinity(tid))
    except OSError:
        return None


def _numba_info() -> dict[str, Any] | None:
    numba = sys.modules.get("numba")
    if numba is None:
        return None
    parallel = sys.modules.get("numba.np.ufunc.parallel")
    launched = bool(getattr(parallel, "_is_initialized", True))
    info: dict[str, Any] = {
        "num_threads_config": int(numba.config.NUMBA_NUM_THREADS),
        "launched": launched,
        "num_threads": None,
        "threading_layer": None,
    }
    if launched:  # get_num_threads() would otherwise start the pool as a side effect
        info["num_threads"] = int(numba.get_num_threads())
        with contextlib.suppress(ValueError):
            info["threading_layer"] = numba.threading_layer()
    return info


def _memory_info(dask_worker: Any) -> dict[str, Any]:
    """The memory policy as asked (environment), applied (preload record) and read back now."""
    try:
        policy: str | None = str(mempolicy.get_policy())
        error = None
    except OSError as exc:  # unavailable here: say why instead of failing the diagnostic
        policy, error = None, str(exc)
    resident = mempolicy.resident_by_node()
    pin_record = getattr(dask_worker, "ctrlstack_pin", None)
    return {
        "nodes_env": os.environ.get(MEMORY_NODES_ENV) or None,
        "policy_env": os.environ.get(MEMORY_POLICY_ENV) or None,
        "policy": policy,
        "error": error,
        # JSON object keys are strings; bytes resident on each node, from /proc/self/numa_maps
        "resident_by_node": None if resident is None else {str(k): v for k, v in resident.items()},
        "applied": pin_record.get("memory") if isinstance(pin_record, dict) else None,
    }


def placement(dask_worker: Any = None) -> dict[str, Any]:
    """Where this process's threads may run and last ran (run in workers via ``client.run``).

    JSON-ready.  Numba is reported only if the process imported it, and its thread count only
    once its pool exists (asking earlier would launch the pool).  ``memory`` holds the memory
    policy of the calling thread (``get_mempolicy``), the preload's record and the resident bytes
    per NUMA node; each thread's ``mempolicy`` is its own policy as ``numa_maps`` shows it.
    """
    threads = []
    for tid in sorted(_tids()):
        base = f"/proc/self/task/{tid}"
        affinity = _affinity(tid)
        if affinity is None:
            continue  # exited while we looked
        threads.append(
            {
                "tid": tid,
                "name": (_read(f"{base}/comm") or "").strip(),
                "affinity": format_cpulist(affinity),
                "last_cpu": _last_cpu(_read(f"{base}/stat")),
                "mempolicy": mempolicy.thread_policy(tid),
            }
        )
    try:
        from threadpoolctl import threadpool_info

        pools = [
            {k: p.get(k) for k in ("user_api", "internal_api", "num_threads")}
            for p in threadpool_info()
        ]
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        pools = []
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "name": None if dask_worker is None else str(getattr(dask_worker, "name", "")),
        "slot_cpus": os.environ.get(CPUS_ENV) or None,
        "threads_env": os.environ.get(THREADS_ENV),
        "budget": os.environ.get(BUDGET_ENV),
        "process_affinity": format_cpulist(os.sched_getaffinity(0)),
        "threads": threads,
        "numba": _numba_info(),
        "threadpools": pools,
        "memory": _memory_info(dask_worker),
    }
