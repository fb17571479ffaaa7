"""A batch profile resolved once into one typed object (no ``dask.config.get`` per field).

The profile's ``slurm:``/``pbs:`` section has been validated against the schema already
(:mod:`ctrlstack.config`); :func:`resolve` adds what JSON Schema cannot say (walltime syntax,
memory sizes, the job shape from ``threads`` × ``workers-per-job``) and raises a
:class:`~ctrlstack.config.ConfigError` naming the field.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ctrlstack._config_check import ConfigError, field_error

if TYPE_CHECKING:
    from ctrlstack.config import ClusterSpec

__all__ = ["BatchOptions", "parse_walltime", "resolve"]

_WALLTIME = re.compile(r"^(?:(\d+)-)?(\d+):([0-5]\d):([0-5]\d)$")


def parse_walltime(text: str) -> int:
    """``"01:30:00"`` or ``"2-00:00:00"`` -> seconds (``ValueError`` otherwise)."""
    match = _WALLTIME.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"walltime {text!r} is not [D-]HH:MM:SS")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total <= 0:
        raise ValueError(f"walltime {text!r} must be longer than 0 s")
    return total


def format_walltime(seconds: int) -> str:
    """Seconds -> ``HH:MM:SS`` (hours may exceed 24; both Slurm and PBS accept that)."""
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


@dataclass(frozen=True)
class BatchOptions:
    """Everything a batch backend needs to build one job, resolved from a :class:`ClusterSpec`."""

    scheduler: str  # "slurm" | "pbs"
    queue: str | None  # Slurm partition / PBS queue
    account: str | None
    qos: str | None
    walltime: int  # seconds
    cores: int  # CPUs per job
    memory: int  # bytes per job
    workers_per_job: int
    threads: int | None  # CPUs per worker; None: the job's CPUs / workers_per_job on the node
    task_threads: int | None
    policy: str
    smt: bool
    memory_limit: str | int  # per worker, as the profile says ("auto": job memory / workers)
    job_name: str
    log_directory: str | None  # None: the cluster's private directory
    extra_directives: tuple[str, ...] = ()
    skip_directives: tuple[str, ...] = ()
    prologue: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    interface: str | None = None
    death_timeout: float = 60.0
    retire_before: float = 60.0
    python: str = sys.executable
    poll_interval: float = 5.0
    max_jobs: int | None = None
    array: bool = True
    nanny: bool = False  # one nanny per worker instead of forked workers
    env: Mapping[str, str] = field(default_factory=dict, hash=False)
    resources: Mapping[str, float] = field(default_factory=dict, hash=False)
    local_directory: str | None = None

    @property
    def memory_mb(self) -> int:
        """Memory per job in MiB, rounded up (Slurm's ``--mem`` unit; never under-ask)."""
        return max(1, math.ceil(self.memory / 2**20))

    def worker_memory_limit(self) -> int:
        """Bytes per worker: the profile's limit, or the job's memory shared by its workers."""
        from dask.utils import parse_bytes

        limit = self.memory_limit
        if limit == "auto":
            return self.memory // self.workers_per_job
        if isinstance(limit, str):
            return int(parse_bytes(limit))
        return int(limit)


def _get(section: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = section.get(key, default)
    return default if value is None else value


def _modules(spec: ClusterSpec, section: Mapping[str, Any]) -> tuple[str, ...]:
    """The profile stack's module loads first, then the profile's own (duplicates dropped)."""
    from ctrlstack.stacks.runtime import job_modules

    names = (*job_modules(spec.stack), *_get(section, "modules", ()))
    return tuple(dict.fromkeys(names))


def resolve(spec: ClusterSpec, *, cluster_name: str | None = None) -> BatchOptions:
    """Resolve ``spec`` (a ``slurm``/``pbs`` profile) into :class:`BatchOptions`."""
    from dask.utils import parse_bytes

    backend = spec.backend
    section = dict(spec.options)
    profile = spec.profile

    def bad(key: str, value: Any, allowed: str) -> ConfigError:
        return field_error(profile, f"{backend}.{key}", value, allowed)

    raw_walltime = _get(section, "walltime", "00:30:00")
    try:
        walltime = parse_walltime(raw_walltime)
    except ValueError:
        raise bad("walltime", raw_walltime, "[D-]HH:MM:SS longer than 0 s") from None
    raw_memory = _get(section, "memory", "1 GiB")
    try:
        memory = int(parse_bytes(raw_memory)) if isinstance(raw_memory, str) else int(raw_memory)
    except (ValueError, TypeError):
        raise bad("memory", raw_memory, "a size such as '2 GiB'") from None
    if memory <= 0:
        raise bad("memory", raw_memory, "a size > 0")
    per_job = int(_get(section, "workers-per-job", 1))
    threads = None if spec.threads == "auto" else int(spec.threads)
    cores = section.get("cores")
    if cores is None:
        if threads is None:
            raise bad(
                "cores",
                None,
                "CPUs per job (an integer >= 1) when the profile's threads is 'auto'",
            )
        cores = per_job * threads
    cores = int(cores)
    if threads is not None and per_job * threads > cores:
        raise bad(
            "cores",
            cores,
            f"at least workers-per-job × threads = {per_job} × {threads} = {per_job * threads}",
        )
    if threads is None and per_job > cores:
        raise bad("workers-per-job", per_job, f"at most cores ({cores})")
    retire_before = float(_get(section, "retire-before", 60))
    if retire_before >= walltime:
        raise bad(
            "retire-before",
            retire_before,
            f"fewer seconds than the walltime ({walltime} s)",
        )
    name = _get(section, "job-name", "ctrlstack-{cluster}")
    job_name = str(name).replace("{cluster}", cluster_name or "cluster")
    max_jobs = section.get("max-jobs")
    python = _get(section, "python", sys.executable)
    return BatchOptions(
        scheduler=backend,
        queue=section.get("partition") if backend == "slurm" else section.get("queue"),
        account=section.get("account"),
        qos=section.get("qos"),
        walltime=walltime,
        cores=cores,
        memory=memory,
        workers_per_job=per_job,
        threads=threads,
        task_threads=spec.task_threads,
        policy=spec.policy,
        smt=spec.smt,
        memory_limit=spec.memory_limit,
        job_name=job_name,
        log_directory=section.get("log-directory"),
        extra_directives=tuple(_get(section, "extra-directives", ())),
        skip_directives=tuple(_get(section, "skip-directives", ())),
        prologue=tuple(_get(section, "prologue", ())),
        modules=_modules(spec, section),
        interface=section.get("interface"),
        death_timeout=float(_get(section, "death-timeout", 60)),
        retire_before=retire_before,
        python=str(python),
        poll_interval=float(_get(section, "poll-interval", 5)),
        max_jobs=None if max_jobs is None else int(max_jobs),
        array=bool(_get(section, "array", True)),
        nanny=bool(_get(section, "nanny", False)),
        env=dict(spec.env),
        resources=dict(spec.worker_options.get("resources") or {}),
        local_directory=spec.worker_options.get("local_directory"),
    )
