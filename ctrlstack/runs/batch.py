"""Submitted runs as batch jobs: one job whose script runs the run's executor (Slurm, PBS).

The job is built from the same parts as a cluster's worker jobs — :func:`~ctrlstack.deploy.batch.
options.resolve` for the profile's ``slurm:``/``pbs:`` section, the schedulers' ``directives``
builders, :func:`~ctrlstack.deploy.batch.script.render_script` for the text — so a profile's
partition, account, walltime, skip-directives, prologue and module loads (the profile's stack's
first) apply to ``ctrlstack submit`` exactly as to its clusters.  Only two things differ:

* **Size**: the job holds the whole cluster the profile describes (``workers`` workers of
  ``threads`` CPUs; jobs × ``cores`` and × ``memory``), because inside it the executor starts
  that cluster as a *local* one planned on the job's cpuset, beside the notebook's kernel.
* **Log**: the job's stdout/stderr is the run's log (``<stem>.<run id>.log`` beside the
  executed notebook), so ``ctrlstack logs RUN`` reads the same file for local and batch runs.

Everything here but :func:`submit_run` and :func:`refresh` is pure (tested without a queue).
A refusal by ``sbatch``/``qsub`` raises :class:`~ctrlstack.deploy.backends.slurm.SubmitError`
with the scheduler's own message; the caller then drops the run's record and script.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ctrlstack.errors import UserError

from .record import RunRecord, load, runs_dir, save

if TYPE_CHECKING:
    from ctrlstack.config import ClusterSpec
    from ctrlstack.deploy.batch.options import BatchOptions
    from ctrlstack.deploy.status import JobStatus

__all__ = [
    "SCHEDULERS",
    "job_options",
    "preview",
    "refresh",
    "run_directives",
    "run_script",
    "submit_run",
]

#: Batch backends whose runs this module submits (other backends may offer ``submit_run``).
SCHEDULERS = ("slurm", "pbs")

#: Characters a log path may not hold in a directive: whitespace ends the directive's value,
#: ``%`` starts a Slurm filename pattern, ``:`` separates host and path for PBS ``-o``.
_UNSAFE_PATH = re.compile(r"[\s%]")


def job_options(spec: ClusterSpec, record: RunRecord) -> BatchOptions:
    """The profile's batch options, resized to hold the profile's whole cluster in one job."""
    from ctrlstack.deploy.batch.options import resolve

    opts = resolve(spec, cluster_name=f"run-{record.id}")
    workers = spec.workers if isinstance(spec.workers, int) else opts.workers_per_job
    jobs = max(1, math.ceil(workers / opts.workers_per_job))
    return dataclasses.replace(
        opts,
        cores=opts.cores * jobs,
        memory=opts.memory * jobs,
        workers_per_job=opts.workers_per_job * jobs,
    )


def _log_path(record: RunRecord) -> str:
    log = record.log
    if _UNSAFE_PATH.search(log):
        raise UserError(
            f"output directory {record.output_dir!r}: a batch job's log path may not contain "
            "whitespace or '%'; choose another directory with --output-dir"
        )
    return log


def run_directives(opts: BatchOptions, record: RunRecord) -> list[str]:
    """The scheduler's directives for the run's job, its output going to the run's log."""
    from ctrlstack.deploy.batch import pbs as P
    from ctrlstack.deploy.batch import slurm as S

    log = _log_path(record)
    if opts.scheduler == "slurm":
        items = S.directives(opts, log_directory=record.output_dir)
        return [f"--output={log}" if d.startswith("--output=") else d for d in items]
    if opts.scheduler == "pbs":
        items = P.directives(opts, log_directory=record.output_dir)
        return [f"-o {log}" if d.startswith("-o ") else d for d in items]
    raise UserError(f"scheduler {opts.scheduler!r} cannot run submitted jobs; use slurm or pbs")


def run_script(
    opts: BatchOptions, record: RunRecord, argv: Sequence[str], env: Mapping[str, str]
) -> str:
    """The exact job script of a run: directives, the site prologue and module loads, the
    stack's variables, then ``exec <executor argv>`` (every word quoted)."""
    from ctrlstack.deploy.batch.script import render_script

    return render_script(
        directive_prefix="#SBATCH" if opts.scheduler == "slurm" else "#PBS",
        directives=run_directives(opts, record),
        skip=opts.skip_directives,
        prologue=opts.prologue,
        modules=opts.modules,
        env=env,
        command=argv,
        cluster=f"run-{record.id}",
        workers=opts.workers_per_job,
    )


