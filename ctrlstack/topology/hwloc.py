"""Read a :class:`~ctrlstack.topology.model.Machine` from an hwloc XML export (``lstopo --of xml``).

Why a reader of our own instead of hwloc bindings: ``pyhwloc`` needs Python ≥ 3.12 and the C
library, and hwloc 2.x refuses the 3.0 files that hwloc master writes ("cannot import XML version
3.0 > 2").  The object tree is easy to flatten into CPU sets with the standard library, and every
format difference we care about is small:

* hwloc 2.x / 3.0: ``L3Cache`` objects, NUMA nodes as *memory children* (``cpuset="0x0"`` when
  CPU-less), ``<cpukind>`` and ``<distances2>`` elements after the root object;
* hwloc 1.x: ``type="Cache" depth="3"``, ``Socket`` instead of ``Package``, NUMA nodes as normal
  parents (their ``cpuset`` still tells which CPUs they hold).

Bitmaps are 32-bit hex words, most significant first, with all-zero words omitted
(``0x000000ff,,,0x0``); :func:`~ctrlstack.topology.cpuset.parse_cpumask` handles that.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .cpuset import CpuSet, format_cpulist, parse_cpumask
from .model import Machine

__all__ = ["from_hwloc_xml", "parse_hwloc_xml"]

_PACKAGE_TYPES = {"Package", "Socket"}
_CORE_TYPES = {"IntelAtom": "E", "IntelCore": "P"}


def _cpuset(element: ET.Element, attribute: str = "cpuset") -> CpuSet:
    text = element.get(attribute)
    if text is None:
        return frozenset()
    try:
        return parse_cpumask(text)
    except ValueError as error:
        raise ValueError(
            f"object type={element.get('type')!r} os_index={element.get('os_index')!r}: "
            f"bad {attribute}: {error}"
        ) from None


def _is_l3(element: ET.Element) -> bool:
    kind = element.get("type")
    if kind == "L3Cache":
        return True
    # hwloc 1.x: one "Cache" type; cache_type 2 = instruction cache.
    return kind == "Cache" and element.get("depth") == "3" and element.get("cache_type") != "2"


def _infos(element: ET.Element) -> dict[str, str]:
    return {
        info.get("name", ""): info.get("value", "")
        for info in element.findall("info")
        if info.get("name")
    }


def _kind_name(infos: dict[str, str], index: int) -> str:
    if infos.get("CoreType") in _CORE_TYPES:
        return _CORE_TYPES[infos["CoreType"]]
    if "LinuxCapacity" in infos:
        return f"capacity={infos['LinuxCapacity']}"
    if "CPUPart" in infos:
        return f"part={infos['CPUPart']}"
    if "FrequencyMaxMHz" in infos:
        return f"max {infos['FrequencyMaxMHz']} MHz"
    return f"kind {index}"


def _distances(
    topology: ET.Element, numa_objects: list[ET.Element], notes: list[str]
) -> dict[int, tuple[int, ...]]:
    """NUMA distance rows keyed by node os_index, from the first NUMANode ``<distances2>``."""
    for element in topology.iter("distances2"):
        if element.get("type") != "NUMANode":
            continue
        try:
            count = int(element.get("nbobjs", "0"))
            indexes = [int(x) for i in element.findall("indexes") for x in (i.text or "").split()]
            values = [int(x) for v in element.findall("u64values") for x in (v.text or "").split()]
        except ValueError:
            notes.append("hwloc XML <distances2> holds non-integer values; distances dropped")
            return {}
        if element.get("indexing") == "gp":
            by_gp = {o.get("gp_index"): o.get("os_index") for o in numa_objects}
            mapped = [by_gp.get(str(i)) for i in indexes]
            if None in mapped:
                notes.append("hwloc XML distances refer to unknown gp_index; distances dropped")
                return {}
            indexes = [int(str(i)) for i in mapped]
        if count <= 0 or len(indexes) != count or len(values) != count * count:
            notes.append(
                f"hwloc XML <distances2> has {len(indexes)} indexes and {len(values)} values "
                f"for nbobjs={count}; distances dropped"
            )
            return {}
        order = sorted(range(count), key=lambda i: indexes[i])
        return {indexes[i]: tuple(values[i * count + j] for j in order) for i in order}
    if topology.find("distances") is not None or any(
        o.find("distances") is not None for o in topology.iter("object")
    ):
        notes.append("hwloc 1.x <distances> are not read; NUMA distances unknown")
    return {}


@dataclass
class _Objects:
    """The object tree flattened into the sets the model needs."""

    cpus: set[int] = field(default_factory=set)
    cores: set[CpuSet] = field(default_factory=set)
    packages: dict[int, CpuSet] = field(default_factory=dict)
    numa: dict[int, CpuSet] = field(default_factory=dict)
    memory: dict[int, int] = field(default_factory=dict)
    l3: dict[CpuSet, int | None] = field(default_factory=dict)
    numa_elements: list[ET.Element] = field(default_factory=list)


def _os_index(element: ET.Element, default: int) -> int:
    text = element.get("os_index")
    if text is None:
        return default
    if not text.isdigit():
        raise ValueError(f"{element.get('type')} os_index {text!r} is not an integer")
    return int(text)


def _collect(root: ET.Element) -> _Objects:
    """Flatten the object tree: PUs, cores, packages, NUMA nodes (+memory), L3 caches."""
    found = _Objects()
    for element in root.iter("object"):
        kind = element.get("type")
        if kind == "PU":
            if element.get("os_index") is None:
                raise ValueError("a PU object has no os_index")
            found.cpus.add(_os_index(element, 0))
        elif kind == "Core":
            found.cores.add(_cpuset(element))
        elif kind in _PACKAGE_TYPES:
            index = _os_index(element, len(found.packages))
            found.packages[index] = found.packages.get(index, frozenset()) | _cpuset(element)
        elif kind == "NUMANode":
            found.numa_elements.append(element)
            index = _os_index(element, len(found.numa))
            found.numa[index] = _cpuset(element)
            if element.get("local_memory", "").isdigit():
                found.memory[index] = int(element.get("local_memory", "0"))
        elif _is_l3(element):
            found.l3.setdefault(_cpuset(element), _size(element.get("cache_size")))
    return found


def parse_hwloc_xml(text: str | bytes, *, source: str = "hwloc-xml") -> Machine:
    """Build a machine from the text of an hwloc XML file (see :func:`from_hwloc_xml`)."""
    try:
        topology = ET.fromstring(text)
    except ET.ParseError as error:
        raise ValueError(f"{source}: not well-formed XML ({error})") from None
    if topology.tag != "topology":
        raise ValueError(f"{source}: root element is <{topology.tag}>, expected <topology>")
    root = topology.find("object")
    if root is None:
        raise ValueError(f"{source}: <topology> has no root <object>")
    try:
        return _build(topology, root, source)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


def _build(topology: ET.Element, root: ET.Element, source: str) -> Machine:
    notes: list[str] = []
    version = topology.get("version", "1.x")
    found = _collect(root)
    cpus, cores, packages, numa, l3 = found.cpus, found.cores, found.packages, found.numa, found.l3
    known = frozenset(cpus)
    if not known:
        raise ValueError("no PU objects; is this an hwloc topology export?")
    complete = _cpuset(root, "complete_cpuset")
    if complete - known:
        notes.append(
            f"CPUs {format_cpulist(complete - known)} have no PU object in the XML (offline or "
            "outside the allowed set when it was exported); excluded"
        )
    core_sets = {c & known for c in cores} - {frozenset()}
    uncovered = known - frozenset().union(*core_sets) if core_sets else known
    if uncovered:
        if core_sets:
            notes.append(f"PUs {format_cpulist(uncovered)} have no Core object; one core each")
        core_sets |= {frozenset({cpu}) for cpu in uncovered}
    l3_sets = {c & known: size for c, size in l3.items() if c & known}
    if not l3_sets:
        notes.append("no L3 cache in the XML; placement leaves fall back to NUMA node ∩ package")
    elif len(l3_sets) < len(l3):
        notes.append(f"{len(l3) - len(l3_sets)} L3 caches hold no present PU; omitted")
    if not packages:
        notes.append("no Package objects; all CPUs assumed in package 0")
        packages = {0: known}
    empty_nodes = sorted(n for n, c in numa.items() if not c & known)
    if empty_nodes:
        notes.append(f"NUMA nodes {', '.join(map(str, empty_nodes))} have no present CPU")

    kinds: list[tuple[float, int, CpuSet, str]] = []
    for index, element in enumerate(topology.findall("cpukind")):
        kind_cpus = _cpuset(element) & known
        if kind_cpus:
            try:
                efficiency = float(element.get("forced_efficiency", index))
            except ValueError:
                raise ValueError(
                    f"cpukind forced_efficiency {element.get('forced_efficiency')!r} "
                    "is not a number"
                ) from None
            kinds.append((efficiency, index, kind_cpus, _kind_name(_infos(element), index)))
    kinds.sort()
    if len(kinds) < 2:
        kinds = []

    allowed_text = root.get("allowed_cpuset")
    allowed = _cpuset(root, "allowed_cpuset") if allowed_text is not None else _cpuset(root)
    if not allowed:
        allowed = known
    if version not in {"2.0", "3.0"}:
        notes.append(f"hwloc XML version {version}: read with the 1.x/2.x compatible rules")

    ordered_l3 = sorted(l3_sets, key=min)
    machine = Machine(
        cpus=known,
        allowed=known,
        packages={k: v & known for k, v in sorted(packages.items()) if v & known},
        numa_nodes={k: v & known for k, v in sorted(numa.items())},
        l3=tuple(ordered_l3),
        l3_sizes=tuple(l3_sets[c] for c in ordered_l3),
        cores=tuple(sorted(core_sets, key=min)),
        kinds=tuple(k[2] for k in kinds),
        kind_names=tuple(k[3] for k in kinds),
        numa_distances=_distances(topology, found.numa_elements, notes),
        numa_memory=found.memory,
        diagnostics=tuple(notes),
        source=source,
    )
    return machine.restrict(allowed)


def _size(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def from_hwloc_xml(
    path: str | os.PathLike[str], *, allowed: Iterable[int] | None = None
) -> Machine:
    """Read an hwloc 1.x/2.x/3.0 XML file.

    ``allowed`` overrides the file's root ``allowed_cpuset`` (which records the cgroup/binding of
    the process that ran ``lstopo``).  Raises ``ValueError`` naming the file when it is not an
    hwloc topology.
    """
    file = Path(path)
    machine = parse_hwloc_xml(file.read_bytes(), source=f"hwloc-xml:{file}")
    return machine if allowed is None else machine.restrict(allowed)
