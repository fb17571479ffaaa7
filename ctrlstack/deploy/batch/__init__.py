"""Batch systems as pure data: command builders, job-script rendering, output parsers.

Nothing in this package starts a process.  Each scheduler module (:mod:`.slurm`, :mod:`.pbs`)
turns resolved :class:`~.options.BatchOptions` into argv lists and scripts and turns command
output into :class:`~ctrlstack.deploy.status.JobStatus` values; the backends
(:mod:`ctrlstack.deploy.backends.slurm`, ``.pbs``) run those argv lists through
:mod:`ctrlstack._proc`.  Keeping the two apart is what makes every builder and parser testable in
milliseconds against recorded real outputs, without a scheduler.
"""

from __future__ import annotations

from .options import BatchOptions, resolve
from .script import WorkerCommand, render_script

__all__ = ["BatchOptions", "WorkerCommand", "render_script", "resolve"]
