"""Block until a cluster has N connected workers: ``ctrlstack.launch(..., wait=N)``.

Why not ``Client.wait_for_workers``: it only counts workers, so a batch job that died before its
worker connected (a bad prologue, a module that does not load, a node failure) makes it sit
until the timeout and then say "0/N workers arrived".  Here the supervisor's status is polled
instead: it carries every job's state, reason and log tail (:class:`~ctrlstack.deploy.status.
JobStatus`), so such a job raises at once with the cause.

What happens to the cluster when waiting fails is the caller's decision (the API stops it: a
``launch(wait=N)`` either returns a cluster with N workers or leaves nothing behind).  The
judgement itself, :func:`dead_jobs`, is pure and unit-tested.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ctrlstack.deploy.status import ClusterStatus, JobStatus
from ctrlstack.errors import Failure, UserError

__all__ = ["JobDiedError", "WaitTimeoutError", "check_wait", "dead_jobs", "wait_for_workers"]

#: Job states of a job that ran and ended.
ENDED = frozenset({"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT"})

#: Seconds between two status polls (the supervisor itself polls the queue every 2 s).
POLL = 0.25


class JobDiedError(Failure):
    """A batch job of the cluster ended before its workers connected (message: state, reason,
    log path and the log's last lines)."""


class WaitTimeoutError(Failure):
    """Fewer than N workers connected within the timeout."""


def check_wait(wait: object) -> int | None:
    """Validate ``wait`` (None, or an integer >= 1) before anything is launched."""
    if wait is None:
        return None
    if not isinstance(wait, int) or isinstance(wait, bool) or wait < 1:
        raise UserError(f"wait must be a number of workers (an integer >= 1), got {wait!r}")
    return wait


def dead_jobs(status: ClusterStatus) -> list[JobStatus]:
    """Jobs that died before their workers connected.

    The supervisor keeps a log tail only for a job that failed or ended before any of its
    workers connected (and a submission that failed shows as ``FAILED`` with the batch system's
    message), so those are exactly the ended jobs with a tail or a ``FAILED`` state.  A job
    the supervisor cancelled itself (scale-down) has neither.
    """
    return [
        job
        for job in status.jobs
        if job.state in ENDED and (job.log_tail is not None or job.state == "FAILED")
    ]


def describe(job: JobStatus) -> str:
    """One job's failure, for the exception: state, reason, node, log path and tail."""
    text = f"job {job.job_id} {job.state}"
    if job.reason:
        text += f" ({job.reason})"
    if job.node:
        text += f" on {job.node}"
    if job.log:
        text += f"; log {job.log}"
    if job.log_tail:
        text += ":\n" + "\n".join(f"  {line}" for line in job.log_tail.splitlines())
    return text


def wait_for_workers(
    status: Callable[[], ClusterStatus],
    n: int,
    timeout: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ClusterStatus:
    """Poll ``status()`` until ``n`` workers are connected; the last status.

    Raises :class:`JobDiedError` as soon as a job died before its workers connected, and
    :class:`WaitTimeoutError` after ``timeout`` seconds; both name the cluster's jobs.
    """
    deadline = clock() + timeout
    while True:
        current = status()
        if current.connected >= n:
            return current
        dead = dead_jobs(current)
        if dead:
            raise JobDiedError(
                f"cluster {current.name!r}: {len(dead)} job(s) ended before their workers "
                f"connected ({current.connected}/{n} workers connected):\n"
                + "\n".join(describe(job) for job in dead)
            )
        if clock() >= deadline:
            jobs = ", ".join(
                f"{j.job_id} {j.state}" + (f" ({j.reason})" if j.reason else "")
                for j in current.jobs
            )
            raise WaitTimeoutError(
                f"cluster {current.name!r}: only {current.connected}/{n} workers connected "
                f"after {timeout:g} s" + (f"; jobs: {jobs}" if jobs else "")
            )
        sleep(POLL)
