"""``ctrlstack worker``: the node side of a batch job — plan here, start pinned workers, wait.

Why plan on the node: only the node knows which CPUs the batch system gave the job (a cgroup
cpuset, Slurm's binding, a site's ``taskset`` wrapper all end up in ``sched_getaffinity``), and
the login node where the profile was resolved may have a different topology.  So the job runs
this command with the *request* (workers × threads, pin policy) and the command plans it on
:func:`~ctrlstack.topology.discover.discover`'s view of the job, exactly as
:class:`~ctrlstack.deploy.local.PinnedLocalCluster` does for ``local``: one ``Nanny`` per plan
slot with the slot's environment (thread counts, ``CTRLSTACK_CPUS``) and the
``ctrlstack.topology.pin`` preload that pins every thread of the worker.

TLS: the credentials directory comes from ``CTRLSTACK_CREDENTIALS`` (a path exported by the job
script; the files are 0600 in the owner's 0700 directory) and is checked by
:meth:`Credentials.load` before use.  Nothing secret is on the command line.

Walltime: ``lifetime`` (seconds from now) is passed to distributed's worker ``lifetime``, which
retires the worker gracefully — it stops taking tasks and hands its data to other workers —
before the batch system kills the job.

Start-up (:func:`fork_workers`, the default): this process imports ``distributed`` once, plans,
then forks one child per slot *before* any event loop or thread of its own exists.  Each
child sets its slot's environment and pins itself before anything imports Numba or starts a
BLAS/Numba pool (the order :mod:`ctrlstack.topology.pin` explains), then runs a plain
``distributed.Worker``.  A job with N workers thus costs one interpreter start instead of 2N
(a nanny per worker, each spawning a fresh interpreter that imports ``distributed`` again) —
on a busy node that is most of the start-up time.  The parent stays as the job's process: it
forwards SIGTERM/SIGINT to its children and exits when the last one has, so a worker retired on
its own (``retire_workers`` on a packed job) leaves the others running.  The price is
what only a nanny does: restarting a worker that hit the memory ``terminate`` fraction or
``client.restart()``; ``--nanny`` (profile ``slurm.nanny: true``) keeps the nanny path
(:func:`run_workers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ctrlstack.deploy.batch.script import CREDENTIALS_ENV
from ctrlstack.deploy.local import PRELOAD, SLOT_ENV
from ctrlstack.errors import UserError
from ctrlstack.topology.discover import discover, job_context
from ctrlstack.topology.pin import set_parent_death_signal, worker_env
from ctrlstack.topology.plan import Plan, plan

__all__ = ["NodeRequest", "fork_workers", "node_plan", "run_workers", "worker_names"]

logger = logging.getLogger("ctrlstack.worker")


@dataclass(frozen=True)
class NodeRequest:
    """What the job asks for; planned against the CPUs this process may use."""

    scheduler: str
    name: str
    workers: int = 1
    threads: int | None = None
    task_threads: int | None = None
    policy: str = "l3"
    smt: bool = False
    memory_limit: int | str = "auto"
    death_timeout: float = 60.0
    lifetime: float | None = None
    interface: str | None = None
    local_directory: str | None = None
    resources: Mapping[str, float] = field(default_factory=dict, hash=False)


def worker_names(name: str, workers: int) -> list[str]:
    """Names dask-jobqueue expects for the workers of job ``name`` (its ``group`` suffixes)."""
    return [name] if workers == 1 else [f"{name}-{i}" for i in range(workers)]


def node_plan(request: NodeRequest) -> Plan:
    """Plan ``request`` on this node's allowed CPUs (``PlanError`` if it does not fit)."""
    return plan(
        discover(),
        workers=request.workers,
        threads=request.threads,
        policy=request.policy,
        smt=request.smt,
    )


def _credentials_security(environ: Mapping[str, str]) -> Any:
    from ctrlstack.deploy.security import Credentials

    directory = environ.get(CREDENTIALS_ENV)
    if not directory:
        raise UserError(
            f"{CREDENTIALS_ENV} is not set: ctrlstack worker needs the cluster's credentials "
            "directory (the job script exports it)"
        )
    return Credentials.load(directory).security()


