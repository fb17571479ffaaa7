"""Slurm as pure functions: sbatch/squeue/scontrol/sacct/scancel argv and their output parsers.

Queue state comes from **one** ``squeue`` call per poll for every job of the cluster:
``--states=all`` keeps jobs that ended in the last ``MinJobAge`` seconds (default 300) visible
with their final state, ``--array`` gives one line per array task.  Jobs missing from that
answer ended longer ago: ``sacct`` says how (where accounting runs; on the CI Slurm it answers
"accounting storage is disabled", which :func:`parse_sacct` treats as "no answer"), and failing
that ``scontrol show job``.  ``squeue`` answers "Invalid job id specified" (exit 1) when *none*
of the ids is known any more: that is an empty queue, not a failure (:func:`squeue_gone`).

Times: squeue prints local time without zone (``2026-11-25T15:11:34``); it is read as this host's
local time, which is what slurmctld and the login node share in practice.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from datetime import datetime

from ctrlstack.deploy.status import JobStatus

from .options import BatchOptions, format_walltime

__all__ = [
    "SQUEUE_FORMAT",
    "array_task_ids",
    "directives",
    "is_rejection",
    "log_pattern",
    "parse_sacct",
    "parse_sbatch",
    "parse_scontrol",
    "parse_squeue",
    "sacct_argv",
    "sbatch_argv",
    "scancel_argv",
    "scontrol_argv",
    "squeue_argv",
    "squeue_gone",
]

#: Job id (``123`` or ``123_4``), state, reason, nodes, start (estimate while pending), end.
SQUEUE_FORMAT = "%i|%T|%r|%N|%S|%e"

#: Slurm's long state names -> the states :class:`JobStatus` shows.
_STATES = {
    "PENDING": "PENDING",
    "CONFIGURING": "PENDING",
    "REQUEUED": "PENDING",
    "REQUEUE_HOLD": "PENDING",
    "REQUEUE_FED": "PENDING",
    "RESV_DEL_HOLD": "PENDING",
    "SUSPENDED": "PENDING",
    "RUNNING": "RUNNING",
    "RESIZING": "RUNNING",
    "SIGNALING": "RUNNING",
    "STAGE_OUT": "COMPLETING",
    "COMPLETING": "COMPLETING",
    "COMPLETED": "COMPLETED",
    "CANCELLED": "CANCELLED",
    "FAILED": "FAILED",
    "BOOT_FAIL": "FAILED",
    "NODE_FAIL": "FAILED",
    "OUT_OF_MEMORY": "FAILED",
    "DEADLINE": "TIMEOUT",
    "PREEMPTED": "CANCELLED",
    "REVOKED": "CANCELLED",
    "SPECIAL_EXIT": "FAILED",
    "STOPPED": "RUNNING",
    "TIMEOUT": "TIMEOUT",
}

#: States after which a job runs nothing any more.
FINISHED = frozenset({"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT"})


def state_of(raw: str) -> str:
    """Map a Slurm state (``CANCELLED by 0`` included) onto :data:`JOB_STATES`."""
    word = raw.strip().split()[0].rstrip("+").upper() if raw.strip() else ""
    return _STATES.get(word, "UNKNOWN")


def parse_time(text: str) -> float | None:
    """``2026-11-25T15:11:34`` (local time) -> epoch seconds; ``N/A``/``Unknown``/``NONE`` -> None."""
    text = text.strip()
    if not text or text.upper() in ("N/A", "UNKNOWN", "NONE", "(NULL)", "INVALID"):
        return None
    try:
        return time.mktime(datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").timetuple())
    except ValueError:
        return None


# ------------------------------------------------------------------------------ sbatch
def log_pattern(directory: str, job_name: str, *, array: bool) -> str:
    """The ``--output`` path: one file per job (stdout and stderr together)."""
    return f"{directory.rstrip('/')}/{job_name}-{'%A_%a' if array else '%j'}.out"


def log_path(directory: str, job_name: str, job_id: str) -> str:
    """The log file of ``job_id`` (``123`` or ``123_4``) under :func:`log_pattern`."""
    return f"{directory.rstrip('/')}/{job_name}-{job_id}.out"


def one_node(
    *,
    job_name: str,
    partition: str | None,
    account: str | None,
    qos: str | None,
    walltime: int,
    cores: int,
    memory_mb: int,
    output: str,
) -> list[str]:
    """``#SBATCH`` options of a one-node, one-task job: the worker jobs' and the supervisor's."""
    out = [f"--job-name={job_name}"]
    if partition:
        out.append(f"--partition={partition}")
    if account:
        out.append(f"--account={account}")
    if qos:
        out.append(f"--qos={qos}")
    return [
        *out,
        f"--time={format_walltime(walltime)}",
        "--nodes=1",
        "--ntasks=1",
        f"--cpus-per-task={cores}",
        f"--mem={memory_mb}M",
        f"--output={output}",
    ]


