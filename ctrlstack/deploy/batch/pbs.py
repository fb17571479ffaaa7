"""PBS (OpenPBS / PBS Pro) as pure functions: qsub/qstat/qdel argv and their output parsers.

Queue state: one ``qstat -x -f -F json`` call for every job of the cluster (``-x`` keeps finished
jobs, ``-t`` expands array sub-jobs); its ``Jobs`` mapping carries ``job_state`` (one letter),
``comment`` (why a job waits), ``exec_host``, ``stime`` and ``Resource_List.walltime`` (from which
the end time follows), ``estimated.start_time`` for queued jobs where the scheduler computes it,
and ``Exit_status`` for finished ones.  No PBS server runs in this project's CI: these functions
are tested against recorded outputs of real servers (``tests/fixtures/pbs/``).
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from ctrlstack.deploy.status import JobStatus

from .options import BatchOptions, format_walltime, parse_walltime

__all__ = [
    "array_task_ids",
    "directives",
    "is_rejection",
    "parse_qstat",
    "parse_qsub",
    "qdel_argv",
    "qstat_argv",
    "qsub_argv",
]

#: PBS one-letter states -> :data:`JOB_STATES`.  ``F``/``X`` are finished jobs/sub-jobs; how they
#: ended comes from ``Exit_status``.
_STATES = {
    "Q": "PENDING",
    "H": "PENDING",
    "W": "PENDING",
    "T": "PENDING",
    "M": "PENDING",
    "S": "PENDING",
    "U": "PENDING",
    "R": "RUNNING",
    "B": "RUNNING",
    "E": "COMPLETING",
}

#: PBS exit statuses with a meaning of their own (negative: never ran; 271: killed by qdel,
#: i.e. 256 + SIGTERM; walltime kills report -29 (JOB_EXEC_KILL_WALLTIME) on PBS Pro).
_EXIT_WALLTIME = -29
_EXIT_DELETED = (271, 265, -3)


def parse_ctime(text: str) -> float | None:
    """``"Tue Oct  4 21:23:20 2022"`` (local time) -> epoch seconds."""
    try:
        return time.mktime(
            datetime.strptime(" ".join(text.split()), "%a %b %d %H:%M:%S %Y").timetuple()
        )
    except (ValueError, AttributeError):
        return None


# ------------------------------------------------------------------------------ qsub
def directives(opts: BatchOptions, *, log_directory: str, array: int | None = None) -> list[str]:
    """``#PBS`` options (without the prefix); memory in MiB, one chunk of ``cores`` CPUs."""
    out = [f"-N {opts.job_name}"]
    if opts.queue:
        out.append(f"-q {opts.queue}")
    if opts.account:
        out.append(f"-A {opts.account}")
    out += [
        f"-l select=1:ncpus={opts.cores}:mem={opts.memory_mb}mb",
        f"-l walltime={format_walltime(opts.walltime)}",
        "-j oe",
        f"-o {log_directory.rstrip('/')}/",
    ]
    if array is not None:
        if array < 2:
            raise ValueError(f"a PBS array needs at least two sub-jobs, got {array}")
        out.append(f"-J 0-{array - 1}")
    out += list(opts.extra_directives)
    return out


def qsub_argv(script: str) -> list[str]:
    return ["qsub", script]


def parse_qsub(stdout: str) -> str:
    """``1234.server`` (or ``1234[].server`` for an array) -> that id, as qstat/qdel take it."""
    job_id = stdout.strip().splitlines()[0].strip() if stdout.strip() else ""
    if not re.match(r"^\d+(\[\])?(\.[\w.-]+)?$", job_id):
        raise ValueError(f"cannot read a job id from qsub output {stdout!r}")
    return job_id


def array_task_ids(array_id: str, count: int) -> list[str]:
    """qsub printed ``123[].server`` for ``-J 0-<n-1>``: its sub-jobs are ``123[0].server`` ...
    (the ids ``qstat -t`` lists and ``qdel`` takes one by one)."""
    if "[]" not in array_id:
        raise ValueError(f"{array_id!r} is not a PBS array id (expected '123[].server')")
    return [array_id.replace("[]", f"[{i}]", 1) for i in range(count)]


