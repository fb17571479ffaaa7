"""Plan N workers × T threads onto disjoint CPU sets of a :class:`Machine` (pure; no side effects).

Why a planner at all: Linux schedules the threads of unpinned workers wherever it likes, and on
chiplet CPUs (EPYC CCDs, SNC halves) it happily packs several workers' threads into one L3 while
others idle (topology notes §4.1).  A plan gives every worker an explicit, disjoint set of CPUs
chosen so that workers fill *leaves* (L3 ∩ NUMA node) one at a time and spread over NUMA nodes and
sockets before any leaf takes a second worker.

Vocabulary
----------
unit
    What one thread gets: the first allowed PU of each allowed core (``smt=False``, the default;
    SMT siblings stay idle, which is what compute-bound Numba kernels want) or every allowed PU
    (``smt=True``).  With ``smt=True`` a worker takes whole free cores first and any remainder
    from the cores with the most free PUs, so workers share a physical core only once every core
    of the domain is in use (4 threads → 2 whole cores; 1-thread workers → one core each first).
domain
    The granularity a policy places at: a leaf for ``l3``/``core``/``none``, a NUMA node for
    ``numa``, a package for ``socket``.  Only units count, so NUMA nodes without CPUs (HBM, CXL,
    GPU memory) never appear.

Algorithm (greedy, worker by worker; topology notes §6.3)
---------------------------------------------------------
1. If some domain has ≥ T free units, take T of them (see *unit* above) from the domain with the
   *most* free units; ties go to the least-loaded NUMA node, then the least-loaded package
   (load = units already handed out), then the lowest index.
2. Otherwise group domains by NUMA node, then by package, then the whole machine, and use the
   first level where some group has ≥ T free units.  Among those groups prefer the one needing
   the fewest domains, then the most free units, then the same load tie-breaks.  The worker takes
   units from the fewest domains of that group, split as evenly as possible (12 threads over two
   8-core CCDs → 6 + 6, not 8 + 4).

Each step depends only on the slots already placed, so the plan is **prefix-stable**: for a fixed
``threads`` the first k slots of a plan for n workers equal the plan for k workers.  The local
cluster relies on this to add workers one at a time without moving the existing ones.  The plan is
also deterministic (no hashing order, no randomness).

The planner refuses to oversubscribe: ``workers × threads > units`` raises :class:`PlanError`
saying what was asked, what fits and what to change.
"""

from __future__ import annotations

import math
import operator
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ctrlstack.errors import UserError

from .cpuset import CpuSet, format_cpulist, parse_cpulist
from .model import Machine

__all__ = ["POLICIES", "Plan", "PlanError", "Slot", "capacity", "plan"]

POLICIES: tuple[str, ...] = ("l3", "numa", "socket", "core", "none")


class PlanError(UserError):
    """A plan cannot be made as asked; the message says what was asked, what fits, what to do."""


