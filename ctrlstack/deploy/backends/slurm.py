"""The ``slurm`` backend: workers as Slurm jobs, on dask-jobqueue, owned by the supervisor.

dask-jobqueue supplies the ``SpecCluster`` mechanics (a ``Job`` per batch job, scale/adapt by
whole jobs, worker-name groups for several workers per job); ctrlstack replaces what it lacks,
through its ``job_cls`` seam rather than a fork:

* **The job script** is ctrlstack's (:func:`ctrlstack.deploy.batch.slurm.job_script`): the job
  runs ``ctrlstack worker``, which plans and pins the workers on the node it landed on and
  connects over TLS with the cluster's credentials.
* **Submission errors surface.**  dask-jobqueue only logs a failed ``sbatch`` and then waits for
  workers forever.  Here :meth:`SlurmBackend.check` asks Slurm to validate the job
  (``sbatch --test-only``) before anything is created, and a rejection at a real submission
  raises :class:`SubmitError` with Slurm's own message out of :meth:`SlurmBackend.create`, or is
  recorded for the status when it happens on a later scale-up.
* **Queue state is polled**, one ``squeue`` for all jobs per period (:meth:`SlurmBackend.poll`).
  A job that ended (``scancel``, walltime, node failure) is dropped from the cluster at once and
  replaced, instead of after ``lost-worker-timeout`` and never (dask-jobqueue); a job that failed
  before any of its workers connected is *not* resubmitted (that would loop) but shown FAILED
  with its log tail.  A failing ``squeue`` keeps the last known states for a grace period, then
  shows UNKNOWN: never "job gone".
* **Nothing is left behind**: :meth:`cleanup` cancels every job the cluster ever submitted that
  may still exist and waits until the queue no longer lists them; :meth:`cancel` does the same
  from any host for a dead supervisor's recorded job ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from distributed.core import Status

from ctrlstack import _proc
from ctrlstack.deploy.backends._jobqueue import JobQueueCluster, SLURMJob
from ctrlstack.deploy.backends.base import Backend, BackendReport
from ctrlstack.deploy.batch import slurm as S
from ctrlstack.deploy.batch.options import BatchOptions, resolve
from ctrlstack.deploy.batch.packing import ScalePlan, group_suffixes, plan_scale
from ctrlstack.deploy.status import JobStatus, WorkerStatus
from ctrlstack.deploy.worker import worker_names
from ctrlstack.errors import Failure, UserError

__all__ = ["SlurmBackend", "SubmitError"]

logger = logging.getLogger("ctrlstack.slurm")

#: How long a failing ``squeue`` keeps the last known job states before they show UNKNOWN.
STATUS_GRACE = 60.0
#: Lines of a failed job's log shown in the status.
TAIL_LINES = 20
#: Longest lead time for a walltime replacement: it is submitted this long (at most half of the
#: job's useful time) before the old job's workers retire, so that the target holds across it.
REPLACE_LEAD = 120.0
#: How long the first job of a scale-up waits for the others to join its array (seconds).
ARRAY_GATHER = 0.02
#: Placeholder scheduler address in ``ctrlstack script`` output and ``--test-only`` checks.
PLACEHOLDER = "tls://SCHEDULER-ADDRESS:PORT"


class SubmitError(UserError):
    """The batch system refused the job; the message is its own (bad partition, memory, ...)."""


class BatchCommandFailed(Failure):
    """A batch command failed for a reason that is not the request's (controller down, ...)."""


def _tail(path: str | None, lines: int = TAIL_LINES) -> str | None:
    if not path:
        return None
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            text = fh.read().decode(errors="replace")
    except OSError:
        return None
    return "\n".join(text.splitlines()[-lines:]) or None


def run_batch(
    argv: list[str],
    *,
    what: str,
    rejection: Callable[[str], str | None] = S.is_rejection,
    scheduler: str = "Slurm",
    timeout: float = 30,
) -> _proc.CommandResult:
    """Run a batch command; a refusal is a :class:`SubmitError`, anything else a failure."""
    try:
        return _proc.run(argv, timeout=timeout)
    except _proc.CommandError as exc:
        reason = rejection(exc.stderr) if exc.returncode is not None else None
        if reason is not None:
            raise SubmitError(f"{scheduler} refused the {what}: {reason}") from None
        raise BatchCommandFailed(str(exc)) from None


