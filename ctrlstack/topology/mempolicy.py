"""NUMA memory policy for worker threads: decide (pure), apply (``set_mempolicy``), verify.

Why: a pinned worker's *threads* stay on one NUMA node, but its *memory* follows the kernel's
policy of the thread that first touches a page.  The planner records each slot's ``memory_node``;
this module turns it into a policy and applies it inside the worker (topology notes §3, issue 11):

* **decide** (:func:`decide`, :func:`slot_policy`) — a slot inside one node gets
  ``MPOL_PREFERRED`` on that node: allocations go there and *spill* to other nodes when it is
  full instead of OOM-killing the worker.  ``bind`` (strict, ``MPOL_BIND`` on the slot's nodes)
  is opt-in.  A slot spanning nodes keeps the default policy, which is already "local": each
  pinned thread first-touches on its own node, and any single preferred node would make the
  other threads' pages remote.
* **apply** (:func:`apply`) — ``set_mempolicy(2)`` through ``ctypes`` (glibc has no wrapper; the
  syscall numbers are per architecture, and ``libnuma.so.1``'s wrappers are the fallback on
  architectures not in the table).  A memory policy belongs to a **thread**, like a CPU mask: it
  applies to the calling thread and to threads it creates later, never to threads that already
  exist, and no syscall sets another thread's policy.  The kernel's refusal (``EPERM`` under a
  container seccomp profile, ``EINVAL`` for nodes outside ``Mems_allowed``, ``ENOSYS`` without
  NUMA support) becomes a diagnostic, never an exception: a worker with default placement is
  better than one that does not start.
* **verify** — ``get_mempolicy(2)`` reads the calling thread's policy back (:func:`get_policy`);
  ``/proc/self/numa_maps`` (:func:`parse_numa_maps`, a pure parser) shows each mapping's policy
  and its resident pages per node, and ``/proc/self/task/<tid>/numa_maps`` shows another
  thread's policy on the mappings that have none of their own (:func:`thread_policy`).

Policies are written the way ``numa_maps`` prints them (``prefer:0``, ``bind:0-1``, ``default``)
so that what was asked, what ``get_mempolicy`` returns and what ``/proc`` shows compare as text.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import platform
import re
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .cpuset import format_cpulist, parse_cpulist
from .plan import Slot

__all__ = [
    "DEFAULT_MODE",
    "MEMORY_NODES_ENV",
    "MEMORY_POLICY_ENV",
    "MODES",
    "Decision",
    "MemoryPolicy",
    "MempolicyUnavailable",
    "NumaMapsEntry",
    "allowed_nodes",
    "apply",
    "bytes_by_node",
    "decide",
    "get_policy",
    "mask_nodes",
    "node_mask",
    "parse_numa_maps",
    "parse_policy",
    "resident_by_node",
    "set_policy",
    "slot_policy",
    "syscall_numbers",
    "task_policy",
    "thread_policy",
]

logger = logging.getLogger(__name__)

MEMORY_NODES_ENV = "CTRLSTACK_MEMORY_NODES"
MEMORY_POLICY_ENV = "CTRLSTACK_MEMORY_POLICY"
#: What a profile may ask for: ``preferred`` (default), ``bind`` (strict) or ``none``.
MODES: tuple[str, ...] = ("preferred", "bind", "none")
DEFAULT_MODE = "preferred"

# include/uapi/linux/mempolicy.h
_MPOL_DEFAULT, _MPOL_PREFERRED, _MPOL_BIND = 0, 1, 2
_MPOL_F_MEMS_ALLOWED = 1 << 2
_MPOL_MODE_FLAGS = (1 << 15) | (1 << 14) | (1 << 13)  # static, relative, numa balancing
# kernel mode number -> (our name, the label numa_maps prints; mm/mempolicy.c policy_modes[])
_MODES: dict[int, tuple[str, str]] = {
    0: ("default", "default"),
    1: ("preferred", "prefer"),
    2: ("bind", "bind"),
    3: ("interleave", "interleave"),
    4: ("local", "local"),
    5: ("preferred_many", "prefer (many)"),
    6: ("weighted_interleave", "weighted interleave"),
}
_NUMBER = {name: number for number, (name, _) in _MODES.items()}
_LABEL = {name: label for name, label in _MODES.values()}
_NAME_OF_LABEL = {label: name for name, label in _MODES.values()}
#: The kernel rejects masks longer than a page of bits (mm/mempolicy.c get_nodes).
MAX_NODES = 4096 * 8
#: Bits for reading masks back: at least the kernel's ``nr_node_ids`` (MAX_NUMNODES <= 1024 on
#: x86_64/arm64 today; 4096 leaves room).
_READ_BITS = 4096


# ---------------------------------------------------------------------------------- decision
@dataclass(frozen=True)
class MemoryPolicy:
    """A thread memory policy: ``mode`` (``preferred``, ``bind``, ``default``, ...) and nodes."""

    mode: str
    nodes: frozenset[int] = frozenset()

    def __str__(self) -> str:
        """As ``numa_maps`` prints it: ``prefer:0``, ``bind:0-1``, ``default``."""
        label = _LABEL.get(self.mode, self.mode)
        return f"{label}:{format_cpulist(self.nodes)}" if self.nodes else label


@dataclass(frozen=True)
class Decision:
    """The policy a slot gets (``None``: leave the kernel default) and why, in words."""

    policy: MemoryPolicy | None
    reason: str


def decide(nodes: Iterable[int], mode: str = DEFAULT_MODE) -> Decision:
    """The policy for a worker whose CPUs lie in NUMA ``nodes`` (pure).

    ``preferred``: one node -> ``MPOL_PREFERRED`` there (spills when full); several nodes -> the
    default (local) policy.  ``bind``: ``MPOL_BIND`` on all of ``nodes`` (allocation fails rather
    than leaving them).  ``none``: nothing.  No nodes (no NUMA information): nothing.
    """
    if mode not in MODES:
        raise ValueError(f"memory policy must be one of {', '.join(MODES)}; got {mode!r}")
    node_set = frozenset(nodes)
    if mode == "none":
        return Decision(None, "memory policy disabled (mode none)")
    if not node_set:
        return Decision(
            None, "no NUMA nodes for this worker (unpinned, or no NUMA information): kernel default"
        )
    listed = format_cpulist(node_set)
    if mode == "bind":
        return Decision(
            MemoryPolicy("bind", node_set),
            f"strict: memory only from node(s) {listed}; allocations fail instead of spilling",
        )
    if len(node_set) == 1:
        return Decision(
            MemoryPolicy("preferred", node_set),
            f"slot inside NUMA node {listed}: prefer it, spill to other nodes when it is full",
        )
    return Decision(
        None,
        f"slot spans NUMA nodes {listed}: the default local policy keeps each pinned thread's "
        "pages on its own node",
    )


def slot_policy(slot: Slot, mode: str = DEFAULT_MODE) -> Decision:
    """:func:`decide` for a plan slot (its preferred node is ``slot.memory_node``)."""
    return decide(slot.numa_nodes, mode)


# ---------------------------------------------------------------------------------- node masks
def node_mask(nodes: Iterable[int], word_bits: int = 64) -> tuple[tuple[int, ...], int]:
    """``(words, maxnode)`` for ``set_mempolicy``: a bitmap of ``unsigned long`` words, low first.

    ``maxnode`` is the bit count **plus one**: the kernel reads ``maxnode - 1`` bits (an
    off-by-one kept for compatibility; libnuma passes ``size + 1`` too).  An empty set gives
    ``((), 0)``, which the kernel reads as "no mask".
    """
    node_set = sorted(set(nodes))
    for node in node_set:
        if isinstance(node, bool) or not isinstance(node, int) or not 0 <= node < MAX_NODES:
            raise ValueError(f"NUMA node ids must be integers in [0, {MAX_NODES}); got {node!r}")
    if not node_set:
        return (), 0
    words = [0] * (node_set[-1] // word_bits + 1)
    for node in node_set:
        words[node // word_bits] |= 1 << (node % word_bits)
    return tuple(words), len(words) * word_bits + 1


def mask_nodes(words: Sequence[int], word_bits: int = 64) -> frozenset[int]:
    """The node ids set in a bitmap of words, low word first (inverse of :func:`node_mask`)."""
    return frozenset(
        i * word_bits + bit
        for i, word in enumerate(words)
        for bit in range(word_bits)
        if word >> bit & 1
    )


# ---------------------------------------------------------------------------------- numa_maps
_POLICY_RE = re.compile(
    r"(?P<mode>weighted interleave|prefer \(many\)|[a-z]+)"
    r"(?:=(?P<flags>[a-z|]+))?(?::(?P<nodes>[0-9][0-9,-]*))?"
)
_LINE_RE = re.compile(r"(?P<address>[0-9a-f]+) (?P<policy>" + _POLICY_RE.pattern + r")(?: |$)")


def parse_policy(text: str) -> tuple[str, tuple[str, ...], frozenset[int]]:
    """``"bind=static:0-1"`` -> ``("bind", ("static",), {0, 1})``; the mode as printed."""
    match = _POLICY_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a memory policy: {text!r}")
    flags = tuple(match["flags"].split("|")) if match["flags"] else ()
    nodes = parse_cpulist(match["nodes"]) if match["nodes"] else frozenset()
    return match["mode"], flags, nodes


@dataclass(frozen=True)
class NumaMapsEntry:
    """One line of ``/proc/<pid>/numa_maps``: a mapping, its policy and its pages per node.

    ``kind`` is ``heap``, ``stack``, ``huge`` or ``file=<path>`` when printed, else ``None``
    (anonymous).  ``pages`` counts pages of ``page_size`` bytes; ``counters`` keeps the other
    numeric fields (``anon``, ``dirty``, ``mapped``, ...).
    """

    address: int
    policy: str
    mode: str
    nodes: frozenset[int]
    pages: Mapping[int, int]
    page_size: int = 4096
    kind: str | None = None
    counters: Mapping[str, int] = field(default_factory=dict)


def parse_numa_maps(text: str) -> list[NumaMapsEntry]:
    """Parse ``numa_maps`` text (pure).  Lines that do not parse are skipped, not fatal.

    The policy is matched before splitting on spaces because two kernel labels contain one
    (``prefer (many)``, ``weighted interleave``); paths cannot, the kernel escapes them.
    """
    entries = []
    for line in text.splitlines():
        match = _LINE_RE.match(line)
        if match is None:
            continue
        pages: dict[int, int] = {}
        counters: dict[str, int] = {}
        kind = None
        page_size = 4096
        for token in line[match.end() :].split():
            key, sep, value = token.partition("=")
            if key == "file":
                kind = token
            elif not sep:
                kind = key
            elif not value.isdigit():
                continue
            elif key == "kernelpagesize_kB":
                page_size = int(value) * 1024
            elif key[:1] == "N" and key[1:].isdigit():
                pages[int(key[1:])] = int(value)
            else:
                counters[key] = int(value)
        mode, _, nodes = parse_policy(match["policy"])
        entries.append(
            NumaMapsEntry(
                address=int(match["address"], 16),
                policy=match["policy"],
                mode=mode,
                nodes=nodes,
                pages=pages,
                page_size=page_size,
                kind=kind,
                counters=counters,
            )
        )
    return entries


def bytes_by_node(entries: Iterable[NumaMapsEntry]) -> dict[int, int]:
    """Resident bytes per NUMA node over ``entries`` (what placement really was)."""
    total: Counter[int] = Counter()
    for entry in entries:
        for node, pages in entry.pages.items():
            total[node] += pages * entry.page_size
    return dict(sorted(total.items()))


def task_policy(entries: Iterable[NumaMapsEntry]) -> str | None:
    """The policy most mappings show: the task's own, since only ``mbind`` ranges differ."""
    counts = Counter(entry.policy for entry in entries)
    return counts.most_common(1)[0][0] if counts else None


