"""The crowding report: where a cluster's threads may run and did run, per leaf and per worker.

Why: the failure this project exists to fix is invisible from inside a task — several workers'
threads piling into one L3 domain while others idle (topology notes §4.1).  The report collects
:func:`ctrlstack.topology.pin.placement` from every worker and lays it over the machine's leaves
(L3 ∩ NUMA).  The aggregation, :func:`aggregate`, is a pure function of the placements and the
machine, so it is tested with synthetic placements and no cluster.

``ok`` is deliberately strict and simple: every pinned worker's threads are confined to its slot,
and no two workers on the same host may run on the same CPU.  Two unpinned workers therefore
never pass (both may run everywhere), which is the point of comparing against a pinned plan.
"""

from __future__ import annotations

import html
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .cpuset import CpuSet, format_cpulist, parse_cpulist
from .model import Machine

__all__ = ["CrowdingReport", "LeafUsage", "WorkerUsage", "aggregate", "crowding"]


@dataclass(frozen=True)
class LeafUsage:
    """One leaf: which workers' slots touch it and how many threads may run / last ran there.

    ``confined`` counts threads whose affinity lies inside this leaf; ``unpinned`` counts threads
    whose affinity includes this leaf *and* others (they may wander); ``running`` counts threads
    whose last CPU was in this leaf when sampled (idle threads included: a snapshot, not load).
    """

    index: int
    cpus: CpuSet
    package: int
    numa: int | None
    workers: tuple[str, ...]
    confined: int
    unpinned: int
    running: int


@dataclass(frozen=True)
class WorkerUsage:
    """One worker process.  ``confined`` is ``None`` for unpinned workers (no slot).

    ``memory`` summarises the worker's NUMA memory policy: the policy read back in the worker and
    how many of its threads hold it (``prefer:0 (5/7 threads)``; threads that existed before the
    preload keep theirs), or the preload's ``refused``/``unavailable`` outcome.
    """

    label: str
    host: str
    pid: int
    slot: CpuSet | None
    footprint: CpuSet
    threads: int
    outside: tuple[str, ...]
    numba_threads: int | None
    numba_pool: int | None
    blas_threads: int | None
    memory: str | None = None

    @property
    def confined(self) -> bool | None:
        return None if self.slot is None else not self.outside


@dataclass(frozen=True)
class CrowdingReport:
    leaves: tuple[LeafUsage, ...]
    workers: tuple[WorkerUsage, ...]
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Every pinned worker confined to its slot and no CPU shared between workers."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problems": list(self.problems),
            "leaves": [
                {
                    "index": leaf.index,
                    "cpus": format_cpulist(leaf.cpus),
                    "package": leaf.package,
                    "numa": leaf.numa,
                    "workers": list(leaf.workers),
                    "confined_threads": leaf.confined,
                    "unpinned_threads": leaf.unpinned,
                    "running_threads": leaf.running,
                }
                for leaf in self.leaves
            ],
            "workers": [
                {
                    "worker": w.label,
                    "host": w.host,
                    "pid": w.pid,
                    "slot": None if w.slot is None else format_cpulist(w.slot),
                    "footprint": format_cpulist(w.footprint),
                    "threads": w.threads,
                    "confined": w.confined,
                    "outside": list(w.outside),
                    "numba_threads": w.numba_threads,
                    "numba_pool": w.numba_pool,
                    "blas_threads": w.blas_threads,
                    "memory": w.memory,
                }
                for w in self.workers
            ],
        }

    def _tables(self) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
        leaves: list[tuple[str, ...]] = [
            ("leaf", "cpus", "numa", "package", "workers", "confined", "unpinned", "running")
        ]
        leaves += [
            (
                str(u.index),
                format_cpulist(u.cpus),
                "-" if u.numa is None else str(u.numa),
                str(u.package),
                ",".join(u.workers) or "-",
                str(u.confined),
                str(u.unpinned),
                str(u.running),
            )
            for u in self.leaves
        ]
        workers: list[tuple[str, ...]] = [
            ("worker", "slot", "threads", "numba", "blas", "memory", "confined")
        ]
        workers += [
            (
                w.label,
                "unpinned" if w.slot is None else format_cpulist(w.slot),
                str(w.threads),
                _numba_text(w),
                "-" if w.blas_threads is None else str(w.blas_threads),
                w.memory or "-",
                {None: "-", True: "yes", False: "NO"}[w.confined],
            )
            for w in self.workers
        ]
        return leaves, workers

    def _summary(self) -> str:
        pinned = sum(w.slot is not None for w in self.workers)
        verdict = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        return f"crowding: {verdict} — {len(self.workers)} workers, {pinned} pinned"

    def __str__(self) -> str:
        leaves, workers = self._tables()
        lines = [self._summary(), "", *_text_table(leaves), "", *_text_table(workers)]
        if self.problems:
            lines += ["", "problems:", *(f"  - {p}" for p in self.problems)]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        leaves, workers = self._tables()
        parts = [f"<p><strong>{html.escape(self._summary())}</strong></p>"]
        parts += [_html_table(leaves), _html_table(workers)]
        if self.problems:
            items = "".join(f"<li>{html.escape(p)}</li>" for p in self.problems)
            parts.append(f"<ul>{items}</ul>")
        return "<div class='ctrlstack-crowding'>" + "".join(parts) + "</div>"


