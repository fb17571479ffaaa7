"""The backend seam: how the supervisor runs workers, whatever runs them.

A backend turns a validated :class:`~ctrlstack.config.ClusterSpec` into a running Dask cluster
object (a ``SpecCluster``: :class:`~ctrlstack.deploy.local.PinnedLocalCluster` for ``local``, a
dask-jobqueue cluster for ``slurm``/``pbs``) and describes its workers and batch jobs for the
status.  The supervisor owns the lifecycle (start, control handlers, watch loop, stop, registry)
and calls backends only through this class, so it knows no backend by name; adding one is a
subclass plus an entry in :data:`ctrlstack.deploy.backends.BACKENDS` (or the
``ctrlstack.backends`` entry-point group, for site plugins).

Where planning happens: ``local`` plans CPU sets here, in :meth:`Backend.check` (in the caller,
before anything is created) and again in the supervisor; batch backends only check what can be
checked before submission (resources, directives) and plan on the node where the job lands
(``ctrlstack worker``).

Scaling is Dask's: the supervisor calls ``cluster.scale(n)`` / ``cluster.adapt(...)`` on the
object :meth:`Backend.create` returned, after :meth:`Backend.check_scale` accepted the target.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ctrlstack.deploy.status import JobStatus, WorkerStatus

if TYPE_CHECKING:
    from distributed import SpecCluster
    from distributed.security import Security

    from ctrlstack.config import ClusterSpec

__all__ = ["Backend", "BackendReport"]


@dataclass
class BackendReport:
    """What a backend knows that the scheduler does not: shape, plan and jobs."""

    requested: int  # workers asked for
    max_workers: int | None  # most workers that fit (None: bounded only by the queue)
    threads: int  # CPUs per worker
    task_threads: int
    policy: str
    pinned: bool
    workers: list[WorkerStatus] = field(default_factory=list)  # planned workers (by name)
    jobs: list[JobStatus] = field(default_factory=list)


class Backend(ABC):
    """One way of running a cluster's workers; one instance per cluster, in its supervisor.

    Subclasses set :attr:`name` and implement the abstract methods.  The constructor must be
    cheap and side-effect free: it also runs in the caller (for :meth:`check`) before anything
    exists.
    """

    #: The profile's ``backend`` value this class serves.
    name: ClassVar[str]

    def __init__(
        self,
        spec: ClusterSpec,
        *,
        cluster_name: str,
        security: Security | None = None,
        workdir: Path | None = None,
    ) -> None:
        self.spec = spec
        self.cluster_name = cluster_name
        self.security = security
        #: The cluster's private directory (0700): job scripts, job logs, credentials.
        self.workdir = workdir
        self.cluster: SpecCluster | None = None

    # ------------------------------------------------------------------ before anything runs
    def check(self) -> None:  # noqa: B027 - optional hook
        """Raise a :class:`~ctrlstack.errors.UserError` (``PlanError``, ``ConfigError``) now if
        the spec cannot work; runs in the caller, before a name is reserved or a process started.
        """

    # ------------------------------------------------------------------ in the supervisor
    @abstractmethod
    async def create(self) -> SpecCluster:
        """Create and start the cluster object (``asynchronous=True``) with TLS from
        :attr:`security`; keep it in :attr:`cluster` and return it."""

    @abstractmethod
    def check_scale(self, n: int) -> None:
        """Raise ``ValueError``/``PlanError`` for a worker target that cannot be met, before any
        change is made."""

    @abstractmethod
    def report(self) -> BackendReport:
        """Shape, planned workers and jobs for :class:`~ctrlstack.deploy.status.ClusterStatus`."""

    def job_ids(self) -> list[str]:
        """External job ids this cluster has in a queue now (recorded in the registry, so that a
        dead supervisor's jobs can be cancelled from any host)."""
        return []

    def job_log(self, job_id: str) -> str | None:
        """Path of batch job ``job_id``'s log (None: this backend runs no batch jobs)."""
        return None

    async def poll(self) -> None:  # noqa: B027 - optional hook
        """Refresh external state (one batched queue query); called from the supervisor's watch
        loop.  Must not raise for a failed status command (report UNKNOWN instead)."""

    async def cleanup(self) -> None:  # noqa: B027 - optional hook
        """After the cluster object is closed: make sure nothing of it is left (cancel jobs)."""

    # ------------------------------------------------------------------ anywhere
    @classmethod  # noqa: B027 - optional hook
    def cancel(cls, job_ids: Sequence[str], options: dict[str, Any]) -> None:
        """Cancel ``job_ids`` of a cluster whose supervisor is dead (from any host); ``options``
        is the profile's backend section from the record.  Default: nothing to cancel."""
