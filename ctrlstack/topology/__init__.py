"""Topology: read the machine (sysfs, hwloc XML), plan disjoint CPU sets, pin workers to them.

Pure modules (``cpuset``, ``model``, ``sysfs``, ``hwloc``, ``plan``, ``render``) never touch the
running process; ``discover`` reads the live machine and ``pin`` changes thread affinities.
``pin`` and ``report`` (which need NumPy/Numba/distributed at run time) are not imported here.
"""

from __future__ import annotations

from .cpuset import CpuSet, format_cpulist, parse_cpulist, parse_cpumask
from .discover import discover, job_context
from .hwloc import from_hwloc_xml
from .model import Leaf, Machine
from .plan import POLICIES, Plan, PlanError, Slot, capacity, plan
from .render import render_machine
from .sysfs import from_sysfs

__all__ = [
    "POLICIES",
    "CpuSet",
    "Leaf",
    "Machine",
    "Plan",
    "PlanError",
    "Slot",
    "capacity",
    "discover",
    "format_cpulist",
    "from_hwloc_xml",
    "from_sysfs",
    "job_context",
    "parse_cpulist",
    "parse_cpumask",
    "plan",
    "render_machine",
]
