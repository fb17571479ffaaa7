"""Read a :class:`~ctrlstack.topology.model.Machine` from a Linux sysfs tree, live or captured.

The root is a parameter, so the same code reads ``/`` and fixture trees (hwloc's gathered
tarballs, :mod:`tests.sysfs_factory` output).  Nothing is trusted blindly, because real trees
disagree with the documentation in many small ways (see ``shared/notes/topology.md`` §1):

* CPU identities come from the ``cpuN/topology/`` directories, not from ``cpu/online``: offline
  CPUs keep ``cpuN/`` but lose ``topology/``, and LXCFS rewrites ``online`` without touching the
  directories.  Disagreements become diagnostics.
* A core is its SMT sibling set (``core_cpus_list``, or ``thread_siblings_list`` on old kernels);
  ``core_id`` is not unique across packages.
* L3 domains are grouped by their CPU set, never by cache ``id`` (absent on arm64).  POWER9 has only
  the hex ``shared_cpu_map``.
* Files may end in NUL bytes; NUMA nodes may have no CPUs (HBM, CXL, GPU memory); ids are sparse.

Every fallback is recorded in :attr:`Machine.diagnostics` as a sentence a user can act on.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from .cgroup import read_cpuset, read_status_cpus_allowed, read_text
from .cpuset import CpuSet, format_cpulist, parse_cpulist, parse_cpumask
from .model import Machine

__all__ = ["from_sysfs", "parse_cache_size", "parse_meminfo_total"]

_CPU_DIR = re.compile(r"^cpu(\d+)$")
_NODE_DIR = re.compile(r"^node(\d+)$")
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
# Frequency differences below this ratio are turbo-bin noise (e.g. Intel Turbo Boost Max 3.0
# "favoured cores" run ~5 % faster), not distinct core kinds; Raptor Lake P/E differ by ~28 %.
_FREQ_KIND_RATIO = 1.10


# --------------------------------------------------------------------------- pure helpers
def parse_cache_size(text: str) -> int:
    """Bytes in a sysfs cache ``size`` (``"32768K"``, ``"1M"``, ``"512"``)."""
    value = text.replace("\x00", "").strip().upper().removesuffix("B")
    unit = value[-1:] if value[-1:] in _UNITS else ""
    number = value[: len(value) - len(unit)]
    if not number.isdigit():
        raise ValueError(f"invalid cache size {text.strip()!r}: expected digits with K, M or G")
    return int(number) * _UNITS[unit]


def parse_meminfo_total(text: str) -> int | None:
    """Bytes of ``MemTotal`` in a node ``meminfo`` (``"Node 0 MemTotal:  131732940 kB"``)."""
    for line in text.splitlines():
        if "MemTotal:" in line:
            fields = line.split("MemTotal:", 1)[1].split()
            if fields and fields[0].isdigit():
                scale = 1024 if len(fields) > 1 and fields[1].lower() == "kb" else 1
                return int(fields[0]) * scale
    return None


def _numbered(directory: Path, pattern: re.Pattern[str]) -> dict[int, Path]:
    try:
        entries = list(directory.iterdir())
    except OSError:
        return {}
    found: dict[int, Path] = {}
    for entry in entries:
        match = pattern.match(entry.name)
        if match and entry.is_dir():
            found[int(match.group(1))] = entry
    return found


class _Reader:
    """Reads one tree and collects diagnostics; a class only to share ``root`` and the notes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cpu_dir = root / "sys/devices/system/cpu"
        self.node_dir = root / "sys/devices/system/node"
        self.notes: list[str] = []

    def note(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)

    def text(self, path: Path) -> str | None:
        text = read_text(path)
        return None if text is None else text.strip()

    def cpus_file(self, path: Path, *, mask: bool = False) -> CpuSet | None:
        text = self.text(path)
        if text is None:
            return None
        try:
            return parse_cpumask(text) if mask else parse_cpulist(text)
        except ValueError as error:
            self.note(f"{self.shown(path)}: {error}; ignored")
            return None

    def integer(self, path: Path) -> int | None:
        text = self.text(path)
        if text is None:
            return None
        try:
            return int(text)
        except ValueError:
            self.note(f"{self.shown(path)}: {text!r} is not an integer; ignored")
            return None

    def shown(self, path: Path) -> str:
        return "/" + str(path.relative_to(self.root)).lstrip("/")

    # ----------------------------------------------------------------------- CPUs
    def online_cpus(self, dirs: dict[int, Path]) -> CpuSet:
        """CPUs with a ``topology/`` directory, cross-checked against ``online``."""
        with_topology = {
            cpu
            for cpu, path in dirs.items()
            if (path / "topology").is_dir() and self.text(path / "online") != "0"
        }
        online = self.cpus_file(self.cpu_dir / "online")
        present = self.cpus_file(self.cpu_dir / "present")
        if not dirs:
            self.note(
                f"{self.shown(self.cpu_dir)} lists no cpuN directories (container without "
                "sysfs topology?); every CPU is treated as its own core in one package"
            )
            fallback = online or present or self.cpus_file(self.cpu_dir / "possible")
            return fallback or frozenset()
        if not with_topology:
            self.note(
                "no cpuN/topology directories; every CPU is treated as its own core in one package"
            )
            return online if online else frozenset(dirs)
        cpus = frozenset(with_topology)
        offline = frozenset(dirs) - cpus
        if present is not None:
            offline |= present - cpus
        if offline:
            self.note(
                f"CPUs {format_cpulist(offline)} are offline (no topology/ directory); excluded"
            )
        if online is None:
            self.note("cpu/online is missing; online CPUs taken from the cpuN/topology dirs")
        elif online != cpus:
            self.note(
                f"cpu/online says {format_cpulist(online) or 'nothing'!r} but CPUs "
                f"{format_cpulist(cpus)} have topology (LXCFS or a container rewrote "
                "cpu/online?); trusting the cpuN/topology directories"
            )
        return cpus

    def topology(
        self, cpus: CpuSet, dirs: dict[int, Path]
    ) -> tuple[dict[int, CpuSet], tuple[CpuSet, ...]]:
        packages: dict[int, set[int]] = {}
        cores: set[CpuSet] = set()
        missing_package: set[int] = set()
        missing_core: set[int] = set()
        legacy: set[int] = set()
        covered: set[int] = set()
        for cpu in sorted(cpus):
            top = dirs[cpu] / "topology" if cpu in dirs else None
            package = self.integer(top / "physical_package_id") if top else None
            if package is None:
                missing_package.add(cpu)
                package = 0
            packages.setdefault(package, set()).add(cpu)
            if cpu in covered:
                continue
            siblings = None
            if top is not None:
                siblings = self.cpus_file(top / "core_cpus_list")
                if siblings is None:
                    siblings = self.cpus_file(top / "thread_siblings_list")
                    if siblings is None:
                        siblings = self.cpus_file(top / "thread_siblings", mask=True)
                    if siblings is not None:
                        legacy.add(cpu)
            if siblings is None or cpu not in siblings:
                missing_core.add(cpu)
                siblings = frozenset({cpu})
            core = frozenset(siblings & cpus)
            cores.add(core)
            covered |= core
        if missing_package and dirs:
            self.note(
                f"CPUs {format_cpulist(missing_package)} have no physical_package_id; "
                "assumed package 0"
            )
        if missing_core and dirs:
            self.note(
                f"CPUs {format_cpulist(missing_core)} have no SMT sibling list; "
                "each is treated as its own core"
            )
        if legacy:
            self.note("core_cpus_list is missing (kernel < 5.7?); used thread_siblings_list")
        ordered = tuple(sorted(cores, key=min))
        return {pkg: frozenset(c) for pkg, c in sorted(packages.items())}, ordered

    # ----------------------------------------------------------------------- caches
    def l3(
        self, cpus: CpuSet, dirs: dict[int, Path]
    ) -> tuple[tuple[CpuSet, ...], list[int | None]]:
        domains: dict[CpuSet, int | None] = {}
        covered: set[int] = set()
        without: set[int] = set()
        used_map = False
        for cpu in sorted(cpus):
            if cpu in covered or cpu not in dirs:
                continue
            found = self._l3_of(cpu, dirs[cpu] / "cache")
            if found is None:
                without.add(cpu)
                continue
            shared, size, from_map = found
            used_map |= from_map
            shared = frozenset((shared & cpus) | {cpu})
            if shared & covered:
                self.note(
                    f"L3 of CPU {cpu} ({format_cpulist(shared)}) overlaps another L3 domain; "
                    "kept the first"
                )
                shared = frozenset(shared - covered)
            domains[shared] = size
            covered |= shared
        if not domains:
            self.note(
                "no L3 cache reported (VM or old kernel?); placement leaves fall back to "
                "NUMA node ∩ package"
            )
        elif without:
            self.note(f"CPUs {format_cpulist(without)} report no L3 cache; left outside L3 domains")
        if used_map:
            self.note("cache shared_cpu_list is missing (POWER9?); used the hex shared_cpu_map")
        ordered = sorted(domains, key=min)
        return tuple(ordered), [domains[d] for d in ordered]

    def _l3_of(self, cpu: int, cache: Path) -> tuple[CpuSet, int | None, bool] | None:
        for index in sorted(_numbered_any(cache, "index")):
            level = self.text(index / "level")
            kind = (self.text(index / "type") or "Unified").lower()
            if level != "3" or kind == "instruction":
                continue
            from_map = False
            shared = self.cpus_file(index / "shared_cpu_list")
            if shared is None:
                shared = self.cpus_file(index / "shared_cpu_map", mask=True)
                from_map = shared is not None
            if shared is None:
                self.note(f"{self.shown(index)} has no shared_cpu_list/map; assumed CPU {cpu} only")
                shared = frozenset({cpu})
            size_text = self.text(index / "size")
            size: int | None = None
            if size_text:
                try:
                    size = parse_cache_size(size_text)
                except ValueError as error:
                    self.note(f"{self.shown(index / 'size')}: {error}")
            return shared, size, from_map
        return None

    # ----------------------------------------------------------------------- NUMA
    def numa(
        self, cpus: CpuSet
    ) -> tuple[dict[int, CpuSet], dict[int, tuple[int, ...]], dict[int, int]]:
        nodes_dirs = _numbered(self.node_dir, _NODE_DIR)
        if not nodes_dirs:
            self.note(
                f"{self.shown(self.node_dir)} has no nodeN directories; NUMA placement unknown"
            )
            return {}, {}, {}
        nodes: dict[int, CpuSet] = {}
        distances: dict[int, tuple[int, ...]] = {}
        memory: dict[int, int] = {}
        for node, path in sorted(nodes_dirs.items()):
            listed = self.cpus_file(path / "cpulist")
            if listed is None:
                listed = self.cpus_file(path / "cpumap", mask=True)
            if listed is None:
                self.note(f"{self.shown(path)} has no cpulist/cpumap; treated as CPU-less")
                listed = frozenset()
            nodes[node] = frozenset(listed & cpus)
            if listed and not nodes[node]:
                self.note(f"NUMA node {node} lists CPUs {format_cpulist(listed)}, none online")
            text = self.text(path / "distance")
            if text:
                try:
                    distances[node] = tuple(int(x) for x in text.split())
                except ValueError:
                    self.note(f"{self.shown(path / 'distance')}: {text!r} is not integers; ignored")
            meminfo = read_text(path / "meminfo")
            total = parse_meminfo_total(meminfo) if meminfo else None
            if total is not None:
                memory[node] = total
        if distances and any(len(row) != len(nodes) for row in distances.values()):
            self.note("NUMA distance rows do not match the number of nodes; distances dropped")
            distances = {}
        orphans = cpus - frozenset().union(*nodes.values())
        if orphans:
            self.note(f"CPUs {format_cpulist(orphans)} belong to no NUMA node")
        return nodes, distances, memory

    # ----------------------------------------------------------------------- kinds
    def kinds(
        self, cpus: CpuSet, dirs: dict[int, Path]
    ) -> tuple[tuple[CpuSet, ...], tuple[str, ...]]:
        devices = self.root / "sys/devices"
        atom = self.cpus_file(devices / "cpu_atom/cpus")
        core = self.cpus_file(devices / "cpu_core/cpus")
        if atom is not None and core is not None:
            groups = [(atom & cpus, "E"), (core & cpus, "P")]
            return self._kinds_result(cpus, [(c, n) for c, n in groups if c])
        by_capacity = self._group(cpus, dirs, lambda p: self.integer(p / "cpu_capacity"))
        if len(by_capacity) > 1:
            return self._kinds_result(
                cpus, [(c, f"capacity={value}") for value, c in sorted(by_capacity.items())]
            )
        by_base = self._group(cpus, dirs, lambda p: self.integer(p / "cpufreq/base_frequency"))
        by_max = self._group(cpus, dirs, lambda p: self.integer(p / "cpufreq/cpuinfo_max_freq"))
        if len(by_base) > 1:
            return self._kinds_result(
                cpus, [(c, f"base {value // 1000} MHz") for value, c in sorted(by_base.items())]
            )
        if len(by_max) > 1:
            if max(by_max) / min(by_max) >= _FREQ_KIND_RATIO:
                return self._kinds_result(
                    cpus, [(c, f"max {value // 1000} MHz") for value, c in sorted(by_max.items())]
                )
            self.note(
                "cpuinfo_max_freq differs by < 10 % between CPUs (turbo bins); "
                "treated as one core kind"
            )
        return (), ()

    def _group(
        self, cpus: CpuSet, dirs: dict[int, Path], read: Callable[[Path], int | None]
    ) -> dict[int, CpuSet]:
        groups: dict[int, set[int]] = {}
        for cpu in sorted(cpus):
            if cpu not in dirs:
                return {}
            value = read(dirs[cpu])
            if value is None:
                return {}
            groups.setdefault(value, set()).add(cpu)
        return {value: frozenset(group) for value, group in groups.items()}

    def _kinds_result(
        self, cpus: CpuSet, groups: list[tuple[CpuSet, str]]
    ) -> tuple[tuple[CpuSet, ...], tuple[str, ...]]:
        if len(groups) < 2:
            return (), ()
        uncovered = cpus - frozenset().union(*(c for c, _ in groups))
        if uncovered:
            self.note(
                f"CPUs {format_cpulist(uncovered)} are in no core kind; counted as kind 0 "
                f"({groups[0][1]})"
            )
        return tuple(c for c, _ in groups), tuple(n for _, n in groups)

    # ----------------------------------------------------------------------- allowed
    def allowed(self, cpus: CpuSet) -> CpuSet:
        """The fixture's own evidence: ``Cpus_allowed_list``, then the cgroup cpuset."""
        status = read_status_cpus_allowed(self.root)
        if status is not None:
            return status
        cpuset = read_cpuset(self.root)
        if cpuset is not None:
            self.note(
                f"no /proc/self/status; allowed CPUs from cgroup v{cpuset.version} {cpuset.file}"
            )
            return cpuset.cpus
        self.note("no affinity or cpuset evidence in the tree; all online CPUs allowed")
        return cpus


