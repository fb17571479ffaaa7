"""The local backend: a ``SpecCluster`` whose workers are pinned to planned CPU sets.

Like :class:`distributed.LocalCluster`, this class only turns arguments into worker specs and lets
``SpecCluster`` do the lifecycle.  The difference is that every worker spec carries its own plan
slot: the slot's environment (``NUMBA_NUM_THREADS``, threading layer, BLAS limits, ``CTRLSTACK_CPUS``)
is applied in the worker process before Numba is imported (Numba sizes its pool at import), and the
``ctrlstack.topology.pin`` preload pins every thread and resizes the BLAS pool as the worker starts.

Slots come from one plan over the whole machine; the planner is prefix-stable, so scaling from
``n`` to ``n + 1`` workers adds a slot without moving the workers already running, and a worker
removed by scale-down frees its slot for the next one.
"""

from __future__ import annotations

import copy
from typing import Any

from distributed import Nanny, Scheduler, SpecCluster
from distributed.security import Security

from ctrlstack.topology.model import Machine
from ctrlstack.topology.pin import worker_env
from ctrlstack.topology.plan import Plan, PlanError, Slot, capacity, plan

__all__ = ["PinnedLocalCluster", "local_plan"]

PRELOAD = "ctrlstack.topology.pin"
SLOT_ENV = "CTRLSTACK_SLOT"


def local_plan(
    machine: Machine,
    *,
    workers: int | None,
    threads: int | None,
    policy: str,
    smt: bool,
) -> tuple[Plan, Plan]:
    """Return ``(initial, full)``: the plan for ``workers`` and the plan of every slot that fits.

    ``full`` is what scale-up draws from.  Raises :class:`PlanError` when ``workers`` do not fit.
    """
    initial = plan(machine, workers=workers, threads=threads, policy=policy, smt=smt)
    most = capacity(machine, initial.threads, policy=policy, smt=smt)
    full = plan(
        machine, workers=max(most, initial.workers), threads=initial.threads, policy=policy, smt=smt
    )
    return initial, full


class PinnedLocalCluster(SpecCluster):
    """A local Dask cluster whose worker processes are pinned to disjoint CPU sets.

    Parameters
    ----------
    machine:
        Topology to plan on (usually :func:`ctrlstack.topology.discover.discover`).
    workers, threads, policy, smt:
        As for :func:`ctrlstack.topology.plan.plan`; ``None`` means "auto".
    task_threads:
        Dask task threads per worker (``nthreads``); default: one per planned CPU.
    memory_limit:
        Per worker, passed to the Nanny ("auto" splits system memory by threads).
    dashboard:
        Serve the scheduler dashboard on a free loopback port.
    env:
        Extra environment variables for every worker process.
    worker_options:
        Extra ``Nanny`` keyword arguments (``resources``, ``local_directory``).
    host:
        Address to listen on (scheduler, workers, dashboard).
    security:
        TLS credentials; with ``require_encryption`` every comm of the cluster is ``tls://``.
    """

    def __init__(
        self,
        machine: Machine,
        *,
        workers: int | None = None,
        threads: int | None = None,
        task_threads: int | None = None,
        policy: str = "l3",
        smt: bool = False,
        memory_limit: str | int | None = "auto",
        dashboard: bool = True,
        env: dict[str, str] | None = None,
        worker_options: dict[str, Any] | None = None,
        host: str = "127.0.0.1",
        security: Security | None = None,
        asynchronous: bool = False,
        name: str | None = None,
        silence_logs: int | bool = False,
    ) -> None:
        initial, full = local_plan(
            machine, workers=workers, threads=threads, policy=policy, smt=smt
        )
        self.machine = machine
        self.full_plan = full
        self.task_threads = task_threads or initial.threads
        if self.task_threads < 1:
            raise ValueError(f"task_threads must be >= 1, got {task_threads!r}")
        self._extra_env = dict(env or {})
        protocol = "tls" if security is not None and security.require_encryption else "tcp"
        self._template: dict[str, Any] = {
            "cls": Nanny,
            "options": {
                "nthreads": self.task_threads,
                "memory_limit": memory_limit,
                "host": host,
                "protocol": protocol,
                "security": security,
                "preload": [PRELOAD],
                "dashboard": False,
                "silence_logs": silence_logs,
                **(worker_options or {}),
            },
        }
        scheduler = {
            "cls": Scheduler,
            "options": {
                "host": host,
                "protocol": protocol,
                "security": security,
                "port": 0,
                "dashboard": dashboard,
                "dashboard_address": f"{host}:0" if dashboard else None,
            },
        }
        specs = {i: self._spec_for(slot) for i, slot in enumerate(full.slots[: initial.workers])}
        super().__init__(
            workers=specs,
            scheduler=scheduler,
            worker=self._template,
            security=security,
            asynchronous=asynchronous,
            name=name,
            silence_logs=silence_logs,
        )
        self._i = len(specs)

    # ---------------------------------------------------------------- slots
    def _spec_for(self, slot: Slot) -> dict[str, Any]:
        spec = copy.deepcopy(self._template)
        # User env first: the plan's own variables (thread counts, CPUs) must not be overridden.
        env = dict(self._extra_env)
        env.update(worker_env(slot, self.task_threads, pin=self.full_plan.pinned))
        env[SLOT_ENV] = str(slot.index)
        spec["options"]["env"] = env
        return spec

    def _used_slots(self) -> set[int]:
        return {int(s["options"]["env"][SLOT_ENV]) for s in self.worker_spec.values()}

    @property
    def max_workers(self) -> int:
        """How many workers of this shape fit on the machine."""
        return len(self.full_plan.slots)

    def new_worker_spec(self) -> dict[Any, dict[str, Any]]:
        used = self._used_slots()
        free = [s for s in self.full_plan.slots if s.index not in used]
        if not free:
            raise PlanError(self._too_many(len(used) + 1))
        name = self._new_worker_name(self._i)
        while name in self.worker_spec:
            self._i += 1
            name = self._new_worker_name(self._i)
        return {name: self._spec_for(free[0])}

    def _too_many(self, n: int) -> str:
        p = self.full_plan
        return (
            f"{n} workers × {p.threads} threads do not fit: at most {self.max_workers} workers "
            f"of {p.threads} threads fit in the allowed CPUs with policy {p.policy!r}; "
            "scale to fewer workers or launch with fewer threads per worker"
        )

    def check_scale(self, n: int) -> None:
        """Raise ``ValueError``/``PlanError`` for a target that cannot be met (before any change)."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"number of workers must be an integer >= 0, got {n!r}")
        if n > self.max_workers:
            raise PlanError(self._too_many(n))

    def scale(self, n: int = 0, memory: Any = None, cores: Any = None) -> Any:
        if memory is None and cores is None:
            self.check_scale(n)
        return super().scale(n, memory=memory, cores=cores)