class _CtrlstackJob:
    """What ctrlstack changes in a dask-jobqueue ``Job``: its script, submission and
    cancellation through the backend (and :mod:`ctrlstack._proc`), errors reported."""

    backend: SlurmBackend
    workers: int
    name: Any
    scheduler: Any
    job_id: str | None
    status: Status

    def _setup(self, backend: SlurmBackend, kwargs: dict[str, Any]) -> dict[str, Any]:
        # ``processes`` is this job's worker count: the profile's, or fewer for the job that
        # takes the remainder of a scale-up (see ctrlstack.deploy.batch.packing).
        workers = int(kwargs.get("processes") or backend.opts.workers_per_job)
        opts = backend.opts_for(workers)
        kwargs.update(cores=opts.cores, memory=opts.memory, processes=workers)
        kwargs["python"] = opts.python
        self.backend = backend
        self.workers = workers
        return kwargs

    def job_script(self) -> str:
        return self.backend.job_script(
            str(self.scheduler or PLACEHOLDER), str(self.name), workers=self.workers
        )

    async def start(self) -> None:
        name = str(self.name)
        try:
            self.job_id = await self.backend.submit_job(name, str(self.scheduler), self.workers)
        except Exception as exc:
            self.status = Status.failed
            self.backend.submit_failed(name, exc)
            raise
        self.backend.submitted(name, self.job_id, self.workers)
        self.status = Status.running

    async def close(self) -> None:
        if self.job_id and self.status != Status.closed:
            self.backend.cancelling(self.job_id)
            with contextlib.suppress(Exception):
                argv = self.backend.cancel_argv([self.job_id])
                await asyncio.to_thread(_proc.run, argv, check=False)
        self.status = Status.closed


class CtrlstackSlurmJob(_CtrlstackJob, SLURMJob):
    """One Slurm job running ``ctrlstack worker``."""

    def __init__(
        self, scheduler: Any = None, name: Any = None, *, backend: SlurmBackend, **kwargs: Any
    ) -> None:
        kwargs = self._setup(backend, kwargs)
        SLURMJob.__init__(self, scheduler=scheduler, name=name, **kwargs)


