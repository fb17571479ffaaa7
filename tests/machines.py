"""Build :class:`Machine` objects directly (no sysfs) for planner and report tests.

The shapes follow the facts in the topology notes (§2): Linux numbering with SMT siblings at
``cpu + n_cores`` (EPYC core 0 = CPUs 0 and 128), NPS1/NPS4 NUMA layouts, an Intel SNC2 part
with socket-interleaved numbering and a package-wide L3, an ARM server whose L3 is its NUMA node
(package ids 36 and 8442, as on Kunpeng 920), and a 2-CPU VM like the development machine.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from ctrlstack.topology.cpuset import CpuSet, parse_cpulist
from ctrlstack.topology.model import Machine

__all__ = [
    "SCATTERED",
    "SLURM_JOB",
    "build",
    "epyc_7763",
    "intel_snc2",
    "kunpeng",
    "layered",
    "restrict",
    "vm2",
]

#: A Slurm job cpuset on a 2×7763 (first threads of CCDs 0, 1, 8, 9).
SLURM_JOB = "0-15,64-79"
#: ``SLURM_CPU_BIND=mask_cpu:0xC000500000000000`` from a public Sherlock environment dump.
SCATTERED = "44,46,62,63"


def build(
    cores: Sequence[Iterable[int]],
    packages: Mapping[int, Iterable[int]],
    numa_nodes: Mapping[int, Iterable[int]],
    l3: Sequence[Iterable[int]],
    *,
    source: str,
) -> Machine:
    """A machine whose every CPU is online and allowed."""
    core_sets = sorted((frozenset(c) for c in cores), key=min)
    cpus: CpuSet = frozenset().union(*core_sets)
    return Machine(
        cpus=cpus,
        allowed=cpus,
        packages={k: frozenset(v) for k, v in packages.items()},
        numa_nodes={k: frozenset(v) for k, v in numa_nodes.items()},
        l3=tuple(sorted((frozenset(c) for c in l3), key=min)),
        cores=tuple(core_sets),
        source=f"synthetic:{source}",
    )


def epyc_7763(
    *,
    nps: int = 4,
    smt: int = 2,
    sockets: int = 2,
    ccds: int = 8,
    cores_per_ccd: int = 8,
    memory_nodes: Sequence[int] = (),
) -> Machine:
    """2×EPYC 7763-like: ``sockets`` × ``ccds`` CCDs × ``cores_per_ccd`` cores, NPS1/2/4.

    ``memory_nodes`` adds CPU-less NUMA nodes (HBM/CXL/GPU memory) that a planner must skip.
    """
    per_socket = ccds * cores_per_ccd
    n = sockets * per_socket
    cores = [[c + k * n for k in range(smt)] for c in range(n)]
    pus = {c: set(cores[c]) for c in range(n)}
    packages = {
        p: set().union(*(pus[c] for c in range(p * per_socket, (p + 1) * per_socket)))
        for p in range(sockets)
    }
    per_node = per_socket // nps
    numa: dict[int, set[int]] = {}
    for c in range(n):
        numa.setdefault(c // per_node, set()).update(pus[c])
    for node in memory_nodes:
        numa[node] = set()
    l3 = [
        set().union(*(pus[c] for c in range(k * cores_per_ccd, (k + 1) * cores_per_ccd)))
        for k in range(n // cores_per_ccd)
    ]
    return build(cores, packages, numa, l3, source=f"epyc7763-{sockets}s-nps{nps}-smt{smt}")


def intel_snc2(*, cores_per_socket: int = 18, smt: int = 1, interleaved: bool = True) -> Machine:
    """2-socket Intel with SNC2 (Skylake 6140-like): one L3 per package, two NUMA nodes each.

    ``interleaved`` numbers CPUs the way the 6140 cpuid fixture does: socket 0 gets the even CPUs.
    """
    n = 2 * cores_per_socket
    half = cores_per_socket // 2
    cores = [[c + k * n for k in range(smt)] for c in range(n)]
    packages: dict[int, set[int]] = {0: set(), 1: set()}
    numa: dict[int, set[int]] = {}
    for c in range(n):
        socket, pos = (c % 2, c // 2) if interleaved else divmod(c, cores_per_socket)
        packages[socket].update(cores[c])
        numa.setdefault(2 * socket + (pos >= half), set()).update(cores[c])
    return build(cores, packages, numa, list(packages.values()), source=f"snc2-{cores_per_socket}c")


def kunpeng() -> Machine:
    """ARM server (Kunpeng 920-like): 2 × 64 cores, no SMT, L3 = NUMA node, odd package ids."""
    cores = [[c] for c in range(128)]
    nodes = {k: set(range(32 * k, 32 * k + 32)) for k in range(4)}
    packages = {36: set(range(64)), 8442: set(range(64, 128))}
    return build(cores, packages, nodes, list(nodes.values()), source="kunpeng920")


def layered(
    *,
    package_ids: Sequence[int],
    numa_per_package: int,
    l3_per_numa: int,
    cores_per_l3: int,
    smt: int = 1,
    l3_spans_package: bool = False,
    order: Sequence[int] | None = None,
) -> Machine:
    """A regular machine of any shape, for property tests.

    Cores are laid out package → NUMA node → L3 → core; ``order`` renumbers them (a permutation
    of ``range(n_cores)``, e.g. socket-interleaved numbering); SMT siblings are ``cpu + n_cores``.
    ``l3_spans_package`` makes one L3 per package over several NUMA nodes (Intel SNC).
    """
    per_numa = l3_per_numa * cores_per_l3
    per_package = numa_per_package * per_numa
    n = len(package_ids) * per_package
    ids = list(order) if order is not None else list(range(n))
    cores = [[ids[c] + k * n for k in range(smt)] for c in range(n)]
    packages: dict[int, set[int]] = {}
    numa: dict[int, set[int]] = {}
    l3: dict[int, set[int]] = {}
    for c, pus in enumerate(cores):
        p = c // per_package
        packages.setdefault(package_ids[p], set()).update(pus)
        numa.setdefault(c // per_numa, set()).update(pus)
        l3.setdefault(p if l3_spans_package else c // cores_per_l3, set()).update(pus)
    return build(cores, packages, numa, list(l3.values()), source="layered")


def vm2() -> Machine:
    """The development VM: 2 cores, no SMT, one L3, one NUMA node."""
    return build([[0], [1]], {0: {0, 1}}, {0: {0, 1}}, [{0, 1}], source="vm2")


def restrict(machine: Machine, cpus: str | Iterable[int]) -> Machine:
    """The machine as seen from inside a Slurm-like cpuset (``"0-15,64-79"`` or a set)."""
    allowed = parse_cpulist(cpus) if isinstance(cpus, str) else frozenset(cpus)
    return machine.restrict(allowed)
