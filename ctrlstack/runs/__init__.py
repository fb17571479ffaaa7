"""Submitted runs: a notebook or script executed detached, with its own ephemeral cluster.

:mod:`.record` (the run record, one 0600 JSON file per run in the state dir), :mod:`.params`
(``--param`` parsing and papermill-style parameter injection, pure), :mod:`.execute` (the
process that runs inside the job or detached: cluster up, notebook/script, cluster down),
:mod:`.submit` (``ctrlstack.submit``: validate, record, start the run where the profile says).
"""

from __future__ import annotations

from .record import RunRecord, list_runs
from .submit import submit

__all__ = ["RunRecord", "list_runs", "submit"]
