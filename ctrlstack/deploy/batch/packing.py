"""Scaling packed batch clusters by workers, not only by whole jobs (pure planning).

With ``workers-per-job`` > 1 a job runs several workers.  dask-jobqueue scales such a cluster by
whole jobs only (``ceil(n / per_job)``), so ``scale(3)`` on 2 jobs × 2 workers changes nothing.
:func:`plan_scale` decides, from the live workers of every job, what reaching exactly ``n``
workers takes:

* **Down**: jobs none of whose workers connected yet go first (nothing to hand over; a pending
  job that must only shrink is replaced by a smaller one), then the jobs with the fewest live
  workers, so partly used jobs are emptied before full ones are broken up.  A job that keeps no
  live worker is dropped (its workers retired, then the job cancelled); otherwise single
  workers are retired (``retire_workers``: their data moves to the others) and the job runs on.
* **Up**: a partly used job is **not refilled** — the job's ``ctrlstack worker`` does not restart
  a retired slot (that would need a control channel into the job; its CPUs stay idle until the
  job ends).  New jobs are added instead: full ones, then one with the remainder, so the
  count is exact and no worker is started only to be retired.

The caller (:class:`ctrlstack.deploy.backends.slurm.RetiringJobQueueCluster`) applies the plan;
:meth:`ScalePlan.jobs_after` lets the backend check the profile's ``max-jobs`` first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["ScalePlan", "group_suffixes", "plan_scale"]


def group_suffixes(workers: int) -> list[str]:
    """Suffixes of a job's worker names, as ``ctrlstack worker --workers N`` names them."""
    return [""] if workers == 1 else [f"-{i}" for i in range(workers)]


@dataclass
class ScalePlan:
    """What to change; job names are dask-jobqueue's spec names, workers are Dask names."""

    drop: list[str] = field(default_factory=list)  # jobs to remove (retired, then cancelled)
    retire: list[str] = field(default_factory=list)  # single workers to retire, jobs stay
    add: list[int] = field(default_factory=list)  # new jobs, by their number of workers
    jobs_before: int = 0

    def jobs_after(self) -> int:
        return self.jobs_before - len(self.drop) + len(self.add)


def plan_scale(
    live: Mapping[str, Sequence[str]],
    connected: set[str],
    n: int,
    per_job: int,
) -> ScalePlan:
    """Plan reaching ``n`` workers from ``live`` (job -> its workers not yet retired, in the
    order the jobs were created); ``connected`` are the workers the scheduler knows."""
    if n < 0:
        raise ValueError(f"number of workers must be >= 0, got {n}")
    if per_job < 1:
        raise ValueError(f"workers per job must be >= 1, got {per_job}")
    out = ScalePlan(jobs_before=len(live))
    total = sum(len(w) for w in live.values())
    if n > total:
        missing = n - total
        while missing > 0:
            k = min(per_job, missing)
            out.add.append(k)
            missing -= k
        return out
    excess = total - n
    age = {job: i for i, job in enumerate(live)}

    def started(job: str) -> bool:
        return any(w in connected for w in live[job])

    # Pending jobs first, then fewest live workers, then the newest.
    for job in sorted(live, key=lambda j: (started(j), len(live[j]), -age[j])):
        if excess == 0:
            break
        workers = list(live[job])
        if len(workers) <= excess:
            out.drop.append(job)
            excess -= len(workers)
        elif not started(job):
            out.drop.append(job)  # nothing connected: resubmit it smaller
            out.add.append(len(workers) - excess)
            excess = 0
        else:
            # Retire connected workers first: a not yet connected one cannot be retired.
            ranked = sorted(workers, key=lambda w: (w in connected, workers.index(w)))
            out.retire += ranked[-excess:]
            excess = 0
    return out