class RetiringJobQueueCluster(JobQueueCluster):
    """dask-jobqueue's cluster, retiring workers *by name*, and scaling packed jobs by worker.

    ``SpecCluster`` asks the scheduler to retire the jobs it drops (scale-down, walltime) by
    passing spec names as worker *addresses*, which match nothing: the job is then cancelled with
    its workers' results still on them, and the scheduler recomputes them.  Retiring the job's
    workers by name first moves their data to the remaining workers.

    With several workers per job, :meth:`scale` reaches exactly ``n`` workers
    (:func:`~ctrlstack.deploy.batch.packing.plan_scale`): single workers of a running job are
    retired and the job keeps running; a job is cancelled only when no worker of it is left;
    scale-up adds jobs, the last one with only the remainder.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._retired: set[str] = set()  # workers retired inside jobs that still run
        self._groups: dict[str, list[str]] = {}  # job name -> its workers' names
        super().__init__(*args, **kwargs)

    # ------------------------------------------------------------------ worker names
    def job_worker_names(self, job: Any) -> list[str]:
        """Every worker name of job ``job`` (retired ones included)."""
        name = str(job)
        spec = self.worker_spec.get(job) or self.worker_spec.get(name)
        if spec is not None:
            self._groups[name] = [name + suffix for suffix in spec.get("group", [""])]
        return self._groups.get(name, [name])

    def live_workers(self) -> dict[str, list[str]]:
        """Job name -> its workers that are not retired, in the order the jobs were made."""
        return {
            str(job): [w for w in self.job_worker_names(job) if w not in self._retired]
            for job in self.worker_spec
        }

    def _connected_names(self) -> set[str]:
        scheduler = self.scheduler
        if scheduler is not None and hasattr(scheduler, "workers"):
            return {str(ws.name) for ws in scheduler.workers.values()}
        return {str(w.get("name")) for w in self.scheduler_info.get("workers", {}).values()}

    def scale_plan(self, n: int) -> ScalePlan:
        """What :meth:`scale` would change (not ``plan``: SpecCluster has that property)."""
        return plan_scale(self.live_workers(), self._connected_names(), n, self._per_job)

    @property
    def _per_job(self) -> int:
        return int(self._job_kwargs.get("processes") or 1)

    def new_worker_spec(self) -> dict[Any, Any]:
        """Like ``SpecCluster``'s, but never reuses a name: a job dropped by a scale-down may
        still be closing under its name when the next scale-up asks for one."""
        while True:
            name = self._new_worker_name(self._i)
            self._i += 1
            taken = name in self.worker_spec or name in self.workers or str(name) in self._groups
            if not taken:
                return {name: self.new_spec}

    def _job_spec(self, workers: int) -> dict[Any, Any]:
        ((name, spec),) = self.new_worker_spec().items()
        if workers == self._per_job:
            return {name: spec}
        options = {**spec["options"], "processes": workers}
        sized = {**spec, "options": options, "group": group_suffixes(workers)}
        if workers == 1:
            sized.pop("group")
        return {name: sized}

    # ------------------------------------------------------------------ scaling
    def scale(  # type: ignore[override]  # dask-jobqueue's signature (jobs=)
        self, n: int | None = None, jobs: int = 0, memory: Any = None, cores: Any = None
    ) -> Any:
        if n is None or memory is not None or cores is not None or self._per_job == 1:
            return super().scale(n, jobs=jobs, memory=memory, cores=cores)
        plan = self.scale_plan(int(n))
        for job in plan.drop:
            self.worker_spec.pop(job, None)
        if self.status not in (Status.closing, Status.closed):
            for workers in plan.add:
                self.worker_spec.update(self._job_spec(workers))
        loop = self.loop
        assert loop is not None
        if plan.retire:
            self._retired.update(plan.retire)
            loop.add_callback(self._retire_names, list(plan.retire))
        loop.add_callback(self._correct_state)
        if self.asynchronous:
            from distributed.utils import NoOpAwaitable

            return NoOpAwaitable()
        return None

    async def _retire_names(self, names: list[str]) -> None:
        if self.scheduler_comm is None:
            return
        try:
            await self.scheduler_comm.retire_workers(names=names, close_workers=True)
        except Exception:  # the job still runs; the status shows its workers
            logger.exception("retiring workers %s failed", names)

    async def _correct_state_internal(self) -> None:
        for job in self.worker_spec:
            self.job_worker_names(job)  # remember the names of jobs about to be dropped
        to_close = set(self.workers) - set(self.worker_spec)
        scheduler = self.scheduler
        closing = self.status in (Status.closing, Status.closed)  # stop: nothing to hand over
        if to_close and not closing and scheduler is not None and self.scheduler_comm is not None:
            names = [
                w for job in to_close for w in self.job_worker_names(job) if w not in self._retired
            ]
            if names:
                with contextlib.suppress(Exception):
                    await self.scheduler_comm.retire_workers(names=names, close_workers=True)
        for job in to_close:
            self._retired.difference_update(self._groups.pop(str(job), []))
        await super()._correct_state_internal()


class SlurmBackend(Backend):
    """Workers in Slurm jobs; see the module docstring."""

    name: ClassVar[str] = "slurm"
    job_cls: ClassVar[type[CtrlstackSlurmJob]] = CtrlstackSlurmJob
    cluster: JobQueueCluster | None

    def __init__(self, spec: Any, **kwargs: Any) -> None:
        super().__init__(spec, **kwargs)
        self.opts: BatchOptions = resolve(spec, cluster_name=self.cluster_name)
        self._jobs: dict[str, JobStatus] = {}  # job id -> last known status
        self._names: dict[str, str] = {}  # job id -> dask-jobqueue job name
        self._connected: set[str] = set()  # job names whose workers connected once
        self._cancelled: set[str] = set()  # job ids we cancelled ourselves
        self._submitted: list[str] = []  # every job id, for clean-up
        self._errors: list[JobStatus] = []  # submissions that failed
        self._status_failed_since: float | None = None
        self._replaced: set[str] = set()  # job ids whose walltime replacement was submitted
        # jobs to submit together: name, workers, the future of its job id
        self._pending: list[tuple[str, int | None, asyncio.Future[str]]] = []
        self._sacct = True

    # ------------------------------------------------------------------ paths and script
    @property
    def credentials_dir(self) -> str:
        """The cluster's credentials directory (a path the job exports, never the keys)."""
        ca = getattr(self.security, "tls_ca_file", None)
        if ca:
            return str(Path(ca).parent)
        if self.workdir is not None:
            return str(Path(self.workdir) / "tls")  # where the registry keeps them
        raise UserError("the slurm backend needs the cluster's TLS credentials (security=)")

    @property
    def log_directory(self) -> str:
        if self.opts.log_directory:
            return os.path.expanduser(os.path.expandvars(self.opts.log_directory))
        if self.workdir is None:
            raise UserError("the slurm backend needs a cluster directory (workdir=) for job logs")
        return str(Path(self.workdir) / "jobs")

    def script_path(self, name: str) -> Path:
        assert self.workdir is not None
        directory = Path(self.workdir) / "scripts"
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        return directory / f"{name}.sh"

    def opts_for(self, workers: int | None) -> BatchOptions:
        """The options of a job with ``workers`` workers: the profile's, or for the smaller job
        that takes a scale-up's remainder, its share of the job's CPUs and memory."""
        opts = self.opts
        per_job = opts.workers_per_job
        if workers is None or workers == per_job:
            return opts
        return dataclasses.replace(
            opts,
            workers_per_job=workers,
            cores=max(workers, opts.cores * workers // per_job),
            memory=opts.memory * workers // per_job,
        )

    @staticmethod
    def render_script(opts: BatchOptions, **kwargs: Any) -> str:
        """This scheduler's script template (PBS's backend swaps in its ``#PBS`` one)."""
        return S.job_script(opts, **kwargs)

    def job_script(self, scheduler: str, name: str, workers: int | None = None) -> str:
        """The exact script submitted for job ``name`` (``ctrlstack script`` prints it)."""
        return self.render_script(
            self.opts_for(workers),
            scheduler=scheduler,
            name=name,
            credentials=self.credentials_dir,
            log_directory=self.log_directory,
            cluster=self.cluster_name,
        )

    # ------------------------------------------------------------------ submission
    #: Whether several jobs of one scale-up may go out as one array (``slurm.array``).
    array_supported: ClassVar[bool] = True

    async def submit_job(self, name: str, scheduler: str, workers: int | None = None) -> str:
        """Submit job ``name``; jobs asked for in the same moment (one scale-up) go out as one
        ``sbatch --array`` per job size when the profile allows, each getting its task's id
        (``123_4``)."""
        loop = asyncio.get_running_loop()
        if not (self.opts.array and self.array_supported):
            return await asyncio.to_thread(self._submit_one, name, scheduler, workers)
        future: asyncio.Future[str] = loop.create_future()
        self._pending.append((name, workers, future))
        if len(self._pending) == 1:
            # Every Job of one _correct_state starts in the same loop iteration: collect them.
            loop.call_later(ARRAY_GATHER, lambda: asyncio.ensure_future(self._flush(scheduler)))
        return await future

    def _submit_one(self, name: str, scheduler: str, workers: int | None = None) -> str:
        script = self.script_path(name)
        script.write_text(self.job_script(scheduler, name, workers))
        return self.submit(str(script), name)

    async def _flush(self, scheduler: str) -> None:
        pending, self._pending = self._pending, []
        sizes: dict[int | None, list[tuple[str, asyncio.Future[str]]]] = {}
        for name, workers, future in pending:
            sizes.setdefault(workers, []).append((name, future))
        for workers, batch in sizes.items():
            names = [name for name, _ in batch]
            try:
                if len(names) == 1:
                    ids = [await asyncio.to_thread(self._submit_one, names[0], scheduler, workers)]
                else:
                    ids = await asyncio.to_thread(self._submit_array, names, scheduler, workers)
            except Exception as exc:  # noqa: BLE001 - every waiting job gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), job_id in zip(batch, ids, strict=True):
                if not future.done():
                    future.set_result(job_id)

    def _submit_array(
        self, names: list[str], scheduler: str, workers: int | None = None
    ) -> list[str]:
        script = self.script_path(f"{names[0]}-array{len(names)}")
        script.write_text(self.array_script(names, scheduler, workers))
        array_id = self.submit(str(script), f"array of {len(names)} jobs")
        return self.array_task_ids(array_id, len(names))

    def array_script(self, names: list[str], scheduler: str, workers: int | None = None) -> str:
        """One array job whose task *i* runs the workers of job ``names[i]``."""
        return self.render_script(
            self.opts_for(workers),
            scheduler=scheduler,
            name=names[0],
            credentials=self.credentials_dir,
            log_directory=self.log_directory,
            cluster=self.cluster_name,
            array_names=names,
        )

    @staticmethod
    def array_task_ids(array_id: str, count: int) -> list[str]:
        """The ids the queue shows for the tasks of array ``array_id`` (``123_4``)."""
        return S.array_task_ids(array_id, count)

    # ------------------------------------------------------------------ scheduler commands
    def submit(self, script: str, name: str) -> str:
        """Submit ``script``; the job id (raises :class:`SubmitError` with Slurm's message)."""
        result = run_batch(S.sbatch_argv(script), what=f"job {name}")
        return S.parse_sbatch(result.stdout)

    @staticmethod
    def cancel_argv(job_ids: Sequence[str]) -> list[str]:
        return S.scancel_argv(job_ids)

    def job_log(self, job_id: str) -> str:
        """Path of a job's stdout/stderr file (``ctrlstack logs NAME --job ID``)."""
        return S.log_path(self.log_directory, self.opts.job_name, job_id)

    # ------------------------------------------------------------------ before anything runs
    def check(self) -> None:
        """Ask Slurm whether it would accept the job (``sbatch --test-only``): a bad partition,
        too much memory or an unknown option is refused here, before anything exists."""
        if shutil.which("sbatch") is None:
            raise BatchCommandFailed(
                "sbatch is not on PATH: the slurm backend needs Slurm's client commands (and "
                "SLURM_CONF, or /etc/slurm/slurm.conf) on this host"
            )
        import tempfile

        with tempfile.TemporaryDirectory(prefix="ctrlstack-check-") as tmp:
            script = Path(tmp) / "check.sh"
            script.write_text(
                S.job_script(
                    self.opts,
                    scheduler=PLACEHOLDER,
                    name="check",
                    credentials=tmp,
                    log_directory=tmp,
                    cluster=self.cluster_name,
                )
            )
            run_batch(S.sbatch_argv(str(script), test_only=True), what="job")

    # ------------------------------------------------------------------ in the supervisor
    async def create(self) -> JobQueueCluster:
        self.check()
        Path(self.log_directory).mkdir(mode=0o700, parents=True, exist_ok=True)
        opts = self.opts
        workers = opts.workers_per_job if self.spec.workers == "auto" else int(self.spec.workers)
        self.check_scale(workers)
        scheduler_options: dict[str, Any] = {
            "port": 0,
            "dashboard_address": "127.0.0.1:0" if self.spec.dashboard else None,
            "dashboard": bool(self.spec.dashboard),
        }
        if opts.interface:
            scheduler_options["interface"] = opts.interface
        else:
            from ctrlstack.deploy.procs import hostname

            scheduler_options["host"] = hostname()
        cluster = RetiringJobQueueCluster(
            n_workers=workers,
            job_cls=self.job_cls,
            security=self.security,
            protocol="tls://",
            scheduler_options=scheduler_options,
            asynchronous=True,
            name=self.cluster_name,
            silence_logs=logging.WARNING,
            # Job keywords: the shape makes dask-jobqueue name a job's workers like
            # `ctrlstack worker` does (its "-<i>" group), the rest is ctrlstack's.
            cores=opts.cores,
            memory=opts.memory,
            processes=opts.workers_per_job,
            backend=self,
        )
        self.cluster = cluster
        try:
            await cluster
        except BaseException:
            await self._abandon(cluster)
            raise
        return cluster

    async def _abandon(self, cluster: JobQueueCluster) -> None:
        """A start that failed: close what exists and cancel whatever was submitted."""
        for job in list(cluster.workers.values()):
            if job.status == Status.created:
                job.status = Status.failed
        with contextlib.suppress(Exception):
            closing = cluster.close()
            if closing is not None:
                await asyncio.wait_for(closing, 10)
        await self.cleanup()

    def check_scale(self, n: int) -> None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise UserError(f"number of workers must be an integer >= 0, got {n!r}")
        limit = self.max_workers
        cluster = self.cluster
        if (
            self.opts.max_jobs is not None
            and isinstance(cluster, RetiringJobQueueCluster)
            and self.opts.workers_per_job > 1
        ):
            # Partly used jobs are not refilled: count the jobs this scale would leave queued.
            jobs = cluster.scale_plan(n).jobs_after()
            if jobs > self.opts.max_jobs:
                raise UserError(
                    f"{n} workers need {jobs} jobs here (partly used jobs are not refilled), but "
                    f"profile {self.spec.profile!r} allows at most {self.opts.max_jobs} queued "
                    f"jobs (slurm.max-jobs): scale down first, or ask for fewer workers"
                )
        if limit is not None and n > limit:
            raise UserError(
                f"{n} workers need {math.ceil(n / self.opts.workers_per_job)} jobs of "
                f"{self.opts.workers_per_job} worker(s), but profile {self.spec.profile!r} "
                f"allows at most {self.opts.max_jobs} queued jobs (slurm.max-jobs): at most "
                f"{limit} workers"
            )

    @property
    def max_workers(self) -> int | None:
        if self.opts.max_jobs is None:
            return None
        return self.opts.max_jobs * self.opts.workers_per_job

    # ------------------------------------------------------------------ job bookkeeping
    def submitted(self, name: str, job_id: str, workers: int | None = None) -> None:
        self._names[job_id] = name
        self._submitted.append(job_id)
        self._jobs[job_id] = JobStatus(
            job_id=job_id,
            state="PENDING",
            workers=workers or self.opts.workers_per_job,
            submitted=time.time(),
            log=self.job_log(job_id),
        )

    def submit_failed(self, name: str, exc: BaseException) -> None:
        logger.error("submitting job %s failed: %s", name, exc)
        self._errors = [
            *self._errors[-4:],
            JobStatus(job_id=f"({name})", state="FAILED", reason=str(exc), submitted=time.time()),
        ]
        cluster = self.cluster
        if cluster is not None:
            # Take the failed job out of the plan, so it is neither retried in a loop nor
            # waited for; the status shows the error.
            cluster.worker_spec.pop(name, None)

    def cancelling(self, job_id: str) -> None:
        self._cancelled.add(job_id)

    def job_ids(self) -> list[str]:
        return [
            job_id
            for job_id, status in self._jobs.items()
            if status.state not in S.FINISHED and job_id in self._names
        ]

    # ------------------------------------------------------------------ status
    def report(self) -> BackendReport:
        cluster = self.cluster
        workers: list[WorkerStatus] = []
        ids = {name: job_id for job_id, name in self._names.items()}
        live = self._live_workers()
        if cluster is not None:
            for name, names in live.items():
                job_id = ids.get(name)
                for wname in names:
                    workers.append(
                        WorkerStatus(
                            name=wname,
                            state="pending",
                            threads=self.opts.threads or 0,
                            task_threads=self.opts.task_threads or self.opts.threads or 0,
                            job_id=job_id,
                        )
                    )
        queued = [s for j, s in self._jobs.items() if s.state not in S.FINISHED]
        ended = [s for j, s in self._jobs.items() if s.state in S.FINISHED][-10:]
        return BackendReport(
            requested=sum(len(names) for names in live.values()),
            max_workers=self.max_workers,
            threads=self.opts.threads or 0,
            task_threads=self.opts.task_threads or self.opts.threads or 0,
            policy=self.opts.policy,
            pinned=self.opts.policy != "none",
            workers=workers,
            jobs=[*queued, *ended, *self._errors],
        )

    def _live_workers(self) -> dict[str, list[str]]:
        """Job name -> its workers not retired (every planned job, connected or not)."""
        cluster = self.cluster
        if cluster is None:
            return {}
        if isinstance(cluster, RetiringJobQueueCluster):
            return cluster.live_workers()
        per_job = self.opts.workers_per_job
        return {str(job): worker_names(str(job), per_job) for job in cluster.worker_spec}

    def _size(self, name: str) -> int:
        """How many workers job ``name`` still has (a replacement of a partly used job does not
        bring back the workers scaled away)."""
        return len(self._live_workers().get(name, ())) or self.opts.workers_per_job

    def _replacement(self, size: int) -> dict[Any, Any]:
        """A new job spec of ``size`` workers."""
        cluster = self.cluster
        assert cluster is not None
        if isinstance(cluster, RetiringJobQueueCluster):
            return cluster._job_spec(size)
        return dict(cluster.new_worker_spec())

    # ------------------------------------------------------------------ polling
    def query(self, job_ids: Sequence[str]) -> dict[str, JobStatus] | None:
        """One squeue for ``job_ids`` (+ sacct/scontrol for the ones it no longer lists).

        ``None`` when the queue could not be asked (the caller keeps what it knew).
        """
        if not job_ids:
            return {}
        try:
            result = _proc.run(S.squeue_argv(job_ids), timeout=20, check=False)
        except _proc.CommandError:
            return None
        if result.returncode != 0 and not S.squeue_gone(result.stderr):
            return None
        found = S.parse_squeue(result.stdout) if result.returncode == 0 else {}
        missing = [j for j in job_ids if j not in found]
        if missing and self._sacct:
            try:
                acct = _proc.run(S.sacct_argv(missing), timeout=20, check=False)
            except _proc.CommandError:
                acct = None
            if acct is None or acct.returncode != 0:
                self._sacct = False  # accounting disabled here: do not ask again
            else:
                found.update({k: v for k, v in S.parse_sacct(acct.stdout).items() if k in missing})
        for job_id in [j for j in job_ids if j not in found]:
            try:
                shown = _proc.run(S.scontrol_argv(job_id), timeout=20, check=False)
            except _proc.CommandError:
                continue
            status = S.parse_scontrol(shown.stdout) if shown.returncode == 0 else None
            # Unknown even to scontrol: purged after MinJobAge; it ran nothing any more.
            found[job_id] = status or JobStatus(
                job_id=job_id, state="COMPLETED", reason="no longer known to Slurm"
            )
        return found

    async def poll(self) -> None:
        ids = [j for j, s in self._jobs.items() if s.state not in S.FINISHED]
        self._note_connected()
        answer = await asyncio.to_thread(self.query, ids)
        now = time.time()
        if answer is None:
            self._status_failed_since = self._status_failed_since or now
            if now - self._status_failed_since > STATUS_GRACE:
                for job_id in ids:
                    self._jobs[job_id].state = "UNKNOWN"
                    self._jobs[job_id].reason = "squeue has been failing"
            return
        self._status_failed_since = None
        for job_id, fresh in answer.items():
            old = self._jobs.get(job_id)
            if old is None:
                continue
            old.state, old.reason, old.node = fresh.state, fresh.reason, fresh.node
            old.start_estimate, old.end_time = fresh.start_estimate, fresh.end_time
            if fresh.state == "FAILED" or (
                fresh.state in S.FINISHED and self._names.get(job_id) not in self._connected
            ):
                old.log_tail = _tail(old.log)
        await self._replace_ended([j for j in ids if self._jobs[j].state in S.FINISHED])
        await self._walltime(now)

    async def _walltime(self, now: float) -> None:
        """Hold the target across walltime ends: submit a replacement ``lead`` seconds before a
        job's workers must retire, then retire them (``retire-before`` seconds before the end)
        by taking the job out of the plan, which makes Dask move their data first."""
        cluster = self.cluster
        if cluster is None or cluster.status in (Status.closing, Status.closed):
            return
        opts = self.opts
        lead = min(REPLACE_LEAD, (opts.walltime - opts.retire_before) / 2)
        changed = False
        for job_id, status in list(self._jobs.items()):
            name = self._names.get(job_id)
            if status.state != "RUNNING" or status.end_time is None or name is None:
                continue
            if name not in cluster.worker_spec:
                continue
            left = status.end_time - now
            if left <= opts.retire_before + lead and job_id not in self._replaced:
                logger.info("job %s ends in %.0f s: submitting its replacement", job_id, left)
                self._replaced.add(job_id)
                cluster.worker_spec.update(self._replacement(self._size(name)))
                changed = True
            if left <= opts.retire_before:
                logger.info("job %s ends in %.0f s: retiring its workers", job_id, left)
                cluster.worker_spec.pop(name, None)
                self._cancelled.add(job_id)
                changed = True
        if changed:
            await cluster._correct_state()

    def _note_connected(self) -> None:
        cluster = self.cluster
        if cluster is None or cluster.scheduler is None:
            return
        names = {str(ws.name) for ws in cluster.scheduler.workers.values()}
        for job_name, workers in self._live_workers().items():
            if any(w in names for w in workers):
                self._connected.add(job_name)

    async def _replace_ended(self, ended: Sequence[str]) -> None:
        """Drop ended jobs from the cluster now; submit replacements for the ones that ran."""
        cluster = self.cluster
        if cluster is None or not ended or cluster.status in (Status.closing, Status.closed):
            return
        replace: list[int] = []
        for job_id in ended:
            name = self._names.get(job_id)
            if job_id in self._cancelled or name is None or name not in cluster.worker_spec:
                continue  # we cancelled it (scale-down, stop) or it is gone from the plan
            size = self._size(name)
            cluster.worker_spec.pop(name, None)
            job = cluster.workers.pop(name, None)
            if job is not None:
                job.status = Status.closed
            status = self._jobs[job_id]
            if status.state == "FAILED" and name not in self._connected:
                logger.error("job %s failed before its workers connected; not resubmitted", job_id)
                continue
            logger.warning("job %s ended (%s); submitting a replacement", job_id, status.state)
            replace.append(size)
        if replace:
            for size in replace:
                cluster.worker_spec.update(self._replacement(size))
            await cluster._correct_state()

    # ------------------------------------------------------------------ clean-up
    async def cleanup(self) -> None:
        """Cancel every job this cluster submitted that may still exist; wait until gone."""
        ids = [
            j for j in self._submitted if self._jobs.get(j, JobStatus(j)).state not in S.FINISHED
        ]
        if ids:
            await asyncio.to_thread(self.cancel, ids, {})
        for job_id in ids:
            self._jobs[job_id].state = "CANCELLED"

    @classmethod
    def cancel(cls, job_ids: Sequence[str], options: dict[str, Any], wait: float = 10) -> None:
        """Cancel ``job_ids`` (from any host) and wait up to ``wait`` s until squeue no longer
        lists them as pending or running."""
        ids = list(job_ids)
        if not ids:
            return
        _proc.run(cls.cancel_argv(ids), timeout=30, check=False)
        cls._wait_gone(ids, wait)

    @staticmethod
    def _wait_gone(ids: list[str], wait: float) -> None:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                result = _proc.run(
                    ["squeue", "--noheader", "--array", f"--jobs={','.join(ids)}", "--format=%i"],
                    timeout=20,
                    check=False,
                )
            except _proc.CommandError:
                return
            if result.returncode != 0 or not result.stdout.strip():
                return
            time.sleep(0.1)