def thread_policy(tid: int | None = None, *, proc: str = "/proc/self") -> str | None:
    """The memory policy of thread ``tid`` of this process (``None``: the calling thread).

    Read from the first chunk of ``task/<tid>/numa_maps``: the kernel prints the thread's own
    policy on every mapping without a policy of its own, and generates only what is read, so
    this does not walk the page tables of a large heap.  ``None`` when it cannot be read.
    """
    tid = threading.get_native_id() if tid is None else tid
    try:
        with open(f"{proc}/task/{tid}/numa_maps") as f:
            chunk = f.read(8192)
    except OSError:
        return None
    complete = chunk.rsplit("\n", 1)[0] if "\n" in chunk else chunk
    return task_policy(parse_numa_maps(complete))


def resident_by_node(proc: str = "/proc/self") -> dict[int, int] | None:
    """Resident bytes per NUMA node of a whole process (walks every mapping; a diagnostic)."""
    try:
        with open(f"{proc}/numa_maps") as f:
            return bytes_by_node(parse_numa_maps(f.read()))
    except OSError:
        return None


# ---------------------------------------------------------------------------------- syscalls
#: (``platform.machine()``, pointer bits) -> (set_mempolicy, get_mempolicy).  x86_64 from
#: ``asm/unistd_64.h``; aarch64 and riscv64 use ``asm-generic/unistd.h``.  A 32-bit process
#: under a 64-bit kernel reports the kernel's machine name, hence the pointer size in the key.
_SYSCALLS: dict[tuple[str, int], tuple[int, int]] = {
    ("x86_64", 64): (238, 239),
    ("aarch64", 64): (237, 236),
    ("riscv64", 64): (237, 236),
}


