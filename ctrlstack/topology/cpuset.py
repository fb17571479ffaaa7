"""CPU sets: parsing and formatting the two notations Linux and hwloc use.

A CPU set is a ``frozenset[int]`` of logical CPU ids (Linux numbering, hwloc ``os_index``).
Everything in :mod:`ctrlstack.topology` passes CPU sets around in that form, so the readers are
the only places that know about text encodings.

Two encodings exist in the wild:

* the *list* format (``0-3,8,10-11``), used by ``cpulist``/``*_list`` sysfs files, Slurm and us;
* the *mask* format: comma-separated 32-bit hex words, most significant word first
  (``00000000,0000ffff``), used by ``cpumap``/``shared_cpu_map`` files, ``SLURM_CPU_BIND``
  (``0xC000500000000000``, one word) and hwloc XML, which additionally **omits all-zero words**
  (``0x000000ff,,,,,,0x000000ff``).  Dropping the empty fields shifts every bit, a bug that hid in
  an earlier prototype until a 2×EPYC 9654 fixture caught it.
"""

from __future__ import annotations

from collections.abc import Iterable

CpuSet = frozenset[int]

__all__ = ["CpuSet", "format_cpulist", "parse_cpulist", "parse_cpumask"]


def _clean(text: str) -> str:
    # hwloc-gathered sysfs files can end in NUL bytes ("3\n\x00"); strip them with whitespace.
    return text.replace("\x00", "").strip()


def parse_cpulist(text: str) -> CpuSet:
    """Parse the kernel list format (``"0-3,8,10-11"``, ``"0-15:2"``) into a CPU set.

    An empty string (a CPU-less NUMA node) gives the empty set.  The ``a-b:stride`` form of
    ``cpuset(7)`` is accepted.  Raises ``ValueError`` naming the bad part.
    """
    text = _clean(text)
    cpus: set[int] = set()
    if not text:
        return frozenset()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            stride = 1
            if ":" in part:
                part, stride_text = part.split(":", 1)
                stride = int(stride_text)
                if stride <= 0:
                    raise ValueError
            if "-" in part:
                lo_text, hi_text = part.split("-", 1)
                lo, hi = int(lo_text), int(hi_text)
                if lo < 0 or hi < lo:
                    raise ValueError
                cpus.update(range(lo, hi + 1, stride))
            else:
                cpu = int(part)
                if cpu < 0:
                    raise ValueError
                cpus.add(cpu)
        except ValueError:
            raise ValueError(
                f"invalid CPU list {text!r}: part {part!r} is not N, N-M or N-M:S "
                "with 0 <= N <= M and S > 0"
            ) from None
    return frozenset(cpus)


def parse_cpumask(text: str) -> CpuSet:
    """Parse a hex CPU mask: kernel ``cpumap`` words, hwloc XML bitmaps, or Slurm ``0x...``.

    Words are separated by commas, most significant first, each 32 bits wide; an empty word means
    zero (hwloc's compression).  A single long word (``0xC000500000000000``) is also accepted.
    """
    text = _clean(text)
    if not text:
        return frozenset()
    words = text.split(",")
    cpus: set[int] = set()
    shift = 0
    for word in reversed(words):
        word = word.strip()
        if word.lower().startswith("0x"):
            word = word[2:]
        value = 0
        if word:
            try:
                value = int(word, 16)
            except ValueError:
                raise ValueError(f"invalid CPU mask {text!r}: word {word!r} is not hex") from None
        bit = 0
        while value:
            if value & 1:
                cpus.add(shift + bit)
            value >>= 1
            bit += 1
        # A lone word may be wider than 32 bits (Slurm); later words still count as 32-bit.
        shift += 32 if len(words) > 1 else max(32, bit)
    return frozenset(cpus)


def format_cpulist(cpus: Iterable[int]) -> str:
    """Format CPUs in the kernel list format with ranges: ``{0,1,2,3,8}`` -> ``"0-3,8"``."""
    ordered = sorted(set(cpus))
    if not ordered:
        return ""
    parts: list[str] = []
    start = prev = ordered[0]
    for cpu in ordered[1:]:
        if cpu == prev + 1:
            prev = cpu
            continue
        parts.append(f"{start}-{prev}" if prev > start else str(start))
        start = prev = cpu
    parts.append(f"{start}-{prev}" if prev > start else str(start))
    return ",".join(parts)
