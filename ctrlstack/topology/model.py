"""The machine model: CPU sets for packages, NUMA nodes, L3 domains, cores and core kinds.

The model is deliberately flat — a handful of CPU sets keyed by the kernel's own ids — rather than
an hwloc-style object tree.  Everything the planner needs follows from set algebra:

* a **leaf** is ``L3 ∩ NUMA node``: the unit inside which threads share both a last-level cache
  and a memory controller (an EPYC CCD under NPS1/NPS4, half of an Intel SNC2 package, a whole
  Kunpeng NUMA node);
* a **core** is a set of SMT siblings; the planner counts cores, not PUs, unless told otherwise;
* **allowed** is what the kernel lets this process run on (affinity ∩ cgroup cpuset); a plan never
  leaves it.

Ids are the kernel's and are not assumed dense: Kunpeng reports package ids 36 and 8442, POWER9
reports NUMA nodes 0, 8 and 250-255.  Readers record every fallback they take in
``diagnostics`` so that ``ctrlstack topology`` can say *why* a number looks odd.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from .cpuset import CpuSet, format_cpulist, parse_cpulist

__all__ = ["Leaf", "Machine"]


@dataclass(frozen=True)
class Leaf:
    """One placement domain: the CPUs sharing an L3 cache *and* a NUMA node.

    ``l3`` is the index into :attr:`Machine.l3` or ``None`` for CPUs that no L3 covers (they form
    one pseudo-leaf per NUMA node and package, so nothing is lost on machines without an L3).
    """

    index: int
    cpus: CpuSet
    package: int
    numa: int | None
    l3: int | None


@dataclass(frozen=True)
class Machine:
    """A machine's CPU topology as CPU sets.  Immutable; :meth:`restrict` returns a copy.

    Attributes
    ----------
    cpus:
        Online CPUs whose topology is known.
    allowed:
        CPUs this process may run on (a subset of ``cpus``).
    packages, numa_nodes:
        Kernel id -> CPUs.  NUMA nodes without CPUs (HBM, CXL, GPU memory) are kept with an empty
        set so reports can show them; the planner skips them.
    l3:
        Last-level cache domains, each a CPU set, sorted by lowest CPU.
    cores:
        SMT sibling sets (online CPUs only), sorted by lowest CPU.
    kinds:
        Core kinds from least to most performant (hwloc's order); empty when homogeneous.
    """

    cpus: CpuSet
    allowed: CpuSet
    packages: Mapping[int, CpuSet]
    numa_nodes: Mapping[int, CpuSet]
    l3: tuple[CpuSet, ...]
    cores: tuple[CpuSet, ...]
    kinds: tuple[CpuSet, ...] = ()
    kind_names: tuple[str, ...] = ()
    numa_distances: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    numa_memory: Mapping[int, int] = field(default_factory=dict)
    l3_sizes: tuple[int | None, ...] = ()
    diagnostics: tuple[str, ...] = ()
    source: str = "unknown"

    # ------------------------------------------------------------------ derived views
    @cached_property
    def _package_of(self) -> dict[int, int]:
        return {cpu: pkg for pkg, cpus in self.packages.items() for cpu in cpus}

    @cached_property
    def _numa_of(self) -> dict[int, int]:
        return {cpu: node for node, cpus in self.numa_nodes.items() for cpu in cpus}

    @cached_property
    def _l3_of(self) -> dict[int, int]:
        return {cpu: i for i, cpus in enumerate(self.l3) for cpu in cpus}

    @cached_property
    def _core_of(self) -> dict[int, int]:
        return {cpu: i for i, cpus in enumerate(self.cores) for cpu in cpus}

    @cached_property
    def _kind_of(self) -> dict[int, int]:
        return {cpu: i for i, cpus in enumerate(self.kinds) for cpu in cpus}

    def package_of(self, cpu: int) -> int:
        """Package id of ``cpu`` (``-1`` when unknown)."""
        return self._package_of.get(cpu, -1)

    def numa_of(self, cpu: int) -> int | None:
        """NUMA node id of ``cpu``, or ``None`` when the machine reports no NUMA nodes."""
        return self._numa_of.get(cpu)

    def l3_of(self, cpu: int) -> int | None:
        """Index into :attr:`l3` of the cache domain holding ``cpu``."""
        return self._l3_of.get(cpu)

    def core_of(self, cpu: int) -> int:
        """Index into :attr:`cores` of the core holding ``cpu``."""
        return self._core_of[cpu]

    def kind_of(self, cpu: int) -> int:
        """Core-kind index of ``cpu`` (0 on homogeneous machines)."""
        return self._kind_of.get(cpu, 0)

    @cached_property
    def leaves(self) -> tuple[Leaf, ...]:
        """Placement domains (L3 ∩ NUMA), over *all* online CPUs, ordered by lowest CPU."""
        groups: dict[tuple[int, int | None, int | None], set[int]] = {}
        for cpu in sorted(self.cpus):
            key = (self.package_of(cpu), self.numa_of(cpu), self.l3_of(cpu))
            groups.setdefault(key, set()).add(cpu)
        ordered = sorted(groups.items(), key=lambda item: min(item[1]))
        return tuple(
            Leaf(index=i, cpus=frozenset(cpus), package=pkg, numa=numa, l3=l3)
            for i, ((pkg, numa, l3), cpus) in enumerate(ordered)
        )

    @property
    def smt(self) -> int:
        """Largest number of online hardware threads per core (1 when SMT is off)."""
        return max((len(c) for c in self.cores), default=1)

    # ------------------------------------------------------------------ transformations
    def restrict(self, allowed: Iterable[int]) -> Machine:
        """Return a copy whose allowed set is ``allowed ∩ cpus``, noting CPUs that were dropped."""
        requested = frozenset(allowed)
        effective = requested & self.cpus
        diagnostics = self.diagnostics
        unknown = requested - self.cpus
        if unknown:
            diagnostics = (
                *diagnostics,
                (
                    f"allowed CPUs {format_cpulist(unknown)} have no topology (offline or hidden); "
                    "ignored"
                ),
            )
        return replace(self, allowed=effective, diagnostics=diagnostics)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (CPU sets as kernel list strings); inverse of :meth:`from_dict`."""
        return {
            "source": self.source,
            "cpus": format_cpulist(self.cpus),
            "allowed": format_cpulist(self.allowed),
            "packages": {str(k): format_cpulist(v) for k, v in sorted(self.packages.items())},
            "numa_nodes": {str(k): format_cpulist(v) for k, v in sorted(self.numa_nodes.items())},
            "numa_distances": {str(k): list(v) for k, v in sorted(self.numa_distances.items())},
            "numa_memory": {str(k): v for k, v in sorted(self.numa_memory.items())},
            "l3": [format_cpulist(c) for c in self.l3],
            "l3_sizes": list(self.l3_sizes),
            "cores": [format_cpulist(c) for c in self.cores],
            "kinds": [format_cpulist(c) for c in self.kinds],
            "kind_names": list(self.kind_names),
            "leaves": [
                {
                    "index": leaf.index,
                    "cpus": format_cpulist(leaf.cpus),
                    "allowed": format_cpulist(leaf.cpus & self.allowed),
                    "package": leaf.package,
                    "numa": leaf.numa,
                    "l3": leaf.l3,
                }
                for leaf in self.leaves
            ],
            "diagnostics": list(self.diagnostics),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Machine:
        """Rebuild a machine from :meth:`to_dict` output (derived ``leaves`` are ignored)."""
        return cls(
            cpus=parse_cpulist(data["cpus"]),
            allowed=parse_cpulist(data["allowed"]),
            packages={int(k): parse_cpulist(v) for k, v in data["packages"].items()},
            numa_nodes={int(k): parse_cpulist(v) for k, v in data["numa_nodes"].items()},
            numa_distances={int(k): tuple(v) for k, v in data.get("numa_distances", {}).items()},
            numa_memory={int(k): int(v) for k, v in data.get("numa_memory", {}).items()},
            l3=tuple(parse_cpulist(c) for c in data["l3"]),
            l3_sizes=tuple(data.get("l3_sizes", ())),
            cores=tuple(parse_cpulist(c) for c in data["cores"]),
            kinds=tuple(parse_cpulist(c) for c in data.get("kinds", ())),
            kind_names=tuple(data.get("kind_names", ())),
            diagnostics=tuple(data.get("diagnostics", ())),
            source=data.get("source", "unknown"),
        )