def directives(opts: BatchOptions, *, log_directory: str, array: int | None = None) -> list[str]:
    """``#SBATCH`` options (without the prefix) for one job (or one array of ``array`` tasks)."""
    out = one_node(
        job_name=opts.job_name,
        partition=opts.queue,
        account=opts.account,
        qos=opts.qos,
        walltime=opts.walltime,
        cores=opts.cores,
        memory_mb=opts.memory_mb,
        output=log_pattern(log_directory, opts.job_name, array=array is not None),
    )
    if array is not None:
        if array < 1:
            raise ValueError(f"an array needs at least one task, got {array}")
        out.append(f"--array=0-{array - 1}")
    out += list(opts.extra_directives)
    return out


def sbatch_argv(script: str, *, test_only: bool = False) -> list[str]:
    """Submit ``script`` (a path); ``test_only`` asks Slurm to validate without submitting."""
    return ["sbatch", "--test-only", script] if test_only else ["sbatch", "--parsable", script]


def parse_sbatch(stdout: str) -> str:
    """``--parsable`` output (``123`` or ``123;cluster``) -> ``"123"``."""
    first = stdout.strip().splitlines()[0] if stdout.strip() else ""
    job_id = first.split(";")[0].strip()
    if not job_id.isdigit():
        raise ValueError(f"cannot read a job id from sbatch output {stdout!r}")
    return job_id


#: sbatch's refusal lines; ``--test-only`` words them "allocation failure: ...".
_REJECTION = re.compile(r"(?:sbatch: error: |^allocation failure: )(.*)", re.MULTILINE)


def is_rejection(stderr: str) -> str | None:
    """Slurm's own message when sbatch refused the job (bad partition, memory, account ...).

    Returns the ``sbatch: error:`` lines joined (the last one, "Batch job submission failed: ...",
    is the reason), or ``unrecognized option`` lines; None when stderr says nothing of the kind
    (a controller that does not answer is a failure, not the user's to fix).
    """
    lines = [m.group(1).strip() for m in _REJECTION.finditer(stderr)]
    lines += [
        line.strip()
        for line in stderr.splitlines()
        if "unrecognized option" in line or "invalid option" in line
    ]
    text = "; ".join(line for line in lines if line)
    unreachable = ("Unable to contact slurm controller", "Socket timed out", "Connection refused")
    if not text or any(u in text for u in unreachable):
        return None
    return text


# ------------------------------------------------------------------------------ squeue
def squeue_argv(job_ids: Sequence[str]) -> list[str]:
    """One call for every job: final states of recently ended jobs included."""
    return [
        "squeue",
        "--noheader",
        "--array",
        "--states=all",
        f"--jobs={','.join(job_ids)}",
        f"--format={SQUEUE_FORMAT}",
    ]


def squeue_gone(stderr: str) -> bool:
    """squeue's exit 1 for "none of these ids exists any more" (not a failure)."""
    return "Invalid job id specified" in stderr


def parse_squeue(text: str, *, now: float | None = None) -> dict[str, JobStatus]:
    """``squeue --format=SQUEUE_FORMAT`` lines -> ``{job_id: JobStatus}``."""
    out: dict[str, JobStatus] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 6 or not parts[0]:
            continue
        job_id, raw_state, reason, nodes, start, end = parts
        state = state_of(raw_state)
        status = JobStatus(job_id=job_id, state=state)
        if reason and reason not in ("None", "(null)") and state != "RUNNING":
            status.reason = reason
        if nodes and state in ("RUNNING", "COMPLETING"):
            status.node = nodes
        started = parse_time(start)
        if state == "PENDING":
            status.start_estimate = started
        ended = parse_time(end)
        if state in ("RUNNING", "COMPLETING") or state in FINISHED:
            status.end_time = ended
        out[job_id] = status
    return out


