"""The live machine, and what the batch system / container did to this process's CPUs.

:func:`discover` is the only place that reads ``/`` for topology; it caches the result per process
because sysfs does not change under a running job, while a re-pinned process can ask again with
``refresh=True``.  The cache is keyed by PID so a forked child never inherits its parent's view.

:func:`job_context` gathers *explanations*, not inputs: the kernel already folds cgroup cpusets,
``taskset``, ``numactl`` and Slurm bindings into ``sched_getaffinity``, which is what plans use.
The context says why that set looks the way it does ("bound to 4 of the job's 32 CPUs", "a CPU
quota of 2 is smaller than the 8 allowed CPUs").  The ``parse_*`` and ``slurm_context`` helpers are
pure functions of strings so they can be tested without Slurm.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .cgroup import read_cpu_quota, read_cpuset, read_status_cpus_allowed
from .cpuset import CpuSet, format_cpulist, parse_cpumask
from .model import Machine
from .sysfs import from_sysfs

__all__ = [
    "SlurmCpuBind",
    "discover",
    "job_context",
    "parse_job_cpus_per_node",
    "parse_slurm_cpu_bind",
    "quota_note",
    "slurm_context",
]

_lock = threading.Lock()
_cache: dict[int, Machine] = {}


def discover(*, refresh: bool = False) -> Machine:
    """The machine this process runs on, restricted to ``os.sched_getaffinity(0)``.

    Cached per process; pass ``refresh=True`` after changing the affinity (or CPU hotplug).
    """
    pid = os.getpid()
    with _lock:
        machine = _cache.get(pid)
        if machine is None or refresh:
            machine = from_sysfs("/", allowed=os.sched_getaffinity(0))
            _cache.clear()
            _cache[pid] = machine
        return machine


# --------------------------------------------------------------------------- pure parsers
@dataclass(frozen=True)
class SlurmCpuBind:
    """A parsed ``SLURM_CPU_BIND`` value (``[quiet|verbose,]type[:list]``).

    ``cpus`` holds one CPU set per task for ``mask_cpu``/``map_cpu`` (task *i* of a node uses entry
    ``i % len(cpus)``); ``ldoms`` likewise holds NUMA-node sets for ``mask_ldom``/``map_ldom``.
    """

    type: str
    verbose: bool
    cpus: tuple[CpuSet, ...] = ()
    ldoms: tuple[CpuSet, ...] = ()

    def for_task(self, local_id: int) -> CpuSet | None:
        """The CPU set of node-local task ``local_id`` for explicit masks/maps, else ``None``."""
        if not self.cpus:
            return None
        return self.cpus[local_id % len(self.cpus)]


_BIND_TYPES_WITH_LIST = {"mask_cpu", "map_cpu", "mask_ldom", "map_ldom"}


def parse_slurm_cpu_bind(value: str) -> SlurmCpuBind:
    """Parse ``SLURM_CPU_BIND`` (e.g. ``"quiet,mask_cpu:0xC000500000000000"`` -> CPUs 44,46,62,63).

    Masks are hexadecimal with an optional ``0x`` (srun(1)); the list after ``type:`` is
    comma-separated *per task*, so each entry is parsed as one mask, never as 32-bit words.
    Raises ``ValueError`` naming the bad entry.
    """
    text = value.strip()
    verbose = False
    tokens = text.split(",")
    while tokens and tokens[0].strip().lower() in {"quiet", "verbose"}:
        verbose = tokens.pop(0).strip().lower() == "verbose"
    if not tokens or not tokens[0].strip():
        raise ValueError(f"invalid SLURM_CPU_BIND {value!r}: no binding type after verbosity")
    kind, _, first = tokens[0].strip().partition(":")
    entries = [e.strip() for e in [first, *tokens[1:]] if e.strip()]
    kind = kind.lower()
    if kind not in _BIND_TYPES_WITH_LIST:
        if entries:
            raise ValueError(
                f"invalid SLURM_CPU_BIND {value!r}: type {kind!r} takes no list "
                f"(only {', '.join(sorted(_BIND_TYPES_WITH_LIST))} do)"
            )
        return SlurmCpuBind(type=kind, verbose=verbose)
    sets: list[CpuSet] = []
    for entry in entries:
        try:
            if kind.startswith("mask_"):
                sets.append(parse_cpumask(entry))
            else:
                sets.append(frozenset({int(entry, 0)}))
        except ValueError:
            raise ValueError(
                f"invalid SLURM_CPU_BIND {value!r}: entry {entry!r} of {kind} is not a "
                f"{'hex mask' if kind.startswith('mask_') else 'number'}"
            ) from None
    if not sets:
        raise ValueError(f"invalid SLURM_CPU_BIND {value!r}: {kind} needs a list after ':'")
    if kind.endswith("_cpu"):
        return SlurmCpuBind(type=kind, verbose=verbose, cpus=tuple(sets))
    return SlurmCpuBind(type=kind, verbose=verbose, ldoms=tuple(sets))


def parse_job_cpus_per_node(value: str) -> list[int]:
    """Expand ``SLURM_JOB_CPUS_PER_NODE`` (``"72(x2),36"`` -> ``[72, 72, 36]``)."""
    counts: list[int] = []
    for part in value.strip().split(","):
        part = part.strip()
        if not part:
            continue
        number, _, repeat = part.partition("(x")
        try:
            times = int(repeat.rstrip(")")) if repeat else 1
            counts.extend([int(number)] * times)
        except ValueError:
            raise ValueError(
                f"invalid SLURM_JOB_CPUS_PER_NODE {value!r}: part {part!r} is not N or N(xM)"
            ) from None
    return counts


def _int_or_text(value: str) -> int | str:
    try:
        return int(value.strip())
    except ValueError:
        return value


def slurm_context(env: Mapping[str, str], allowed: CpuSet | None = None) -> dict[str, Any]:
    """Slurm facts from an environment mapping; empty when not inside a Slurm job.

    With ``allowed`` (this process's affinity), a task's explicit ``mask_cpu``/``map_cpu`` entry is
    compared with it and a note explains any difference.
    """
    if not any(key.startswith("SLURM_") for key in env):
        return {}
    context: dict[str, Any] = {}
    notes: list[str] = []
    keys = ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_CPU_BIND_TYPE", "SLURM_CPU_BIND_LIST")
    for key in (*keys, "SLURM_CPU_BIND_VERBOSE"):
        if key in env:
            context[key.removeprefix("SLURM_").lower()] = env[key]
    for key in ("SLURM_CPUS_PER_TASK", "SLURM_LOCALID"):
        if key in env:
            context[key.removeprefix("SLURM_").lower()] = _int_or_text(env[key])
    if "SLURM_JOB_CPUS_PER_NODE" in env:
        raw = env["SLURM_JOB_CPUS_PER_NODE"]
        try:
            context["job_cpus_per_node"] = parse_job_cpus_per_node(raw)
        except ValueError as error:
            context["job_cpus_per_node"] = raw
            notes.append(str(error))
    if "SLURM_CPU_BIND" in env:
        raw = env["SLURM_CPU_BIND"]
        context["cpu_bind"] = raw
        try:
            bind = parse_slurm_cpu_bind(raw)
        except ValueError as error:
            notes.append(str(error))
        else:
            context["cpu_bind_kind"] = bind.type
            if bind.cpus:
                context["cpu_bind_cpus"] = [format_cpulist(c) for c in bind.cpus]
                local = context.get("localid")
                task = bind.for_task(local if isinstance(local, int) else 0)
                if task is not None and allowed is not None and task != allowed:
                    notes.append(
                        f"SLURM_CPU_BIND gives this task CPUs {format_cpulist(task)} but it may "
                        f"run on {format_cpulist(allowed)} (binding changed after srun?)"
                    )
            if bind.ldoms:
                context["cpu_bind_ldoms"] = [format_cpulist(c) for c in bind.ldoms]
    per_task = context.get("cpus_per_task")
    if isinstance(per_task, int) and allowed is not None and len(allowed) < per_task:
        notes.append(
            f"SLURM_CPUS_PER_TASK={per_task} but only {len(allowed)} CPUs are allowed here"
        )
    if notes:
        context["notes"] = notes
    return context


def quota_note(quota: float | None, allowed: int) -> str | None:
    """A warning when a CPU quota (run-time limit) is below the number of allowed CPUs."""
    if quota is None or quota >= allowed:
        return None
    return (
        f"CPU quota of {quota:g} CPUs is below the {allowed} allowed CPUs: threads beyond "
        f"{max(1, int(quota))} only add contention (Docker --cpus or a cgroup cpu.max?)"
    )


# --------------------------------------------------------------------------- live reads
def job_context(
    *, root: str | os.PathLike[str] = "/", env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Diagnostics about this process's CPU allocation (cgroup cpuset, quota, Slurm binding).

    Keys: ``affinity`` (CPU list), ``cgroup`` (version, path, file, cpus) when a cpuset cgroup is
    found, ``cpu_quota`` only when it is smaller than the allowed count, ``slurm`` when inside a
    Slurm job, and ``notes`` (sentences).  ``root``/``env`` exist for tests; by default the live
    ``/`` and ``os.environ`` are used.
    """
    environ = os.environ if env is None else env
    live = os.fspath(root) == "/"
    allowed: CpuSet = frozenset(os.sched_getaffinity(0)) if live else _fixture_allowed(root)
    context: dict[str, Any] = {"affinity": format_cpulist(allowed)}
    notes: list[str] = []
    cpuset = read_cpuset(root)
    if cpuset is not None:
        context["cgroup"] = {
            "version": cpuset.version,
            "path": cpuset.path,
            "file": cpuset.file,
            "cpus": format_cpulist(cpuset.cpus),
        }
        if allowed and cpuset.cpus and allowed < cpuset.cpus:
            notes.append(
                f"bound to {len(allowed)} of the {len(cpuset.cpus)} CPUs of cgroup {cpuset.path}"
            )
    quota = read_cpu_quota(root)
    warning = quota_note(quota, len(allowed))
    if warning is not None:
        context["cpu_quota"] = quota
        notes.append(warning)
    slurm = slurm_context(environ, allowed)
    if slurm:
        context["slurm"] = slurm
    if notes:
        context["notes"] = notes
    return context


def _fixture_allowed(root: str | os.PathLike[str]) -> CpuSet:
    status = read_status_cpus_allowed(root)
    if status is not None:
        return status
    cpuset = read_cpuset(root)
    return cpuset.cpus if cpuset is not None else frozenset()