def is_rejection(stderr: str) -> str | None:
    """qsub's refusal (``qsub: Unknown queue``, ``qsub: Job exceeds queue resource limits``...);
    None for a server that cannot be reached (a failure, not the user's to fix)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip().startswith("qsub:")]
    text = "; ".join(ln.removeprefix("qsub:").strip() for ln in lines)
    if not text or "cannot connect to server" in text or "Connection refused" in text:
        return None
    return text


# ------------------------------------------------------------------------------ qstat
def qstat_argv(job_ids: Sequence[str]) -> list[str]:
    return ["qstat", "-x", "-t", "-f", "-F", "json", *job_ids]


def _finished(info: dict[str, Any]) -> tuple[str, str | None]:
    code = info.get("Exit_status")
    if code is None:
        return "COMPLETED", None
    code = int(code)
    if code == 0:
        return "COMPLETED", None
    if code == _EXIT_WALLTIME:
        return "TIMEOUT", "walltime exceeded"
    if code in _EXIT_DELETED:
        return "CANCELLED", f"exit status {code}"
    return "FAILED", f"exit status {code}"


def parse_qstat(text: str, *, now: float | None = None) -> dict[str, JobStatus]:
    """``qstat -x -t -f -F json`` -> ``{job_id: JobStatus}`` (array parents ``123[]`` skipped
    when their sub-jobs are listed)."""
    data = json.loads(text) if text.strip() else {}
    jobs: dict[str, Any] = data.get("Jobs") or {}
    out: dict[str, JobStatus] = {}
    for job_id, info in jobs.items():
        if job_id.split(".")[0].endswith("[]") and any("[" in j and j != job_id for j in jobs):
            continue
        letter = str(info.get("job_state", "")).upper()
        reason = info.get("comment")
        if letter in ("F", "X"):
            state, why = _finished(info)
            reason = why or None
        else:
            state = _STATES.get(letter, "UNKNOWN")
        status = JobStatus(
            job_id=job_id, state=state, reason=reason if state != "RUNNING" else None
        )
        host = info.get("exec_host")
        if host and state in ("RUNNING", "COMPLETING"):
            status.node = "+".join(sorted({h.split("/")[0] for h in str(host).split("+")}))
        started = parse_ctime(info.get("stime", ""))
        walltime = (info.get("Resource_List") or {}).get("walltime")
        if state in ("RUNNING", "COMPLETING") and started and walltime:
            with contextlib.suppress(ValueError):
                status.end_time = started + parse_walltime(str(walltime))
        if state == "PENDING":
            estimated = (info.get("estimated") or {}).get("start_time")
            status.start_estimate = parse_ctime(estimated) if isinstance(estimated, str) else None
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
            status.end_time = parse_ctime(info.get("mtime", ""))
        path = info.get("Output_Path")
        if isinstance(path, str):
            status.log = path.split(":", 1)[-1]
        out[job_id] = status
    return out


def qstat_gone(stderr: str) -> bool:
    """qstat's "Unknown Job Id" for every id: nothing left (with ``-x``, purged history)."""
    return "Unknown Job Id" in stderr


def qdel_argv(job_ids: Iterable[str]) -> list[str]:
    ids = list(job_ids)
    if not ids:
        raise ValueError("qdel needs at least one job id")
    return ["qdel", "-W", "force", *ids]


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
    """The exact script qsub gets (same template as Slurm's, ``#PBS`` directives).

    With ``array_names`` it is one ``-J 0-<n-1>`` array whose sub-job *i* runs the workers of
    job ``array_names[i]``: the names are a quoted bash array indexed by ``$PBS_ARRAY_INDEX`` (an
    integer PBS sets), the only expansion in the script, as in Slurm's array script.
    """
    from .script import queue_script

    return queue_script(
        opts,
        directive_prefix="#PBS",
        directives=directives(
            opts,
            log_directory=log_directory,
            array=None if array_names is None else len(array_names),
        ),
        index_variable="PBS_ARRAY_INDEX",
        scheduler=scheduler,
        name=name,
        credentials=credentials,
        cluster=cluster,
        array_names=array_names,
    )
