"""Write fake Linux sysfs/procfs trees for the topology readers, from a compact description.

A :class:`TreeSpec` says what the machine *is* (packages, SMT sibling sets, L3 domains, NUMA nodes,
core kinds, the process's allowed CPUs and cgroup); :func:`write_tree` writes only the files
:func:`ctrlstack.topology.sysfs.from_sysfs` reads, plus an L2 ``index2`` so the reader has to pick
the L3 by ``level``.  Quirks seen in real captures are switches on the spec: NUL-terminated files
(hwloc's Kunpeng tarball), ``shared_cpu_map`` without ``shared_cpu_list`` (POWER9) and hex masks
with omitted zero words, old ``thread_siblings_list`` names, offline CPUs without ``topology/``,
CPU-less NUMA nodes, an LXCFS-style ``online`` file.

The named builders model machines from ``shared/notes/topology.md`` §2 with Linux numbering.
Each returns a spec; tests call ``write_tree(tmp_path, epyc_milan(nps=4))``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ctrlstack.topology.cpuset import CpuSet, format_cpulist

__all__ = [
    "TreeSpec",
    "arm_l3_numa",
    "epyc_milan",
    "format_mask",
    "hybrid_laptop",
    "intel_snc2",
    "lxcfs_like",
    "milan_slurm_job",
    "no_l3_vm",
    "offline_cpus",
    "write_tree",
]

KIB_PER_GIB = 1024 * 1024


@dataclass(frozen=True)
class TreeSpec:
    """A machine to write.  CPU sets include offline CPUs; ``offline`` says which they are."""

    packages: Mapping[int, CpuSet]
    cores: Sequence[CpuSet]
    l3: Sequence[tuple[CpuSet, int]]  # (CPUs, size in KiB)
    nodes: Mapping[int, CpuSet]  # an empty set makes a CPU-less (memory-only) node
    node_mem_kib: Mapping[int, int] = field(default_factory=dict)
    distances: Mapping[int, Sequence[int]] | None = None
    offline: CpuSet = frozenset()
    online_text: str | None = None  # replaces cpu/online (LXCFS)
    possible: CpuSet | None = None
    capacity: Mapping[int, int] = field(default_factory=dict)
    max_freq_khz: Mapping[int, int] = field(default_factory=dict)
    cpu_core: CpuSet | None = None  # /sys/devices/cpu_core/cpus (Intel hybrid P-cores)
    cpu_atom: CpuSet | None = None  # /sys/devices/cpu_atom/cpus (E-cores)
    legacy_names: bool = False  # thread_siblings_list instead of core_cpus_list
    map_only: bool = False  # shared_cpu_map only, hwloc-style empty zero words
    cache_ids: bool = True  # cache/indexK/id (absent on arm64)
    nul_bytes: bool = False  # "3\n\x00"
    status_allowed: CpuSet | None = None  # proc/self/status Cpus_allowed_list
    cgroup: tuple[int, str, CpuSet] | None = None  # (version 1|2, path, cpuset CPUs)
    cpu_max: str | None = None  # cgroup v2 cpu.max of the process's cgroup

    @property
    def all_cpus(self) -> CpuSet:
        return frozenset().union(*self.packages.values())

    @property
    def online(self) -> CpuSet:
        return self.all_cpus - self.offline


def format_mask(cpus: Iterable[int], nbits: int, *, compress: bool = False) -> str:
    """Kernel ``cpumap`` text: 32-bit words, most significant first; ``compress`` empties zeros."""
    value = 0
    for cpu in cpus:
        value |= 1 << cpu
    words = []
    for index in range(max(1, (nbits + 31) // 32)):
        word = (value >> (32 * index)) & 0xFFFFFFFF
        words.append("" if compress and word == 0 else f"{word:08x}")
    return ",".join(reversed(words))


def _write(path: Path, text: str, *, nul: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n" + ("\x00" if nul else ""))


def write_tree(root: Path, spec: TreeSpec) -> Path:
    """Write ``spec`` under ``root`` (``root/sys``, ``root/proc``) and return ``root``."""
    cpu_dir = root / "sys/devices/system/cpu"
    everything = spec.all_cpus
    nbits = max(everything) + 1
    possible = spec.possible if spec.possible is not None else everything
    online_text = spec.online_text if spec.online_text is not None else format_cpulist(spec.online)
    _write(cpu_dir / "online", online_text)
    _write(cpu_dir / "present", format_cpulist(everything))
    _write(cpu_dir / "possible", format_cpulist(possible))

    package_of = {cpu: pkg for pkg, cpus in spec.packages.items() for cpu in cpus}
    core_of = {cpu: core for core in spec.cores for cpu in core}
    l3_of = {cpu: (i, cpus, size) for i, (cpus, size) in enumerate(spec.l3) for cpu in cpus}
    nul = spec.nul_bytes
    for cpu in sorted(everything):
        base = cpu_dir / f"cpu{cpu}"
        if cpu in spec.offline:
            _write(base / "online", "0")
            continue
        topology = base / "topology"
        _write(topology / "physical_package_id", str(package_of[cpu]), nul=nul)
        core = core_of.get(cpu, frozenset({cpu}))
        name = "thread_siblings_list" if spec.legacy_names else "core_cpus_list"
        _write(topology / name, format_cpulist(core), nul=nul)
        # An L2 with only level/type: the reader must pick the L3 by level, not by index.
        _write(base / "cache/index2/level", "2", nul=nul)
        _write(base / "cache/index2/type", "Unified", nul=nul)
        if cpu in l3_of:
            cache_id, shared, size = l3_of[cpu]
            index3 = base / "cache/index3"
            _write(index3 / "level", "3", nul=nul)
            _write(index3 / "type", "Unified", nul=nul)
            _write(index3 / "size", f"{size}K", nul=nul)
            if spec.map_only:
                _write(index3 / "shared_cpu_map", format_mask(shared, nbits, compress=True))
            else:
                _write(index3 / "shared_cpu_list", format_cpulist(shared), nul=nul)
            if spec.cache_ids:
                _write(index3 / "id", str(cache_id), nul=nul)
        if cpu in spec.capacity:
            _write(base / "cpu_capacity", str(spec.capacity[cpu]))
        if cpu in spec.max_freq_khz:
            _write(base / "cpufreq/cpuinfo_max_freq", str(spec.max_freq_khz[cpu]))

    node_dir = root / "sys/devices/system/node"
    for node, cpus in spec.nodes.items():
        _write(node_dir / f"node{node}/cpulist", format_cpulist(cpus))
        mem = spec.node_mem_kib.get(node, 16 * KIB_PER_GIB)
        _write(node_dir / f"node{node}/meminfo", f"Node {node} MemTotal:       {mem} kB")
        if spec.distances is not None:
            _write(node_dir / f"node{node}/distance", " ".join(map(str, spec.distances[node])))
    if spec.nodes:
        _write(node_dir / "online", ",".join(map(str, sorted(spec.nodes))))

    if spec.cpu_core is not None:
        _write(root / "sys/devices/cpu_core/cpus", format_cpulist(spec.cpu_core))
    if spec.cpu_atom is not None:
        _write(root / "sys/devices/cpu_atom/cpus", format_cpulist(spec.cpu_atom))
    if spec.status_allowed is not None:
        _write(
            root / "proc/self/status",
            f"Name:\tpython\nCpus_allowed_list:\t{format_cpulist(spec.status_allowed)}",
        )
    if spec.cgroup is not None:
        _write_cgroup(root, spec)
    return root


def _write_cgroup(root: Path, spec: TreeSpec) -> None:
    assert spec.cgroup is not None
    version, path, cpus = spec.cgroup
    relative = path.lstrip("/")
    if version == 2:
        _write(root / "proc/self/cgroup", f"0::{path}")
        _write(root / "proc/self/mounts", "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0")
        directory = root / "sys/fs/cgroup" / relative
        _write(root / "sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory pids")
        _write(directory / "cpuset.cpus.effective", format_cpulist(cpus))
        if spec.cpu_max is not None:
            _write(directory / "cpu.max", spec.cpu_max)
    else:
        _write(root / "proc/self/cgroup", f"4:cpu,cpuacct:/\n3:cpuset:{path}\n0::/")
        _write(
            root / "proc/self/mounts",
            "cgroup /sys/fs/cgroup/cpuset cgroup rw,cpuset 0 0\n"
            "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0",
        )
        directory = root / "sys/fs/cgroup/cpuset" / relative
        _write(directory / "cpuset.cpus", format_cpulist(cpus))
        _write(directory / "cpuset.effective_cpus", format_cpulist(cpus))


# --------------------------------------------------------------------------- named machines
def _span(start: int, count: int) -> CpuSet:
    return frozenset(range(start, start + count))


def epyc_milan(nps: int = 1, smt: int = 2) -> TreeSpec:
    """2 × EPYC 7763: 8 CCDs × 8 cores per socket, 32 MiB L3 per CCD; core c -> CPUs c, c+128.

    ``nps`` 1, 2 or 4 NUMA nodes per socket.  Distances 10/12/32 (typical, see notes §2.1).
    """
    if nps not in (1, 2, 4) or smt not in (1, 2):
        raise ValueError(f"epyc_milan: nps must be 1, 2 or 4 and smt 1 or 2, got {nps}, {smt}")

    def with_siblings(cores: CpuSet) -> CpuSet:
        return cores | {c + 128 for c in cores} if smt == 2 else cores

    packages = {p: with_siblings(_span(64 * p, 64)) for p in range(2)}
    cores = [with_siblings(frozenset({c})) for c in range(128)]
    l3 = [(with_siblings(_span(8 * i, 8)), 32768) for i in range(16)]
    per_node = 64 // nps
    nodes = {n: with_siblings(_span(per_node * n, per_node)) for n in range(2 * nps)}
    distances = {
        n: [10 if m == n else 12 if m // nps == n // nps else 32 for m in range(2 * nps)]
        for n in range(2 * nps)
    }
    memory = {n: 256 * KIB_PER_GIB // (2 * nps) for n in range(2 * nps)}
    return TreeSpec(packages, cores, l3, nodes, memory, distances)


def milan_slurm_job(*, status: bool = True) -> TreeSpec:
    """Milan NPS4 inside a Slurm step: cgroup v2 job cpuset, task bound to CPUs 44,46,62,63.

    The binding is the real ``SLURM_CPU_BIND=quiet,mask_cpu:0xC000500000000000`` (notes §3.6);
    without ``status`` only the (wider) cgroup cpuset is left as evidence.
    """
    job = frozenset(range(40, 48)) | frozenset(range(56, 64))
    job |= {c + 128 for c in job}
    return dataclasses.replace(
        epyc_milan(nps=4),
        status_allowed=frozenset({44, 46, 62, 63}) if status else None,
        cgroup=(2, "/system.slice/slurmstepd.scope/job_4242/step_0/user/task_0", job),
    )


def intel_snc2() -> TreeSpec:
    """2 packages × 8 cores, SMT2 (c, c+16), one L3 per package split over 2 SNC NUMA nodes."""
    packages = {p: _span(8 * p, 8) | _span(8 * p + 16, 8) for p in range(2)}
    cores = [frozenset({c, c + 16}) for c in range(16)]
    l3 = [(packages[p], 30720) for p in range(2)]
    nodes = {n: _span(4 * n, 4) | _span(4 * n + 16, 4) for n in range(4)}
    distances = {
        n: [10 if m == n else 12 if m // 2 == n // 2 else 21 for m in range(4)] for n in range(4)
    }
    return TreeSpec(packages, cores, l3, nodes, {}, distances)


def arm_l3_numa() -> TreeSpec:
    """Kunpeng-920-like: package ids 36/8442, 4 NUMA nodes × 32 cores, L3 = NUMA node, no SMT.

    No cache ``id`` files and NUL-terminated files, as in hwloc's ``128arm-2pa2n8cluster4co``.
    """
    packages = {36: _span(0, 64), 8442: _span(64, 64)}
    cores = [frozenset({c}) for c in range(128)]
    l3 = [(_span(32 * n, 32), 32768) for n in range(4)]
    nodes = {n: _span(32 * n, 32) for n in range(4)}
    distances = {0: [10, 16, 32, 33], 1: [16, 10, 25, 32], 2: [32, 25, 10, 16], 3: [33, 32, 16, 10]}
    return TreeSpec(
        packages,
        cores,
        l3,
        nodes,
        {},
        distances,
        capacity=dict.fromkeys(range(128), 1024),
        cache_ids=False,
        nul_bytes=True,
    )


def hybrid_laptop() -> TreeSpec:
    """Raptor-Lake-like: 6 P-cores with SMT2 (CPUs 0-11, pairs) + 8 E-cores (12-19), one L3."""
    p_cores = [frozenset({2 * i, 2 * i + 1}) for i in range(6)]
    e_cores = [frozenset({c}) for c in range(12, 20)]
    everything = _span(0, 20)
    freq = {c: 5_000_000 if c < 12 else 3_900_000 for c in range(20)}
    return TreeSpec(
        packages={0: everything},
        cores=p_cores + e_cores,
        l3=[(everything, 24576)],
        nodes={0: everything},
        distances={0: [10]},
        max_freq_khz=freq,
        cpu_core=_span(0, 12),
        cpu_atom=_span(12, 8),
    )


def offline_cpus() -> TreeSpec:
    """POWER9-like: 2 chips (ids 0, 8) × 8 cores × SMT4, half the cores offline.

    Online CPUs 0-15 and 32-47; offline ones keep ``cpuN/`` without ``topology/``.  L3 per core
    pair (10 MiB), ``shared_cpu_map`` only with empty zero words, old ``thread_siblings_list``,
    and two CPU-less GPU-memory NUMA nodes 250 and 251.
    """
    packages = {0: _span(0, 32), 8: _span(32, 32)}
    cores = [_span(4 * c, 4) for c in range(16)]
    l3 = [(_span(8 * i, 8), 10240) for i in range(8)]
    nodes = {0: _span(0, 32), 8: _span(32, 32), 250: frozenset(), 251: frozenset()}
    distances = {
        0: [10, 40, 80, 80],
        8: [40, 10, 80, 80],
        250: [80, 80, 10, 80],
        251: [80, 80, 80, 10],
    }
    return TreeSpec(
        packages,
        cores,
        l3,
        nodes,
        {250: 15 * KIB_PER_GIB, 251: 15 * KIB_PER_GIB},
        distances,
        offline=_span(16, 16) | _span(48, 16),
        legacy_names=True,
        map_only=True,
        cache_ids=False,
    )


def lxcfs_like() -> TreeSpec:
    """8 CPUs whose ``cpu/online`` an LXCFS container rewrote to ``"0"``; status says 0-7."""
    everything = _span(0, 8)
    return TreeSpec(
        packages={0: everything},
        cores=[frozenset({c}) for c in range(8)],
        l3=[(everything, 16384)],
        nodes={0: everything},
        online_text="0",
        status_allowed=everything,
    )


def no_l3_vm() -> TreeSpec:
    """A 4-CPU VM that exposes no L3 cache (only per-core L2) and no NUMA distances."""
    everything = _span(0, 4)
    return TreeSpec(
        packages={0: everything},
        cores=[frozenset({c}) for c in range(4)],
        l3=[],
        nodes={0: everything},
    )
