"""The ``local`` backend: pinned worker processes on this machine (the embedded default).

Planning happens here, twice on purpose: :meth:`LocalBackend.check` plans in the caller so that a
plan that does not fit is refused before anything is created, and :meth:`LocalBackend.create`
plans again in the supervisor, which owns the cluster (the machine is the same one).
"""

from __future__ import annotations

import logging

from ctrlstack.deploy.backends.base import Backend, BackendReport
from ctrlstack.deploy.local import SLOT_ENV, PinnedLocalCluster
from ctrlstack.deploy.status import WorkerStatus
from ctrlstack.topology.discover import discover
from ctrlstack.topology.plan import plan

__all__ = ["LocalBackend"]


def _count(value: int | str) -> int | None:
    return None if value == "auto" else int(value)


class LocalBackend(Backend):
    """Worker processes of this machine, one ``Nanny`` per plan slot (see :mod:`..local`)."""

    name = "local"
    cluster: PinnedLocalCluster | None

    def check(self) -> None:
        spec = self.spec
        plan(
            discover(),
            workers=_count(spec.workers),
            threads=_count(spec.threads),
            policy=spec.policy,
            smt=spec.smt,
        )

    async def create(self) -> PinnedLocalCluster:
        spec = self.spec
        self.cluster = await PinnedLocalCluster(
            discover(),
            workers=_count(spec.workers),
            threads=_count(spec.threads),
            task_threads=spec.task_threads,
            policy=spec.policy,
            smt=spec.smt,
            memory_limit=spec.memory_limit,
            dashboard=spec.dashboard,
            env=dict(spec.env),
            worker_options=spec.worker_kwargs(),
            host=str(spec.options.get("host", "127.0.0.1")),
            security=self.security,
            asynchronous=True,
            name=self.cluster_name,
            silence_logs=logging.WARNING,
        )
        return self.cluster

    def check_scale(self, n: int) -> None:
        assert self.cluster is not None
        self.cluster.check_scale(n)

    def report(self) -> BackendReport:
        cluster = self.cluster
        assert cluster is not None
        full = cluster.full_plan
        slots = {slot.index: slot for slot in full.slots}
        workers = []
        for name, spec in cluster.worker_spec.items():
            env = spec["options"]["env"]
            slot = slots.get(int(env[SLOT_ENV]))
            workers.append(
                WorkerStatus(
                    name=str(name),
                    state="pending",  # the supervisor marks the connected ones "running"
                    cpus=env.get("CTRLSTACK_CPUS") or None,
                    threads=slot.threads if slot is not None else full.threads,
                    task_threads=cluster.task_threads,
                )
            )
        return BackendReport(
            requested=len(cluster.worker_spec),
            max_workers=cluster.max_workers,
            threads=full.threads,
            task_threads=cluster.task_threads,
            policy=full.policy,
            pinned=full.pinned,
            workers=workers,
        )