async def run_workers(request: NodeRequest, environ: Mapping[str, str] | None = None) -> int:
    """Start one pinned Nanny per slot, wait until all have exited; return an exit code."""
    from distributed import Nanny

    environ = os.environ if environ is None else environ
    security = _credentials_security(environ)
    layout = node_plan(request)
    _log_layout(layout, environ)
    nannies = []
    for _name, env, options in _per_slot(request, layout):
        nannies.append(
            Nanny(
                request.scheduler,
                security=security,
                env=env,
                dashboard=False,
                silence_logs=logging.WARNING,
                **options,
            )
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.gather(*(n.start() for n in nannies))
        waiting: list[asyncio.Future[Any]] = [asyncio.ensure_future(n.finished()) for n in nannies]
        stopper: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        await asyncio.wait([*waiting, stopper], return_when=asyncio.FIRST_COMPLETED)
        if not stop.is_set():
            # One worker ended (lifetime, scheduler gone): wait for the others as well.
            everyone: asyncio.Future[Any] = asyncio.gather(*waiting)
            await asyncio.wait([everyone, stopper], return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
    finally:
        for nanny in nannies:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nanny.close(), 10)
    return 0


def _per_slot(
    request: NodeRequest, layout: Plan
) -> Iterator[tuple[str, dict[str, str], dict[str, Any]]]:
    """``(worker name, environment, worker options)`` for each slot of the node's plan."""
    task_threads = request.task_threads or layout.threads
    for slot, name in zip(layout.slots, worker_names(request.name, layout.workers), strict=True):
        env = worker_env(slot, task_threads, pin=layout.pinned)
        env[SLOT_ENV] = str(slot.index)
        yield name, env, {**_worker_options(request, task_threads), "name": name}


def _worker_options(request: NodeRequest, task_threads: int) -> dict[str, Any]:
    """What every worker of the request gets, forked ``Worker`` or ``Nanny`` alike."""
    extra: dict[str, Any] = {}
    if request.lifetime is not None:
        extra["lifetime"] = max(1.0, request.lifetime)
    if request.local_directory:
        extra["local_directory"] = request.local_directory
    if request.resources:
        extra["resources"] = dict(request.resources)
    return {
        "name": None,
        "nthreads": task_threads,
        "memory_limit": request.memory_limit,
        "interface": request.interface,
        "protocol": "tls",
        "preload": [PRELOAD],
        "death_timeout": request.death_timeout,
        **extra,
    }


async def _serve_one(scheduler: str, security: Any, options: dict[str, Any]) -> int:
    """In a forked child: run one ``Worker`` until it closes (retired, lifetime, SIGTERM)."""
    from distributed import Worker

    worker = Worker(scheduler, security=security, dashboard=False, **options)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(worker.close()))
    await worker
    await worker.finished()
    return 0


def _child(
    request: NodeRequest, security: Any, env: Mapping[str, str], options: dict[str, Any]
) -> int:
    """Body of a forked worker: environment and pinning first, then the worker."""
    from ctrlstack.topology.pin import apply_from_env

    parent = os.getppid()
    os.environ.update(env)
    if set_parent_death_signal() and os.getppid() != parent:
        return 1  # the job's process died before the signal was armed
    apply_from_env()  # pins this (only) thread; threads made later inherit the mask
    logging.getLogger("distributed").setLevel(logging.WARNING)
    return asyncio.run(_serve_one(request.scheduler, security, options))


def fork_workers(request: NodeRequest, environ: Mapping[str, str] | None = None) -> int:
    """Plan, fork one pinned ``Worker`` per slot, wait for all of them; return an exit code.

    Must be called before this process starts an event loop or threads (``fork`` copies only
    the calling thread).  The parent forwards SIGTERM/SIGINT to its children and reaps them; it
    returns 0 when every child exited 0, else 1.
    """
    environ = os.environ if environ is None else environ
    security = _credentials_security(environ)
    layout = node_plan(request)
    _log_layout(layout, environ)
    children: dict[int, str] = {}
    for name, env, options in _per_slot(request, layout):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, measured by the Slurm tests
            code = 1
            try:
                code = _child(request, security, env, options)
            except BaseException:  # a child must never return into the parent's code
                logger.exception("worker %s failed", name)
            finally:
                logging.shutdown()
                os._exit(code)
        children[pid] = name

    def forward(signum: int, _frame: Any) -> None:
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    failed = False
    while children:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        name = children.pop(pid, "?")
        code = os.waitstatus_to_exitcode(status)
        (logger.info if code == 0 else logger.warning)("worker %s exited (%d)", name, code)
        failed = failed or code != 0
    return 1 if failed else 0


def _log_layout(layout: Plan, environ: Mapping[str, str]) -> None:
    context = job_context()
    logger.info(
        "job %s: %d worker(s) × %d CPUs (policy %s) on CPUs %s",
        environ.get("SLURM_JOB_ID") or environ.get("PBS_JOBID") or "?",
        layout.workers,
        layout.threads,
        layout.policy,
        context.get("affinity"),
    )
    for note in context.get("notes", []):
        logger.warning("%s", note)


def queue_job_id(environ: Mapping[str, str]) -> str | None:
    """The id the queue shows for this job: ``123_4`` for task 4 of array 123 (Slurm gives an
    array task its own ``SLURM_JOB_ID`` too, which ``squeue``/``scancel`` do not show), else
    ``SLURM_JOB_ID`` or ``PBS_JOBID``."""
    array, task = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return environ.get("SLURM_JOB_ID") or environ.get("PBS_JOBID")


def job_placement(dask_worker: Any = None) -> dict[str, Any]:
    """Inside a batch worker (``client.run``): :func:`~ctrlstack.topology.pin.placement` plus the
    job it runs in and the CPUs of the job's own process (the nanny, which is not pinned), so
    that "every worker ⊆ its job, workers disjoint" can be checked from outside."""
    import psutil

    from ctrlstack.topology.cpuset import format_cpulist
    from ctrlstack.topology.pin import placement

    info = placement(dask_worker)
    parent = psutil.Process().parent()
    info["job_id"] = queue_job_id(os.environ)
    info["job_cpus"] = format_cpulist(parent.cpu_affinity()) if parent is not None else None
    return info