#: The fallback on architectures missing from the table: libnuma's ``numaif.h`` wrappers.
_LIBNUMA = "libnuma.so.1"


def syscall_numbers(machine: str, pointer_bits: int) -> tuple[int, int] | None:
    """``(set_mempolicy, get_mempolicy)`` syscall numbers, or ``None`` for an unknown ABI."""
    return _SYSCALLS.get((machine.lower(), pointer_bits))


@dataclass(frozen=True)
class _Backend:
    name: str
    set: Callable[[int, Any, int], int]
    get: Callable[[Any, Any, int, int], int]


class MempolicyUnavailable(OSError):
    """No way to call ``set_mempolicy`` here (not Linux, unknown architecture, no libnuma)."""


@functools.cache
def _backend() -> _Backend | str:
    """The syscall wrapper, or a sentence saying why there is none."""
    if not sys.platform.startswith("linux"):
        return f"memory policies need Linux (this is {sys.platform})"
    machine, bits = platform.machine(), ctypes.sizeof(ctypes.c_void_p) * 8
    numbers = syscall_numbers(machine, bits)
    if numbers is not None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        set_nr, get_nr = (ctypes.c_long(n) for n in numbers)
        return _Backend(
            f"syscall {set_nr.value}/{get_nr.value} ({machine})",
            lambda mode, mask, maxnode: libc.syscall(
                set_nr, ctypes.c_long(mode), mask, ctypes.c_ulong(maxnode)
            ),
            lambda mode, mask, maxnode, flags: libc.syscall(
                get_nr, mode, mask, ctypes.c_ulong(maxnode), None, ctypes.c_ulong(flags)
            ),
        )
    try:  # libnuma's numaif wrappers know every architecture it was built for
        numa = ctypes.CDLL(_LIBNUMA, use_errno=True)
        set_fn, get_fn = numa.set_mempolicy, numa.get_mempolicy
    except (OSError, AttributeError):
        return (
            f"no set_mempolicy syscall number known for {machine} ({bits}-bit) and "
            f"{_LIBNUMA} is not installed"
        )
    set_fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong]
    # numaif.h: long get_mempolicy(int *, unsigned long *, unsigned long, void *, unsigned)
    get_fn.argtypes = [
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_ulong,
        ctypes.c_void_p,
        ctypes.c_uint,
    ]
    return _Backend(
        _LIBNUMA,
        lambda mode, mask, maxnode: int(set_fn(mode, mask, maxnode)),
        lambda mode, mask, maxnode, flags: int(get_fn(mode, mask, maxnode, None, flags)),
    )


