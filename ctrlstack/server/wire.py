"""Wire models of the REST API: the one place that turns API objects into JSON.

Why here and not in handlers: the frontend (``src/tokens.ts``) mirrors exactly these shapes, so
they must be built in one function each.  ``ClusterStatus`` is the hall's type; this module only
adapts the older untyped status dict a supervisor of a previous version may still send.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ctrlstack.deploy.status import AdaptRange, ClusterStatus, WorkerStatus

__all__ = ["RUN_FIELDS", "as_status", "error_body", "run_row"]


def as_status(obj: Any) -> ClusterStatus:
    """A :class:`ClusterStatus` from whatever the API returned (typed, a row, or a legacy dict)."""
    if isinstance(obj, ClusterStatus):
        return obj
    to_dict = getattr(obj, "to_dict", None)
    data: Mapping[str, Any] = to_dict() if callable(to_dict) else obj
    if not isinstance(data, Mapping):
        raise TypeError(f"cannot read a cluster status from {type(obj).__name__}")
    if isinstance(data.get("workers"), int):  # legacy supervisor dict: counts plus a slot map
        data = _from_legacy(data)
    return ClusterStatus.from_dict(data)


def _from_legacy(data: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(data)
    slots: Mapping[str, str] = data.get("slots") or {}
    connected = int(data["workers"])
    threads = int(data.get("threads") or 0)
    out["connected"] = connected
    out.setdefault("requested", len(slots) or connected)
    out["workers"] = [
        WorkerStatus(
            name=str(worker),
            state="running" if i < connected else "pending",
            cpus=cpus or None,
            threads=threads,
            task_threads=int(data.get("task_threads") or 0),
        )
        for i, (worker, cpus) in enumerate(slots.items())
    ]
    if "state" not in data:
        out["state"] = "running"
    adapt = data.get("adapt")
    if isinstance(adapt, Mapping):
        out["adapt"] = AdaptRange(int(adapt["minimum"]), int(adapt["maximum"]))
    return out


#: What the sidebar shows of a run record (``ctrlstack.runs.RunRecord``, its public fields; the
#: record's ``params`` stay out of the wire: they may carry values meant for the job only).
RUN_FIELDS = (
    "id", "kind", "input", "output", "log", "output_dir", "profile", "mode", "state", "host",
    "job_id", "cluster", "created", "started", "ended", "exit_code", "error", "failed_cell",
)  # fmt: skip


def run_row(record: Any) -> dict[str, Any]:
    """One run as JSON: the :data:`RUN_FIELDS` of ``record.to_dict()`` (missing ones ``None``)."""
    data = record.to_dict()
    return {key: data.get(key) for key in RUN_FIELDS}


def error_body(
    kind: str, message: str, *, field: str | None = None, allowed: str | None = None
) -> dict[str, Any]:
    """``{"error": {...}}``: what a form needs to put the message next to the right field."""
    return {"error": {"kind": kind, "message": message, "field": field, "allowed": allowed}}