# ------------------------------------------------------------------------------ finished jobs
def sacct_argv(job_ids: Sequence[str]) -> list[str]:
    return [
        "sacct",
        "--noheader",
        "--parsable2",
        "--allocations",
        f"--jobs={','.join(job_ids)}",
        "--format=JobID,State,Reason,NodeList,Start,End,ExitCode",
    ]


def parse_sacct(text: str) -> dict[str, JobStatus]:
    """``sacct --parsable2`` lines -> states (empty when accounting is disabled)."""
    out: dict[str, JobStatus] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 7 or not parts[0]:
            continue
        job_id, raw_state, reason, nodes, _start, end, code = parts[:7]
        status = JobStatus(job_id=job_id, state=state_of(raw_state))
        why = [w for w in (reason if reason not in ("None", "") else "",) if w]
        if code and code != "0:0":
            why.append(f"exit code {code}")
        status.reason = "; ".join(why) or None
        status.node = nodes if nodes and nodes != "None assigned" else None
        status.end_time = parse_time(end)
        out[job_id] = status
    return out


def scontrol_argv(job_id: str) -> list[str]:
    return ["scontrol", "--oneliner", "show", "job", job_id]


def parse_scontrol(text: str) -> JobStatus | None:
    """``scontrol -o show job`` (one line per job; the first is used) -> JobStatus."""
    line = next((ln for ln in text.splitlines() if "JobId=" in ln), "")
    if not line:
        return None
    fields = dict(
        item.split("=", 1) for item in re.split(r"\s+(?=[A-Za-z:/]+=)", line.strip()) if "=" in item
    )
    array_id, task = fields.get("ArrayJobId"), fields.get("ArrayTaskId")
    job_id = f"{array_id}_{task}" if array_id and task else fields.get("JobId", "")
    status = JobStatus(job_id=job_id, state=state_of(fields.get("JobState", "")))
    reason = fields.get("Reason")
    why = [reason] if reason and reason != "None" else []
    code = fields.get("ExitCode")
    if code and code != "0:0":
        why.append(f"exit code {code}")
    status.reason = "; ".join(why) or None
    nodes = fields.get("NodeList")
    status.node = nodes if nodes and nodes != "(null)" else None
    status.end_time = parse_time(fields.get("EndTime", ""))
    if status.state == "PENDING":
        status.start_estimate = parse_time(fields.get("StartTime", ""))
    status.log = fields.get("StdOut") or None
    return status


def array_task_ids(array_id: str, count: int) -> list[str]:
    """``sbatch --array=0-<n-1>`` printed ``123``: its tasks are ``123_0`` ... ``123_<n-1>``."""
    return [f"{array_id}_{i}" for i in range(count)]


def scancel_argv(job_ids: Iterable[str]) -> list[str]:
    ids = list(job_ids)
    if not ids:
        raise ValueError("scancel needs at least one job id")
    return ["scancel", *ids]


# ------------------------------------------------------------------------------ the script
def job_script(
    opts: BatchOptions,
    *,
    scheduler: str,
    name: str,
    credentials: str,
    log_directory: str,
    cluster: str = "",
    array_names: Sequence[str] | None = None,
) -> str:
    """The exact script sbatch gets: directives, site prologue, then ``ctrlstack worker``.

    With ``array_names`` it is one ``--array=0-<n-1>`` job whose task *i* runs the workers of job
    ``array_names[i]`` (dask-jobqueue's name for it): the names are a quoted bash array, indexed
    by ``$SLURM_ARRAY_TASK_ID`` — an integer Slurm sets — the only expansion in the script.
    """
    from .script import queue_script

    return queue_script(
        opts,
        directive_prefix="#SBATCH",
        directives=directives(
            opts,
            log_directory=log_directory,
            array=None if array_names is None else len(array_names),
        ),
        index_variable="SLURM_ARRAY_TASK_ID",
        scheduler=scheduler,
        name=name,
        credentials=credentials,
        cluster=cluster,
        array_names=array_names,
    )