def _numba_text(w: WorkerUsage) -> str:
    if w.numba_threads is not None:
        return str(w.numba_threads)
    if w.numba_pool is not None:
        return f"({w.numba_pool}, not started)"
    return "-"


def _text_table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _html_table(rows: Sequence[tuple[str, ...]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:]
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ---------------------------------------------------------------------------------- aggregation
def _blas_threads(pools: Sequence[Mapping[str, Any]]) -> int | None:
    counts = [int(p["num_threads"]) for p in pools if p.get("user_api") == "blas"]
    return max(counts) if counts else None


def _memory_text(p: Mapping[str, Any]) -> str | None:
    """``prefer:0 (5/7 threads)``, ``refused: prefer:7``, or ``None`` without memory data."""
    memory = p.get("memory")
    if not memory:
        return None
    applied = memory.get("applied") or {}
    if applied.get("status") in ("refused", "unavailable"):
        return f"{applied['status']}: {applied.get('requested')}"
    policy = memory.get("policy")
    if policy is None:
        return None
    held = [t["mempolicy"] for t in p.get("threads", ()) if t.get("mempolicy")]
    if not held:
        return str(policy)
    return f"{policy} ({sum(h == policy for h in held)}/{len(held)} threads)"


def _worker(
    label: str, p: Mapping[str, Any]
) -> tuple[WorkerUsage, list[tuple[CpuSet, int | None]]]:
    slot = parse_cpulist(p["slot_cpus"]) if p.get("slot_cpus") else None
    threads = [(parse_cpulist(t["affinity"]), t.get("last_cpu")) for t in p.get("threads", ())]
    outside = tuple(
        f"tid {t['tid']} {t.get('name', '')!r} on {t['affinity']}"
        for t, (affinity, _) in zip(p.get("threads", ()), threads, strict=True)
        if slot is not None and not affinity <= slot
    )
    numba = p.get("numba") or {}
    usage = WorkerUsage(
        label=label,
        host=str(p.get("host", "")),
        pid=int(p.get("pid", -1)),
        slot=slot,
        footprint=frozenset().union(*(a for a, _ in threads)),
        threads=len(threads),
        outside=outside,
        numba_threads=numba.get("num_threads"),
        numba_pool=numba.get("num_threads_config"),
        blas_threads=_blas_threads(p.get("threadpools", ())),
        memory=_memory_text(p),
    )
    return usage, threads


def aggregate(
    placements: Mapping[str, Mapping[str, Any]], machine: Machine, *, host: str | None = None
) -> CrowdingReport:
    """Build the report from ``{worker address: placement()}`` and the machine they run on.

    Workers are labelled by name when they have one.  With ``host`` given, only workers on that
    host enter the per-leaf table (the machine describes one host); CPU sharing is always judged
    per host.
    """
    workers: list[WorkerUsage] = []
    threads_of: dict[str, list[tuple[CpuSet, int | None]]] = {}
    for address in sorted(placements):
        p = placements[address]
        label = str(p.get("name") or address)
        usage, threads = _worker(label, p)
        workers.append(usage)
        if host is None or usage.host == host:
            threads_of[label] = threads

    problems: list[str] = []
    for w in workers:
        if w.outside:
            problems.append(
                f"worker {w.label}: {len(w.outside)} of {w.threads} threads may run outside its "
                f"slot {format_cpulist(w.slot or ())}: {'; '.join(w.outside[:3])}"
                + (" ..." if len(w.outside) > 3 else "")
            )
    for i, a in enumerate(workers):
        for b in workers[i + 1 :]:
            shared = a.footprint & b.footprint
            if a.host == b.host and shared:
                problems.append(
                    f"workers {a.label} and {b.label} share CPUs {format_cpulist(shared)}"
                )

    leaf_index = {cpu: leaf.index for leaf in machine.leaves for cpu in leaf.cpus}
    slot_of = {w.label: w.slot for w in workers}
    usages = []
    for leaf in machine.leaves:
        confined = unpinned = running = 0
        present = []
        for label, threads in threads_of.items():
            slot = slot_of[label]
            if slot is not None and slot & leaf.cpus:
                present.append(label)
            for affinity, last in threads:
                if affinity & leaf.cpus:
                    if affinity <= leaf.cpus:
                        confined += 1
                    elif len({leaf_index.get(c, -1) for c in affinity}) > 1:
                        unpinned += 1
                if last is not None and last in leaf.cpus:
                    running += 1
        if leaf.cpus & machine.allowed or confined or unpinned or running:
            usages.append(
                LeafUsage(
                    index=leaf.index,
                    cpus=leaf.cpus,
                    package=leaf.package,
                    numa=leaf.numa,
                    workers=tuple(present),
                    confined=confined,
                    unpinned=unpinned,
                    running=running,
                )
            )
    return CrowdingReport(leaves=tuple(usages), workers=tuple(workers), problems=tuple(problems))


def crowding(client: Any, machine: Machine | None = None) -> CrowdingReport:
    """Collect :func:`~ctrlstack.topology.pin.placement` from every worker and aggregate it.

    ``machine`` defaults to this host's discovered topology, and then only workers on this host
    enter the per-leaf table.
    """
    from .pin import placement

    host = None
    if machine is None:
        from .discover import discover  # written separately; imported lazily on purpose

        machine = discover()
        host = socket.gethostname()
    placements = client.run(placement)
    return aggregate(placements, machine, host=host)