def script_path(record: RunRecord, state_dir: pathlib.Path | None = None) -> pathlib.Path:
    """Where the submitted script is kept (beside the record, private like it)."""
    return runs_dir(state_dir) / f"{record.id}.sh"


def preview(
    spec: ClusterSpec, record: RunRecord, argv: Sequence[str], env: Mapping[str, str]
) -> str:
    """What ``ctrlstack submit --script`` prints: the job script that would be submitted."""
    return run_script(job_options(spec, record), record, argv, env)


def submit_run(
    record: RunRecord,
    spec: ClusterSpec,
    argv: list[str],
    env: Mapping[str, str],
    state_dir: pathlib.Path | None = None,
) -> str:
    """Write the run's job script and submit it; the job id.

    Raises ``SubmitError`` (the scheduler's own reason) when the queue refuses the job, and
    ``BatchCommandFailed`` when the command cannot run; in both cases no job exists.
    """
    from ctrlstack.deploy.backends.slurm import run_batch
    from ctrlstack.deploy.batch import pbs as P
    from ctrlstack.deploy.batch import slurm as S

    opts = job_options(spec, record)
    text = run_script(opts, record, argv, env)
    path = script_path(record, state_dir)
    path.write_text(text)
    path.chmod(0o700)
    if opts.scheduler == "slurm":
        result = run_batch(S.sbatch_argv(str(path)), what=f"run {record.id}")
        return S.parse_sbatch(result.stdout)
    result = run_batch(
        P.qsub_argv(str(path)), what=f"run {record.id}", rejection=P.is_rejection, scheduler="PBS"
    )
    return P.parse_qsub(result.stdout)


def _query(scheduler: str, job_ids: list[str]) -> dict[str, JobStatus] | None:
    """One ``squeue``/``qstat`` call for ``job_ids``; None when the queue cannot answer."""
    from ctrlstack import _proc
    from ctrlstack.deploy.batch import pbs as P
    from ctrlstack.deploy.batch import slurm as S

    argv = S.squeue_argv(job_ids) if scheduler == "slurm" else P.qstat_argv(job_ids)
    try:
        result = _proc.run(argv, timeout=20, check=False)
    except (_proc.CommandError, OSError):
        return None
    gone = S.squeue_gone if scheduler == "slurm" else P.qstat_gone
    if result.returncode != 0 and not gone(result.stderr):
        return None
    try:
        found = (
            S.parse_squeue(result.stdout) if scheduler == "slurm" else P.parse_qstat(result.stdout)
        )
    except ValueError:
        return None
    return found


def judge_job(record: RunRecord, job: JobStatus | None) -> RunRecord:
    """A batch run still pending/running in its record whose job has ended (or is no longer
    known to the queue) ended without its executor recording it: cancelled or failed (pure)."""
    if record.state not in ("pending", "running"):
        return record
    state = job.state if job is not None else "COMPLETED"
    if state not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
        return record
    record.state = "cancelled" if state == "CANCELLED" else "failed"
    why = {"TIMEOUT": "the job reached its walltime", "CANCELLED": "the job was cancelled"}
    reason = job.reason if job is not None and job.reason else None
    record.error = record.error or (
        why.get(state, "the job ended without the run recording its end")
        + (f" ({reason})" if reason else "")
    )
    return record


def refresh(records: list[RunRecord], state_dir: pathlib.Path | None = None) -> list[RunRecord]:
    """Judge unfinished batch runs from their queue (one query per scheduler); save changes.

    A queue that does not answer changes nothing (the run keeps its recorded state).
    """
    for scheduler in SCHEDULERS:
        active = [
            r
            for r in records
            if r.mode == "batch"
            and r.job_id
            and (r.scheduler or "slurm") == scheduler
            and r.state in ("pending", "running")
        ]
        if not active:
            continue
        found = _query(scheduler, [str(r.job_id) for r in active])
        if found is None:
            continue
        ids = {r.id for r in active}
        for i, r in enumerate(records):
            if r.id not in ids:
                continue
            if judge_job(dataclasses.replace(r), found.get(str(r.job_id))).state == r.state:
                continue
            # The executor may have written its end since we read the record: re-read it.
            try:
                current = load(r.id, state_dir)
            except UserError:
                continue
            if current.state in ("pending", "running"):
                current = judge_job(current, found.get(str(r.job_id)))
                save(current, state_dir)
            records[i] = current
    return records
