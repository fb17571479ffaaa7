"""Process-level CPU limits from ``/proc`` and cgroups: cpusets, CPU quotas, ``Cpus_allowed_list``.

Two readers need these facts: :func:`ctrlstack.topology.sysfs.from_sysfs` on a *fixture* root
(where ``os.sched_getaffinity`` says nothing about the captured machine) and
:func:`ctrlstack.topology.discover.job_context` on the live machine (for diagnostics such as "the
job cgroup has 32 CPUs but this task is bound to 4").  Both take a ``root`` so that a captured
tree (hwloc's ``32amd64-4s2n4c-cgroup2`` Slurm step, a generated job) reads exactly like ``/``.

The ``parse_*`` functions are pure and take file contents; the ``read_*`` functions only locate and
read files, then delegate.  Nothing here raises for missing or odd files: cgroup layouts vary too
much (v1, v2, hybrid, containers without namespaces), so every reader returns ``None`` and leaves
the explanation to the caller's diagnostics.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .cpuset import CpuSet, parse_cpulist

__all__ = [
    "CgroupMembership",
    "CpusetInfo",
    "Mount",
    "parse_cfs_quota",
    "parse_cpu_max",
    "parse_mounts",
    "parse_proc_cgroup",
    "parse_status_cpus_allowed",
    "read_cpu_quota",
    "read_cpuset",
    "read_status_cpus_allowed",
    "read_text",
]


def read_text(path: Path) -> str | None:
    """Contents of ``path`` with NUL bytes removed, or ``None`` when it cannot be read."""
    try:
        return path.read_text(errors="replace").replace("\x00", "")
    except OSError:
        return None


_OCTAL = re.compile(r"\\([0-7]{3})")


def _under(root: Path, absolute: str) -> Path:
    """``absolute`` (a path on the captured machine) re-rooted under ``root``."""
    return root / absolute.lstrip("/")


# --------------------------------------------------------------------------- pure parsers
@dataclass(frozen=True)
class CgroupMembership:
    """Where this process sits: the v2 path (``0::/x``) and v1 paths per controller."""

    v2: str | None
    v1: dict[str, str]


@dataclass(frozen=True)
class Mount:
    """One line of ``/proc/mounts``."""

    mountpoint: str
    fstype: str
    options: frozenset[str]


def parse_proc_cgroup(text: str) -> CgroupMembership:
    """Parse ``/proc/self/cgroup`` (``hierarchy-id:controllers:path`` lines, v1 and v2)."""
    v2: str | None = None
    v1: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
            continue
        for controller in controllers.split(","):
            if controller:
                v1[controller] = path
    return CgroupMembership(v2=v2, v1=v1)


def parse_mounts(text: str) -> list[Mount]:
    """Parse ``/proc/mounts``; octal escapes (``\\040`` for spaces) are decoded."""
    mounts: list[Mount] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        mountpoint = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), fields[1])
        mounts.append(Mount(mountpoint, fields[2], frozenset(fields[3].split(","))))
    return mounts


def parse_status_cpus_allowed(text: str) -> CpuSet | None:
    """``Cpus_allowed_list`` from ``/proc/<pid>/status``, or ``None`` when the line is absent."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Cpus_allowed_list":
            return parse_cpulist(value)
    return None


def parse_cpu_max(text: str) -> float | None:
    """CPUs granted by a cgroup v2 ``cpu.max`` (``"200000 100000"`` -> 2.0; ``"max ..."`` -> None)."""
    fields = text.split()
    if not fields or fields[0] == "max":
        return None
    try:
        quota = int(fields[0])
        period = int(fields[1]) if len(fields) > 1 else 100_000
    except ValueError:
        raise ValueError(
            f"invalid cpu.max {text.strip()!r}: expected '<quota|max> <period>' in microseconds"
        ) from None
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs_quota(quota_text: str, period_text: str | None) -> float | None:
    """CPUs granted by cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (-1 -> None)."""
    try:
        quota = int(quota_text.strip())
        period = int(period_text.strip()) if period_text and period_text.strip() else 100_000
    except ValueError:
        raise ValueError(
            f"invalid cgroup v1 CPU quota {quota_text.strip()!r}/{period_text!r}: expected integers"
        ) from None
    return quota / period if quota > 0 and period > 0 else None


