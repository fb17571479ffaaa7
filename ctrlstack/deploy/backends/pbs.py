"""The ``pbs`` backend (OpenPBS / PBS Pro): the Slurm backend's structure over PBS commands.

Everything that is not a command — the dask-jobqueue cluster, TLS, ``ctrlstack worker`` on the
node, replacement of ended jobs, the walltime drain, clean-up — is inherited from
:class:`~ctrlstack.deploy.backends.slurm.SlurmBackend`; this class swaps the scheduler-facing
parts for :mod:`ctrlstack.deploy.batch.pbs`: ``qsub`` (rejections carry qsub's message),
``qstat -x -t -f -F json`` (one call for all jobs), ``qdel``.  PBS has no ``--test-only``, so
:meth:`PBSBackend.check` validates the profile and that ``qsub`` exists; a refused job surfaces
from the first submission instead.

No PBS server runs in this project's CI; the builders and parsers are unit-tested against
recorded output formats (``tests/fixtures/pbs``), the backend's wiring by unit tests only.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from ctrlstack import _proc
from ctrlstack.deploy.backends._jobqueue import PBSJob
from ctrlstack.deploy.backends.slurm import (
    BatchCommandFailed,
    SlurmBackend,
    _CtrlstackJob,
    run_batch,
)
from ctrlstack.deploy.batch import pbs as P
from ctrlstack.deploy.batch.options import BatchOptions
from ctrlstack.deploy.status import JobStatus

__all__ = ["PBSBackend"]


class CtrlstackPBSJob(_CtrlstackJob, PBSJob):
    """One PBS job running ``ctrlstack worker``."""

    def __init__(
        self, scheduler: Any = None, name: Any = None, *, backend: SlurmBackend, **kwargs: Any
    ) -> None:
        kwargs = self._setup(backend, kwargs)
        PBSJob.__init__(self, scheduler=scheduler, name=name, **kwargs)


class PBSBackend(SlurmBackend):
    """Workers in PBS jobs; see the module docstring."""

    name: ClassVar[str] = "pbs"
    job_cls: ClassVar[type[Any]] = CtrlstackPBSJob
    #: One scale-up goes out as one ``qsub -J 0-<n-1>`` array (``pbs.array``); its sub-jobs
    #: ``123[i].server`` are polled, retired and ``qdel``-ed one by one like single jobs.
    array_supported: ClassVar[bool] = True

    @staticmethod
    def render_script(opts: BatchOptions, **kwargs: Any) -> str:
        return P.job_script(opts, **kwargs)

    @staticmethod
    def array_task_ids(array_id: str, count: int) -> list[str]:
        return P.array_task_ids(array_id, count)

    def job_log(self, job_id: str) -> str:
        """``-o <dir>/`` makes PBS write ``<dir>/<job id>.OU`` (stdout and stderr, ``-j oe``)."""
        return f"{self.log_directory.rstrip('/')}/{job_id}.OU"

    def check(self) -> None:
        if shutil.which("qsub") is None:
            raise BatchCommandFailed(
                "qsub is not on PATH: the pbs backend needs PBS's client commands on this host"
            )

    def submit(self, script: str, name: str) -> str:
        result = run_batch(
            P.qsub_argv(script), what=f"job {name}", rejection=P.is_rejection, scheduler="PBS"
        )
        return P.parse_qsub(result.stdout)

    @staticmethod
    def cancel_argv(job_ids: Sequence[str]) -> list[str]:
        return P.qdel_argv(job_ids)

    def query(self, job_ids: Sequence[str]) -> dict[str, JobStatus] | None:
        if not job_ids:
            return {}
        try:
            result = _proc.run(P.qstat_argv(job_ids), timeout=20, check=False)
        except _proc.CommandError:
            return None
        if result.returncode != 0 and not P.qstat_gone(result.stderr):
            return None
        try:
            found = P.parse_qstat(result.stdout)
        except ValueError:
            return None
        for job_id in job_ids:
            found.setdefault(
                job_id, JobStatus(job_id=job_id, state="COMPLETED", reason="no longer known to PBS")
            )
        return found

    @staticmethod
    def _wait_gone(ids: list[str], wait: float) -> None:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                result = _proc.run(P.qstat_argv(ids), timeout=20, check=False)
                jobs = P.parse_qstat(result.stdout)
            except (_proc.CommandError, ValueError):
                return
            if all(
                j.state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") for j in jobs.values()
            ):
                return
            time.sleep(0.5)
