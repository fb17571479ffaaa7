"""A compact text map of a :class:`~ctrlstack.topology.model.Machine` for ``ctrlstack topology``.

One line per placement leaf (L3 ∩ NUMA node) keeps a 256-CPU node under ~30 lines while still
showing what matters for pinning: which CPUs share a cache and a memory controller, which SMT
siblings belong to them, and which of them this process may use.  Cores are written as their first
hardware threads followed by the siblings in parentheses (``cores 24-31 (+152-159)``), the way
Linux numbers SMT threads on x86 servers.  Leaves this process cannot use are marked with ``·``,
partly usable ones list the allowed CPUs.  The JSON form is :meth:`Machine.to_dict`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .cpuset import CpuSet, format_cpulist
from .model import Leaf, Machine

__all__ = ["format_bytes", "format_cores", "render_machine"]

_UNITS = (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))


def format_bytes(size: int) -> str:
    """Binary units, one decimal at most: ``33554432`` -> ``"32 MiB"``, 1.5 GiB -> ``"1.5 GiB"``."""
    for unit, scale in _UNITS:
        if size >= scale:
            text = f"{size / scale:.1f}".removesuffix(".0")
            return f"{text} {unit}"
    return f"{size} B"


def format_cores(machine: Machine, cpus: CpuSet) -> str:
    """``cores 0-7 (+128-135)``: first thread of each core in ``cpus``, then the other threads."""
    first: set[int] = set()
    rest: set[int] = set()
    for core in machine.cores:
        part = core & cpus
        if part:
            first.add(min(part))
            rest |= part - {min(part)}
    first |= cpus - first - rest  # CPUs no core lists: one core each
    text = f"{'core' if len(first) == 1 else 'cores'} {format_cpulist(first)}"
    return f"{text} (+{format_cpulist(rest)})" if rest else text


def _allowed(machine: Machine, cpus: CpuSet) -> str:
    allowed = cpus & machine.allowed
    text = f"allowed {len(allowed)}/{len(cpus)}"
    if allowed and allowed != cpus:
        text += f": {format_cpulist(allowed)}"
    return text


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _summary(machine: Machine) -> str:
    cpu_nodes = [n for n, c in machine.numa_nodes.items() if c]
    memory_only = len(machine.numa_nodes) - len(cpu_nodes)
    numa = _plural(len(cpu_nodes), "NUMA node")
    if memory_only:
        numa += f" (+{memory_only} CPU-less)"
    parts = [
        _plural(len(machine.packages), "package"),
        numa,
        f"{len(machine.l3)} L3",
        _plural(len(machine.leaves), "leaf").replace("leafs", "leaves"),
        _plural(len(machine.cores), "core"),
        _plural(len(machine.cpus), "PU"),
        f"SMT {machine.smt}" if machine.smt > 1 else "no SMT",
        f"allowed {len(machine.allowed)}/{len(machine.cpus)}",
    ]
    return " · ".join(parts)


def _kinds(machine: Machine) -> str | None:
    if not machine.kinds:
        return None
    parts = []
    for i, cpus in enumerate(machine.kinds):
        name = machine.kind_names[i] if i < len(machine.kind_names) else f"kind {i}"
        cores = sum(1 for core in machine.cores if core & cpus)
        parts.append(f"{name} {format_cpulist(cpus)} ({_plural(cores, 'core')})")
    return "kinds (least to most performant): " + " · ".join(parts)


def _numa_line(machine: Machine, node: int | None, cpus: CpuSet) -> str:
    if node is None:
        return "  NUMA ?  (no NUMA information)"
    parts = [f"  NUMA {node}"]
    if node in machine.numa_memory:
        parts.append(format_bytes(machine.numa_memory[node]))
    if node in machine.numa_distances:
        parts.append("distances " + ",".join(map(str, machine.numa_distances[node])))
    parts.append(_allowed(machine, cpus))
    return "  ".join(parts)


def _leaf_line(machine: Machine, leaf: Leaf) -> str:
    if leaf.l3 is None:
        label = "no L3"
    else:
        label = f"L3 #{leaf.l3}"
        size = machine.l3_sizes[leaf.l3] if leaf.l3 < len(machine.l3_sizes) else None
        details = [format_bytes(size)] if size else []
        spans = sorted(
            {machine.numa_of(cpu) for cpu in machine.l3[leaf.l3]} - {None},
            key=lambda n: n if n is not None else -1,
        )
        if len(spans) > 1:
            details.append(f"spans NUMA {','.join(map(str, spans))}")
        if details:
            label += f" ({', '.join(details)})"
    mark = "    " if leaf.cpus & machine.allowed else "  · "
    return f"{mark}{label}  {_cores_by_kind(machine, leaf.cpus)}  {_allowed(machine, leaf.cpus)}"


def _cores_by_kind(machine: Machine, cpus: CpuSet) -> str:
    """Cores of ``cpus``, split by core kind on hybrid machines (``P cores … · E cores …``)."""
    if not machine.kinds:
        return format_cores(machine, cpus)
    parts = []
    for i, kind in enumerate(machine.kinds):
        if kind & cpus:
            name = machine.kind_names[i] if i < len(machine.kind_names) else f"kind {i}"
            parts.append(f"{name} {format_cores(machine, kind & cpus)}")
    rest = cpus - frozenset().union(*machine.kinds)
    if rest:
        parts.append(format_cores(machine, rest))
    return " · ".join(reversed(parts))


def _package_lines(machine: Machine) -> list[str]:
    lines: list[str] = []
    by_package: dict[int, dict[int | None, list[Leaf]]] = {}
    for leaf in machine.leaves:
        by_package.setdefault(leaf.package, {}).setdefault(leaf.numa, []).append(leaf)
    packages: Mapping[int, CpuSet] = machine.packages or {-1: machine.cpus}
    for package, pcpus in sorted(packages.items(), key=lambda item: min(item[1], default=0)):
        label = f"package {package}" if package >= 0 else "package ?"
        lines.append(f"{label}  {_cores_by_kind(machine, pcpus)}  {_allowed(machine, pcpus)}")
        groups = by_package.get(package, {})
        for node, leaves in sorted(groups.items(), key=lambda item: min(item[1][0].cpus)):
            node_cpus = frozenset().union(*(leaf.cpus for leaf in leaves))
            lines.append(_numa_line(machine, node, node_cpus))
            lines.extend(_leaf_line(machine, leaf) for leaf in leaves)
    return lines


def _memory_only(machine: Machine) -> str | None:
    nodes = [n for n, c in sorted(machine.numa_nodes.items()) if not c]
    if not nodes:
        return None
    parts = []
    for node in nodes:
        size = machine.numa_memory.get(node)
        parts.append(f"{node} ({format_bytes(size)})" if size else str(node))
    return "CPU-less NUMA nodes (memory only, or CPUs offline/hidden): " + ", ".join(parts)


def _context_lines(context: Mapping[str, Any], indent: str = "  ") -> Iterable[str]:
    for key, value in context.items():
        if key == "notes":
            continue
        if isinstance(value, Mapping):
            yield f"{indent}{key}:"
            yield from _context_lines(value, indent + "  ")
            for note in value.get("notes", ()):
                yield f"{indent}  ! {note}"
        elif isinstance(value, list | tuple):
            yield f"{indent}{key}: {'; '.join(map(str, value))}"
        else:
            yield f"{indent}{key}: {value}"


def render_machine(machine: Machine, *, context: Mapping[str, Any] | None = None) -> str:
    """The text map: summary, packages → NUMA nodes → leaves, job context, diagnostics.

    ``context`` is :func:`ctrlstack.topology.discover.job_context` output (or any mapping of
    facts); its ``notes`` are printed with the machine's diagnostics.  No trailing newline, so
    ``print``/``click.echo`` end it exactly once.
    """
    lines = [_summary(machine)]
    kinds = _kinds(machine)
    if kinds:
        lines.append(kinds)
    lines.extend(_package_lines(machine))
    memory_only = _memory_only(machine)
    if memory_only:
        lines.append(memory_only)
    notes = list(machine.diagnostics)
    if context:
        lines.append("job:")
        lines.extend(_context_lines(context))
        notes.extend(context.get("notes", ()))
    if notes:
        lines.append("notes:")
        lines.extend(f"  - {note}" for note in notes)
    lines.append(f"source: {machine.source}")
    return "\n".join(lines)
