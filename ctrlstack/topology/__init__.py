"""Topology: read the machine (sysfs, hwloc XML), plan disjoint CPU sets, pin workers to them.

Pure modules (``cpuset``, ``model``, ``sysfs``, ``hwloc``, ``plan``, ``render``) never touch the
running process; ``discover`` reads the live machine and ``pin`` changes thread affinities.
"""

from __future__ import annotations

from .cpuset import CpuSet, format_cpulist, parse_cpulist, parse_cpumask
from .model import Leaf, Machine

__all__ = ["CpuSet", "Leaf", "Machine", "format_cpulist", "parse_cpulist", "parse_cpumask"]