@dataclass(frozen=True)
class Slot:
    """The CPUs of one worker.

    ``leaves`` are indices into :attr:`Machine.leaves`; ``memory_node`` is the NUMA node to prefer
    for the worker's memory when the slot lies inside exactly one node (``None`` otherwise).
    """

    index: int
    cpus: CpuSet
    threads: int
    leaves: tuple[int, ...]
    numa_nodes: tuple[int, ...]
    packages: tuple[int, ...]
    memory_node: int | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (CPUs as a kernel list string)."""
        return {
            "index": self.index,
            "cpus": format_cpulist(self.cpus),
            "threads": self.threads,
            "leaves": list(self.leaves),
            "numa_nodes": list(self.numa_nodes),
            "packages": list(self.packages),
            "memory_node": self.memory_node,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Slot:
        """Inverse of :meth:`to_dict`."""
        return cls(
            index=int(data["index"]),
            cpus=parse_cpulist(str(data["cpus"])),
            threads=int(data["threads"]),
            leaves=tuple(int(x) for x in data["leaves"]),
            numa_nodes=tuple(int(x) for x in data["numa_nodes"]),
            packages=tuple(int(x) for x in data["packages"]),
            memory_node=None if data.get("memory_node") is None else int(data["memory_node"]),
        )


@dataclass(frozen=True)
class Plan:
    """Worker slots for one machine.  ``pinned=False`` (policy ``none``) means "do not pin"."""

    policy: str
    workers: int
    threads: int
    smt: bool
    pinned: bool
    slots: tuple[Slot, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; inverse of :meth:`from_dict`."""
        return {
            "policy": self.policy,
            "workers": self.workers,
            "threads": self.threads,
            "smt": self.smt,
            "pinned": self.pinned,
            "slots": [slot.to_dict() for slot in self.slots],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        """Rebuild a plan from :meth:`to_dict` output (e.g. shipped to a worker as JSON)."""
        return cls(
            policy=str(data["policy"]),
            workers=int(data["workers"]),
            threads=int(data["threads"]),
            smt=bool(data["smt"]),
            pinned=bool(data["pinned"]),
            slots=tuple(Slot.from_dict(s) for s in data["slots"]),
        )

    def render(self, machine: Machine) -> str:
        """A readable table: a header with policy and totals, then one line per worker."""
        units = _units(machine, self.smt)
        unit_name = "hardware threads" if self.smt else "cores"
        used = self.workers * self.threads
        mode = "pinned" if self.pinned else "not pinned (every worker may use all allowed CPUs)"
        header = (
            f"plan policy={self.policy}: {_n(self.workers, 'worker')} × "
            f"{_n(self.threads, 'thread')} = "
            f"{used} of {len(units)} allowed {unit_name} (SMT {'on' if self.smt else 'off'}), "
            f"{mode}"
        )
        titles = ("worker", "cpus", "threads", "leaves", "numa", "package", "memory")
        rows = [
            (
                str(slot.index),
                format_cpulist(slot.cpus),
                str(slot.threads),
                format_cpulist(slot.leaves),
                format_cpulist(slot.numa_nodes) or "-",
                format_cpulist(slot.packages) or "-",
                "-" if slot.memory_node is None else str(slot.memory_node),
            )
            for slot in self.slots
        ]
        widths = [max(len(t), *(len(r[i]) for r in rows)) for i, t in enumerate(titles)]
        lines = [header, "  ".join(t.ljust(w) for t, w in zip(titles, widths, strict=True))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        return "\n".join(line.rstrip() for line in lines)


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


# ---------------------------------------------------------------------------------- validation
def _check_count(name: str, value: object) -> int | None:
    """``None`` or an integer >= 1 (numpy integers accepted; bools and floats are not)."""
    if value is None:
        return None
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = 0
    if isinstance(value, bool) or number < 1:
        raise ValueError(f"{name} must be an integer >= 1 or None, got {value!r}")
    return number


def _check_policy(policy: object) -> str:
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}; got {policy!r}")
    return str(policy)


def _check_smt(smt: object) -> bool:
    if not isinstance(smt, bool):
        raise TypeError(f"smt must be True or False, got {smt!r}")
    return smt


# ---------------------------------------------------------------------------------- units/domains
def _unit_cores(machine: Machine, smt: bool) -> dict[int, int]:
    """Allowed units -> their core (its lowest allowed PU), ordered core by core."""
    allowed = machine.allowed
    seen: set[int] = set()
    units: list[tuple[int, int]] = []
    for core in machine.cores:
        pus = sorted(core & allowed)
        seen.update(core)
        if not pus:
            continue
        chosen = pus if smt else pus[:1]
        units.extend((pus[0], cpu) for cpu in chosen)
    # Allowed CPUs no core lists (inconsistent readers) count as single-PU cores.
    units.extend((cpu, cpu) for cpu in allowed - seen)
    return {cpu: core for core, cpu in sorted(units)}


def _units(machine: Machine, smt: bool) -> list[int]:
    """Allowed units, ordered core by core (then by CPU id within a core)."""
    return list(_unit_cores(machine, smt))


@dataclass
class _Domain:
    """Mutable planning state of one domain: its free units and the core of each unit."""

    index: int
    numa: int | None
    package: int
    free: list[int]
    core: Mapping[int, int]

    def take(self, n: int) -> list[int]:
        """Remove and return ``n`` free units: from the cores with the most free units first.

        Without SMT every core has one unit and this is plain CPU order.  With SMT it hands out
        whole free cores before half-used ones, and a remainder goes to the freest core too, so
        a later worker gets its own core rather than the sibling of an earlier worker's thread.
        """
        by_core: dict[int, list[int]] = {}
        for cpu in self.free:
            by_core.setdefault(self.core[cpu], []).append(cpu)
        taken: list[int] = []
        for core in sorted(by_core, key=lambda c: (-len(by_core[c]), c)):
            if len(taken) == n:
                break
            taken.extend(by_core[core][: n - len(taken)])
        chosen = set(taken)
        self.free = [cpu for cpu in self.free if cpu not in chosen]
        return sorted(taken)


def _domain_key(machine: Machine, policy: str) -> Callable[[int], tuple[int, int | None, int]]:
    """Map a CPU to (package, numa, leaf) restricted to the policy's granularity."""
    leaf_of = {cpu: leaf.index for leaf in machine.leaves for cpu in leaf.cpus}
    if policy == "numa":
        # Machines without NUMA information fall back to one domain per package.
        return lambda cpu: (machine.package_of(cpu), machine.numa_of(cpu), -1)
    if policy == "socket":
        return lambda cpu: (machine.package_of(cpu), None, -1)
    return lambda cpu: (machine.package_of(cpu), machine.numa_of(cpu), leaf_of.get(cpu, -1))


def _domains(machine: Machine, policy: str, units: Mapping[int, int]) -> list[_Domain]:
    key = _domain_key(machine, policy)
    groups: dict[tuple[int, int | None, int], list[int]] = {}
    for cpu in units:  # units are already in taking order; keep it inside each domain
        groups.setdefault(key(cpu), []).append(cpu)
    ordered = sorted(groups.items(), key=lambda item: min(item[1]))
    return [
        _Domain(index=i, numa=k[1], package=k[0], free=list(cpus), core=units)
        for i, (k, cpus) in enumerate(ordered)
    ]


def _auto_threads(domains: Sequence[_Domain]) -> int:
    """Units of the most common domain size; ties go to the larger size.

    The most common size is what a "one worker per CCD" layout means on a partial allocation too
    (a Slurm cpuset covering four whole CCDs and half of a fifth gives 8, not 4).  Ties prefer the
    larger size so that fewer, wider workers are formed, which keeps whole leaves together.
    """
    counts = Counter(len(d.free) for d in domains)
    return max(counts, key=lambda size: (counts[size], size))


# ---------------------------------------------------------------------------------- greedy
class _Greedy:
    """Worker-by-worker placement; see the module docstring for the rules."""

    def __init__(self, domains: list[_Domain]) -> None:
        self.domains = domains
        self.numa_load: Counter[int | None] = Counter()
        self.package_load: Counter[int] = Counter()

    def _loads(self, numa: int | None, package: int) -> tuple[int, int]:
        return (self.numa_load[numa] if numa is not None else 0, self.package_load[package])

    def take(self, threads: int) -> list[int]:
        fitting = [d for d in self.domains if len(d.free) >= threads]
        if fitting:
            best = min(
                fitting, key=lambda d: (-len(d.free), *self._loads(d.numa, d.package), d.index)
            )
            taken = self._take_from([(best, threads)])
        else:
            taken = self._take_split(threads)
        return taken

    def _take_split(self, threads: int) -> list[int]:
        levels: list[Callable[[_Domain], object]] = [
            # A NUMA node is split per package: cpuid-derived topologies (and some VMs) report
            # one node spanning both sockets, and workers must still alternate sockets.
            lambda d: ("numa", d.numa, d.package) if d.numa is not None else ("package", d.package),
            lambda d: d.package,
            lambda d: 0,
        ]
        for level, group_of in enumerate(levels):
            groups: dict[object, list[_Domain]] = {}
            for d in self.domains:
                if d.free:
                    groups.setdefault(group_of(d), []).append(d)
            candidates = []
            for members in groups.values():
                if sum(len(d.free) for d in members) < threads:
                    continue
                chosen = self._fewest(members, threads)
                first = members[0]
                numa_load, package_load = self._loads(first.numa, first.package)
                key = (
                    len(chosen),
                    -sum(len(d.free) for d in members),
                    numa_load if level == 0 else 0,
                    package_load if level <= 1 else 0,
                    min(d.index for d in members),
                )
                candidates.append((key, chosen))
            if candidates:
                _, chosen = min(candidates, key=lambda c: c[0])
                return self._take_from(self._even_split(chosen, threads))
        raise AssertionError("feasibility was checked before placing")  # pragma: no cover

    @staticmethod
    def _fewest(members: Sequence[_Domain], threads: int) -> list[_Domain]:
        """The fewest domains of a group whose free units add up to ``threads``."""
        chosen: list[_Domain] = []
        total = 0
        for d in sorted(members, key=lambda d: (-len(d.free), d.index)):
            chosen.append(d)
            total += len(d.free)
            if total >= threads:
                break
        return chosen

    @staticmethod
    def _even_split(chosen: Sequence[_Domain], threads: int) -> list[tuple[_Domain, int]]:
        """Water-fill ``threads`` over ``chosen``: shares differ by at most one where possible."""
        shares: list[tuple[_Domain, int]] = []
        remaining = threads
        ordered = sorted(chosen, key=lambda d: (len(d.free), d.index))
        for i, d in enumerate(ordered):
            share = min(len(d.free), math.ceil(remaining / (len(ordered) - i)))
            shares.append((d, share))
            remaining -= share
        assert remaining == 0
        return sorted(shares, key=lambda s: s[0].index)

    def _take_from(self, shares: Sequence[tuple[_Domain, int]]) -> list[int]:
        taken: list[int] = []
        for d, n in shares:
            taken.extend(d.take(n))
            self.numa_load[d.numa] += n
            self.package_load[d.package] += n
        return taken


# ---------------------------------------------------------------------------------- public API
def _slot(machine: Machine, index: int, cpus: CpuSet, threads: int) -> Slot:
    leaves = tuple(sorted(leaf.index for leaf in machine.leaves if leaf.cpus & cpus))
    numa = tuple(sorted({n for c in cpus if (n := machine.numa_of(c)) is not None}))
    packages = tuple(sorted({p for c in cpus if (p := machine.package_of(c)) >= 0}))
    return Slot(
        index=index,
        cpus=cpus,
        threads=threads,
        leaves=leaves,
        numa_nodes=numa,
        packages=packages,
        memory_node=numa[0] if len(numa) == 1 else None,
    )


def _infeasible(
    machine: Machine, workers: int, threads: int, units: int, smt: bool, policy: str
) -> PlanError:
    unit_name = "hardware threads" if smt else "cores"
    hints = []
    if units // workers >= 1:
        hints.append(f"threads={units // workers}")
    hints.append(
        f"at most {_n(units // threads, 'worker')}" if units >= threads else "fewer threads"
    )
    if not smt and len(_units(machine, True)) > units:
        hints.append("smt=True")
    advice = hints[0] if len(hints) == 1 else ", ".join(hints[:-1]) + ", or " + hints[-1]
    return PlanError(
        f"{_n(workers, 'worker')} × {_n(threads, 'thread')} need {workers * threads} {unit_name}, only "
        f"{units} allowed (CPUs {format_cpulist(machine.allowed) or 'none'}, policy "
        f"{policy!r}); use {advice}"
    )


def capacity(machine: Machine, threads: int, policy: str = "l3", *, smt: bool = False) -> int:
    """How many workers of ``threads`` threads fit without oversubscribing.

    Workers that do not fit inside one domain are split over several, so this is simply
    ``allowed units // threads`` for every policy; it is the default worker count of :func:`plan`.
    """
    checked = _check_count("threads", threads)
    if checked is None:
        raise ValueError("threads must be an integer >= 1, got None")
    _check_policy(policy)
    if policy == "core" and checked != 1:
        raise ValueError(
            f"threads must be 1 for policy 'core' (one worker per core), got {threads}"
        )
    return len(_units(machine, _check_smt(smt))) // checked


def plan(
    machine: Machine,
    workers: int | None = None,
    threads: int | None = None,
    policy: str = "l3",
    *,
    smt: bool = False,
) -> Plan:
    """Place ``workers`` workers of ``threads`` threads each on ``machine.allowed``.

    Defaults: ``threads`` = units of the most common domain (a CCD's cores under ``l3``, a NUMA
    node's under ``numa``, a package's under ``socket``, 1 under ``core``) or ``units // workers``
    when only ``workers`` is given; ``workers`` = :func:`capacity`.

    Policy ``none`` returns an unpinned plan (``pinned=False``) of the same shape: every slot's
    CPUs are all allowed CPUs and only the thread counts apply.  It still refuses
    ``workers × threads > units``: unpinned Numba pools oversubscribe the CPUs just the same, so
    the budget is kept honest (pass ``smt=True`` to count hardware threads instead of cores).

    Raises ``ValueError`` (``TypeError`` for a non-bool ``smt``) for bad arguments and
    :class:`PlanError` when the request does not fit.
    """
    workers = _check_count("workers", workers)
    threads = _check_count("threads", threads)
    policy = _check_policy(policy)
    smt = _check_smt(smt)
    if policy == "core":
        if threads not in (None, 1):
            raise ValueError(
                f"threads must be 1 (or None) for policy 'core', got {threads}; "
                "use policy='l3' for multi-threaded workers"
            )
        threads = 1

    unit_cores = _unit_cores(machine, smt)
    units = list(unit_cores)
    if not units:
        raise PlanError(
            "no allowed CPUs to plan on (the machine's allowed set is empty); check the "
            "process affinity / cpuset"
        )
    domains = _domains(machine, "l3" if policy == "none" else policy, unit_cores)

    if threads is None:
        if workers is None:
            threads = _auto_threads(domains)
        else:
            threads = len(units) // workers
            if threads == 0:
                raise PlanError(
                    f"{workers} workers need at least {workers} "
                    f"{'hardware threads' if smt else 'cores'}, only {len(units)} allowed "
                    f"(CPUs {format_cpulist(machine.allowed)}); use at most "
                    f"{_n(len(units), 'worker')}"
                    + ("" if smt or len(_units(machine, True)) == len(units) else " or smt=True")
                )
    if workers is None:
        workers = len(units) // threads
        if workers == 0:
            raise _infeasible(machine, 1, threads, len(units), smt, policy)
    if workers * threads > len(units):
        raise _infeasible(machine, workers, threads, len(units), smt, policy)

    if policy == "none":
        everything = frozenset(machine.allowed)
        slots = tuple(_slot(machine, i, everything, threads) for i in range(workers))
        return Plan(policy, workers, threads, smt, pinned=False, slots=slots)

    greedy = _Greedy(domains)
    slots = tuple(
        _slot(machine, i, frozenset(greedy.take(threads)), threads) for i in range(workers)
    )
    return Plan(policy, workers, threads, smt, pinned=True, slots=slots)
