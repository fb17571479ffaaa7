"""The one status shape every door shows: CLI tables, API reprs, REST, widgets, the Hub.

Why typed: the supervisor produces it, and four doors consume it.  A dict read by hand in each
door drifts (a renamed key breaks one door silently); a dataclass with ``to_dict``/``from_dict``
is checked by mypy on both sides and travels as plain JSON (over the scheduler comm as msgpack,
over REST as JSON).  ``from_dict`` ignores unknown keys so a newer supervisor can talk to an
older client.

States of a cluster (``ClusterStatus.state``):

``starting``  the supervisor runs, the scheduler is not up yet;
``running``   the scheduler is up (workers may still be pending);
``stopping``  the supervisor is shutting the cluster down;
``dead``      the supervisor is gone (reported once, then the record is cleaned up);
``remote``    the record belongs to a supervisor on another host (shared home): its liveness
              was judged by reaching its scheduler, never by a local pid;
``unreachable`` a remote record whose scheduler did not answer;
``broken``    the record file cannot be read (``message`` says why, ``path`` where it is).

States of a batch job (``JobStatus.state``) are Slurm's names, which PBS states map onto:
PENDING, RUNNING, COMPLETING, COMPLETED, FAILED, CANCELLED, TIMEOUT, UNKNOWN.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

__all__ = [
    "CLUSTER_STATES",
    "JOB_STATES",
    "AdaptRange",
    "ClusterStatus",
    "JobStatus",
    "WorkerStatus",
]

CLUSTER_STATES = ("starting", "running", "stopping", "dead", "remote", "unreachable", "broken")
JOB_STATES = (
    "PENDING",
    "RUNNING",
    "COMPLETING",
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "UNKNOWN",
)

_T = TypeVar("_T")


def _build(cls: type[_T], data: Mapping[str, Any]) -> _T:
    """``cls(**data)`` keeping only known fields (tolerant of newer senders)."""
    if not isinstance(data, Mapping):
        raise TypeError(f"{cls.__name__} must be built from a mapping, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class WorkerStatus:
    """One Dask worker (connected, or planned and not yet connected)."""

    name: str
    state: str = "running"  # pending | running | retiring | gone
    address: str | None = None
    host: str | None = None
    cpus: str | None = None  # the worker's pinned CPU list ("0-3"), None when unpinned
    threads: int = 0  # CPUs (compute threads) of the worker
    task_threads: int = 0  # Dask task threads
    memory_limit: int | None = None
    job_id: str | None = None  # the batch job running it, None for local workers

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkerStatus:
        return _build(cls, data)


@dataclass
class JobStatus:
    """One batch job of a cluster (Slurm/PBS); local clusters have none."""

    job_id: str
    state: str = "UNKNOWN"  # one of JOB_STATES
    reason: str | None = None  # why pending / why it failed
    node: str | None = None
    workers: int = 0  # workers this job runs (or will run)
    submitted: float | None = None  # epoch seconds
    start_estimate: float | None = None  # epoch seconds, while pending
    end_time: float | None = None  # epoch seconds: walltime end while running
    log: str | None = None  # path of the job's stdout/stderr
    log_tail: str | None = None  # last lines, for jobs that failed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobStatus:
        return _build(cls, data)


@dataclass
class AdaptRange:
    minimum: int
    maximum: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ClusterStatus:
    """Everything a door shows about one cluster.

    Built by the supervisor (complete, live) or from a registry record (``clusters()``: no
    per-worker detail, ``connected`` is the count the supervisor last recorded).
    """

    name: str
    profile: str = "?"
    backend: str = "?"
    state: str = "running"  # one of CLUSTER_STATES
    owner: str | None = None
    host: str | None = None  # host of the supervisor
    created: float = 0.0
    ephemeral: bool = False
    address: str | None = None  # scheduler address (tls://...)
    dashboard: str | None = None
    pid: int | None = None  # supervisor pid (on ``host``)
    connected: int = 0  # workers connected to the scheduler
    requested: int = 0  # workers asked for (target of scale/adapt)
    max_workers: int | None = None  # most workers of this shape that fit (None: unbounded)
    threads: int = 0  # CPUs per worker
    task_threads: int = 0
    policy: str = "none"
    pinned: bool = False
    adapt: AdaptRange | None = None
    workers: list[WorkerStatus] = field(default_factory=list)
    jobs: list[JobStatus] = field(default_factory=list)
    log: str | None = None  # supervisor log path
    path: str | None = None  # record file (for broken records)
    message: str | None = None  # why broken / unreachable / failed

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (the wire format of the REST API and the control comm)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClusterStatus:
        status = _build(cls, data)
        if isinstance(status.adapt, Mapping):
            status.adapt = _build(AdaptRange, status.adapt)
        status.workers = [
            w if isinstance(w, WorkerStatus) else WorkerStatus.from_dict(w)
            for w in status.workers or []
        ]
        status.jobs = [
            j if isinstance(j, JobStatus) else JobStatus.from_dict(j) for j in status.jobs or []
        ]
        return status

    @property
    def alive(self) -> bool:
        """Whether the cluster runs (here or on another host)."""
        return self.state in ("starting", "running", "stopping", "remote")