def _require() -> _Backend:
    backend = _backend()
    if isinstance(backend, str):
        raise MempolicyUnavailable(errno.ENOSYS, backend)
    return backend


def _oserror(call: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{call}: {os.strerror(code)}")


def set_policy(policy: MemoryPolicy | None) -> None:
    """``set_mempolicy(2)`` for the **calling thread** (and threads it creates later).

    ``None`` restores the default.  Raises :class:`OSError` with the kernel's errno.
    """
    backend = _require()
    if policy is None or policy.mode == "default":
        if backend.set(_MPOL_DEFAULT, None, 0) != 0:
            raise _oserror("set_mempolicy(MPOL_DEFAULT)")
        return
    if policy.mode not in _NUMBER:
        raise ValueError(f"unknown memory policy mode {policy.mode!r}")
    bits = ctypes.sizeof(ctypes.c_ulong) * 8
    words, maxnode = node_mask(policy.nodes, bits)
    mask = (ctypes.c_ulong * max(1, len(words)))(*words)
    if backend.set(_NUMBER[policy.mode], mask if words else None, maxnode) != 0:
        raise _oserror(f"set_mempolicy({policy})")


def _get(flags: int) -> tuple[int, frozenset[int]]:
    backend = _require()
    bits = ctypes.sizeof(ctypes.c_ulong) * 8
    mode = ctypes.c_int(-1)
    mask = (ctypes.c_ulong * (_READ_BITS // bits))()
    if backend.get(ctypes.byref(mode), mask, _READ_BITS, flags) != 0:
        raise _oserror("get_mempolicy")
    return mode.value, mask_nodes(list(mask), bits)


def get_policy() -> MemoryPolicy:
    """``get_mempolicy(2)``: the calling thread's policy as the kernel holds it."""
    raw, nodes = _get(0)
    number = raw & ~_MPOL_MODE_FLAGS
    name = _MODES.get(number, (f"mode{number}", ""))[0]
    return MemoryPolicy(name, nodes)


def allowed_nodes() -> frozenset[int]:
    """Nodes this thread may use for memory (``Mems_allowed``; ``MPOL_F_MEMS_ALLOWED``)."""
    return _get(_MPOL_F_MEMS_ALLOWED)[1]


# ---------------------------------------------------------------------------------- apply
_ERRNO_HINTS = {
    errno.EPERM: "a container seccomp profile or missing CAP_SYS_NICE forbids memory policies",
    errno.ENOSYS: "the kernel has no NUMA memory-policy support",
    errno.EINVAL: "the node(s) are not among this process's allowed memory nodes",
}


def apply(decision: Decision) -> dict[str, Any]:
    """Apply ``decision`` to the calling thread and read it back; never raises for the kernel.

    Returns a JSON-ready record: ``status`` (``applied``, ``narrowed`` — the kernel kept only
    part of a ``bind`` mask —, ``refused``, ``unavailable`` or ``skipped``), the ``requested``
    and read-back ``applied`` policies in ``numa_maps`` notation, ``allowed_nodes``, the
    ``reason`` for the decision, the ``backend``, the thread id, and ``diagnostics`` (sentences).
    """
    record: dict[str, Any] = {
        "status": "skipped",
        "requested": None if decision.policy is None else str(decision.policy),
        "applied": None,
        "allowed_nodes": None,
        "reason": decision.reason,
        "backend": None,
        "tid": threading.get_native_id(),
        "diagnostics": [],
    }
    diagnostics: list[str] = record["diagnostics"]
    if decision.policy is None:
        return record
    backend = _backend()
    if isinstance(backend, str):
        record["status"] = "unavailable"
        diagnostics.append(f"memory policy {decision.policy} not applied: {backend}")
        return record
    record["backend"] = backend.name
    try:
        allowed: frozenset[int] | None = allowed_nodes()
    except OSError:
        allowed = None
    record["allowed_nodes"] = None if allowed is None else format_cpulist(allowed)
    try:
        set_policy(decision.policy)
    except (OSError, ValueError) as error:
        code = getattr(error, "errno", None)
        name = errno.errorcode.get(code, "error") if code else "error"
        record["status"] = "unavailable" if code == errno.ENOSYS else "refused"
        hint = _ERRNO_HINTS.get(code or 0, str(error))
        if code == errno.EINVAL and allowed is not None:
            hint += f" ({format_cpulist(allowed) or 'none'})"
        diagnostics.append(
            f"set_mempolicy refused {decision.policy} ({name}): {hint}; memory stays on the "
            "kernel's default local-first placement"
        )
        return record
    try:
        readback = get_policy()
    except OSError as error:
        record["status"] = "applied"
        diagnostics.append(f"applied, but get_mempolicy could not read it back: {error}")
        return record
    record["applied"] = str(readback)
    if readback == decision.policy:
        record["status"] = "applied"
    else:
        record["status"] = "narrowed"
        diagnostics.append(
            f"asked for {decision.policy}, the kernel holds {readback} (nodes outside "
            f"Mems_allowed {record['allowed_nodes']} are dropped)"
        )
    if allowed is not None and len(allowed) == 1:
        diagnostics.append(
            f"only NUMA node {format_cpulist(allowed)} holds this process's memory: the policy "
            "is in place but cannot change placement here"
        )
    return record