def _numbered_any(directory: Path, prefix: str) -> list[Path]:
    try:
        return [
            entry
            for entry in directory.iterdir()
            if entry.name.startswith(prefix) and entry.name[len(prefix) :].isdigit()
        ]
    except OSError:
        return []


def _is_live_root(root: Path) -> bool:
    try:
        return root.resolve() == Path("/")
    except OSError:
        return False


def from_sysfs(
    root: str | os.PathLike[str] = "/", *, allowed: Iterable[int] | None = None
) -> Machine:
    """Read the machine under ``root`` (``/`` or a captured/generated tree).

    ``allowed`` defaults to ``os.sched_getaffinity(0)`` for the live root; for any other root it
    comes from the tree itself (``proc/self/status``, else the cgroup cpuset, else all online
    CPUs), because the calling process's affinity says nothing about a captured machine.  The
    result is always restricted to CPUs whose topology is known.
    """
    base = Path(root)
    reader = _Reader(base)
    dirs = _numbered(reader.cpu_dir, _CPU_DIR)
    cpus = reader.online_cpus(dirs)
    if allowed is not None:
        wanted = frozenset(allowed)
    elif _is_live_root(base):
        wanted = frozenset(os.sched_getaffinity(0))
    else:
        wanted = reader.allowed(cpus)
    if not cpus and wanted:
        reader.note("sysfs names no CPUs at all; using the allowed CPUs as the online set")
        cpus = wanted
    packages, cores = reader.topology(cpus, dirs)
    l3, l3_sizes = reader.l3(cpus, dirs)
    numa_nodes, distances, memory = reader.numa(cpus)
    kinds, kind_names = reader.kinds(cpus, dirs)
    machine = Machine(
        cpus=cpus,
        allowed=cpus,
        packages=packages,
        numa_nodes=numa_nodes,
        l3=l3,
        cores=cores,
        kinds=kinds,
        kind_names=kind_names,
        numa_distances=distances,
        numa_memory=memory,
        l3_sizes=tuple(l3_sizes),
        diagnostics=tuple(reader.notes),
        source=f"sysfs:{base}",
    )
    return machine.restrict(wanted)