# --------------------------------------------------------------------------- locating cgroups
def _mounts(root: Path) -> list[Mount]:
    for name in ("proc/self/mounts", "proc/mounts"):
        text = read_text(root / name)
        if text is not None:
            return parse_mounts(text)
    return []


def _membership(root: Path) -> CgroupMembership | None:
    text = read_text(root / "proc/self/cgroup")
    if text is not None:
        return parse_proc_cgroup(text)
    # Older kernels (and hwloc's cgroup2 capture) only have /proc/self/cpuset: the cpuset path.
    legacy = read_text(root / "proc/self/cpuset")
    if legacy is not None and legacy.strip():
        path = legacy.strip()
        return CgroupMembership(v2=path, v1={"cpuset": path})
    return None


def _controller_dirs(root: Path, controller: str) -> list[tuple[int, Path, str]]:
    """Candidate (version, mount dir, cgroup path) for ``controller``, most specific first."""
    membership = _membership(root)
    if membership is None:
        return []
    mounts = _mounts(root)
    found: list[tuple[int, Path, str]] = []
    v1_path = membership.v1.get(controller)
    if v1_path is not None:
        points = [m.mountpoint for m in mounts if m.fstype == "cgroup" and controller in m.options]
        if not mounts:
            points = [f"/sys/fs/cgroup/{controller}"]
        found.extend((1, _under(root, p), v1_path) for p in points)
    if membership.v2 is not None:
        points = [m.mountpoint for m in mounts if m.fstype == "cgroup2"]
        if not mounts:
            points = ["/sys/fs/cgroup"]
        found.extend((2, _under(root, p), membership.v2) for p in points)
    return found


def _cgroup_dir(mount: Path, path: str) -> Path:
    """The cgroup directory; containers without a cgroup namespace see the mount root instead."""
    candidate = mount / path.lstrip("/")
    return candidate if candidate.is_dir() else mount


# --------------------------------------------------------------------------- readers
@dataclass(frozen=True)
class CpusetInfo:
    """The cpuset cgroup of the process: version, cgroup path, file read and its CPUs."""

    version: int
    path: str
    file: str
    cpus: CpuSet


_CPUSET_FILES = {1: ("cpuset.effective_cpus", "cpuset.cpus"), 2: ("cpuset.cpus.effective",)}


def read_cpuset(root: str | os.PathLike[str] = "/") -> CpusetInfo | None:
    """The effective cpuset of ``<root>/proc/self`` (v1 ``cpuset`` controller or v2), if any."""
    base = Path(root)
    for version, mount, path in _controller_dirs(base, "cpuset"):
        directory = _cgroup_dir(mount, path)
        for name in _CPUSET_FILES[version]:
            text = read_text(directory / name)
            if text is not None and text.strip():
                try:
                    cpus = parse_cpulist(text)
                except ValueError:
                    continue
                shown = "/" + str((directory / name).relative_to(base)).lstrip("/")
                return CpusetInfo(version=version, path=path, file=shown, cpus=cpus)
    return None


def _ancestors(mount: Path, path: str) -> Iterable[Path]:
    """The cgroup directory and its parents up to the mount root (quotas nest)."""
    directory = _cgroup_dir(mount, path)
    yield directory
    while directory != mount and mount in directory.parents:
        directory = directory.parent
        yield directory


def read_cpu_quota(root: str | os.PathLike[str] = "/") -> float | None:
    """The tightest CPU quota (in CPUs) on the process's cgroup and its ancestors, if any."""
    base = Path(root)
    quotas: list[float] = []
    for version, mount, path in _controller_dirs(base, "cpu"):
        for directory in _ancestors(mount, path):
            try:
                if version == 2:
                    text = read_text(directory / "cpu.max")
                    quota = parse_cpu_max(text) if text is not None else None
                else:
                    text = read_text(directory / "cpu.cfs_quota_us")
                    period = read_text(directory / "cpu.cfs_period_us")
                    quota = parse_cfs_quota(text, period) if text is not None else None
            except ValueError:
                quota = None
            if quota is not None:
                quotas.append(quota)
    return min(quotas) if quotas else None


def read_status_cpus_allowed(root: str | os.PathLike[str] = "/") -> CpuSet | None:
    """``Cpus_allowed_list`` of ``<root>/proc/self/status`` (``None`` if absent or unparsable)."""
    text = read_text(Path(root) / "proc/self/status")
    if text is None:
        return None
    try:
        return parse_status_cpus_allowed(text)
    except ValueError:
        return None
