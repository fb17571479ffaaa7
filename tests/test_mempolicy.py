"""NUMA memory policy: the decision per slot, node masks and numa_maps (pure), real syscalls here.

A memory policy belongs to a thread, so the real calls run in a fresh thread of the pytest
process: whatever it sets dies with it (the tests check that the main thread is untouched).
This machine has one NUMA node, so the real calls prove the mechanics (the call, the read-back,
the refusals), and the multi-node decisions are checked on the fixtures' plans.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import cloudpickle
import pytest
from machines import epyc_7763, intel_snc2, kunpeng, vm2
from sysfs_factory import arm_l3_numa, epyc_milan, milan_slurm_job, write_tree
from sysfs_factory import intel_snc2 as snc2_tree

from ctrlstack.topology import mempolicy as mp
from ctrlstack.topology import pin
from ctrlstack.topology.cpuset import format_cpulist
from ctrlstack.topology.plan import Plan, Slot, plan
from ctrlstack.topology.report import aggregate
from ctrlstack.topology.sysfs import from_sysfs

T = TypeVar("T")


def in_fresh_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a new thread (its memory policy dies with it) and return its result."""
    out: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            out.append(fn())
        except BaseException as error:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(error)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(60)
    if errors:
        raise errors[0]
    return out[0]


def _syscall_usable() -> str | None:
    """Why set_mempolicy cannot be called here, or None.  Harmless probe: MPOL_DEFAULT."""
    backend = mp._backend()
    if isinstance(backend, str):
        return backend
    try:
        in_fresh_thread(lambda: mp.set_policy(None))
    except OSError as error:
        if error.errno in (errno.EPERM, errno.ENOSYS):
            return f"set_mempolicy refused by this kernel/container: {error}"
        raise
    return None


_UNUSABLE = _syscall_usable()
needs_mempolicy = pytest.mark.skipif(_UNUSABLE is not None, reason=str(_UNUSABLE))


def policies(p: Plan, mode: str = "preferred") -> list[str | None]:
    out = []
    for slot in p.slots:
        policy = mp.slot_policy(slot, mode).policy
        out.append(None if policy is None else str(policy))
    return out


# ------------------------------------------------------------------ decisions (pure)
def test_decide_prefers_a_single_node_and_leaves_multi_node_slots_local() -> None:
    one = mp.decide([3])
    assert one.policy == mp.MemoryPolicy("preferred", frozenset({3}))
    assert "spill" in one.reason
    spans = mp.decide([0, 1])
    assert spans.policy is None
    assert "spans NUMA nodes 0-1" in spans.reason
    strict = mp.decide([0, 1], "bind")
    assert strict.policy == mp.MemoryPolicy("bind", frozenset({0, 1}))
    assert str(strict.policy) == "bind:0-1"
    assert mp.decide([], "preferred").policy is None
    assert mp.decide([], "bind").policy is None
    assert mp.decide([2], "none").policy is None
    with pytest.raises(ValueError, match="memory policy must be one of preferred, bind, none"):
        mp.decide([0], "strict")


def test_epyc_nps4_one_worker_per_ccd_prefers_its_own_node() -> None:
    p = plan(epyc_7763(nps=4), 4, 8)
    assert policies(p) == ["prefer:0", "prefer:4", "prefer:1", "prefer:5"]
    assert policies(p, "bind") == ["bind:0", "bind:4", "bind:1", "bind:5"]
    for slot in p.slots:
        assert mp.slot_policy(slot).policy == mp.MemoryPolicy(
            "preferred", frozenset({slot.memory_node})
        )


def test_workers_spanning_nodes_keep_the_default_unless_strict() -> None:
    p = plan(epyc_7763(nps=4), 2, 40)  # five CCDs per socket: nodes 0-2 and 4-6
    assert policies(p) == [None, None]
    assert policies(p, "bind") == ["bind:0-2", "bind:4-6"]
    snc = plan(intel_snc2(), 2, 18)  # a whole SNC2 package: both of its nodes
    assert policies(snc) == [None, None]
    assert policies(snc, "bind") == ["bind:0-1", "bind:2-3"]


def test_intel_snc2_and_kunpeng_per_node_workers() -> None:
    assert policies(plan(intel_snc2(), policy="numa")) == [
        "prefer:0",
        "prefer:2",
        "prefer:1",
        "prefer:3",
    ]
    assert policies(plan(kunpeng())) == ["prefer:0", "prefer:2", "prefer:1", "prefer:3"]
    assert policies(plan(vm2(), 2, 1)) == ["prefer:0", "prefer:0"]


def test_cpu_less_memory_nodes_are_never_chosen() -> None:
    p = plan(epyc_7763(nps=4, memory_nodes=(250, 251)), policy="numa")
    chosen = [mp.slot_policy(s, "bind").policy for s in p.slots]
    assert sorted(min(c.nodes) for c in chosen if c is not None) == list(range(8))
    assert all(c is not None and c.nodes.isdisjoint({250, 251}) for c in chosen)


@pytest.mark.parametrize(
    ("spec", "policy", "expected"),
    [
        (epyc_milan(nps=4), "l3", ["prefer:0", "prefer:4", "prefer:1", "prefer:5"]),
        (epyc_milan(nps=4), "numa", ["prefer:0", "prefer:4", "prefer:1", "prefer:5"]),
        (epyc_milan(nps=1), "l3", ["prefer:0", "prefer:1", "prefer:0", "prefer:1"]),
        (snc2_tree(), "l3", ["prefer:0", "prefer:2", "prefer:1", "prefer:3"]),
        (arm_l3_numa(), "l3", ["prefer:0", "prefer:2", "prefer:1", "prefer:3"]),
        (milan_slurm_job(), "l3", ["prefer:2", "prefer:3"]),  # CPUs 44,46 | 62,63 of NPS4
    ],
    ids=["milan-nps4-l3", "milan-nps4-numa", "milan-nps1", "snc2", "arm", "slurm-step"],
)
def test_generated_sysfs_trees(tmp_path: Path, spec: Any, policy: str, expected: list[str]) -> None:
    machine = from_sysfs(write_tree(tmp_path, spec))
    p = plan(machine, policy=policy)
    assert policies(p)[: len(expected)] == expected
    # Every pinned worker inside one node gets exactly that node, as the environment carries it.
    for slot, env in zip(p.slots, pin.worker_envs(p), strict=True):
        assert env[mp.MEMORY_NODES_ENV] == format_cpulist(slot.numa_nodes)
        assert slot.memory_node is not None
        assert mp.MEMORY_POLICY_ENV not in env  # the mode is left to the profile's env


# ------------------------------------------------------------------ node masks (pure)
def test_node_mask_words_and_maxnode() -> None:
    assert mp.node_mask([0]) == ((1,), 65)
    assert mp.node_mask([4]) == ((16,), 65)
    assert mp.node_mask([63]) == ((1 << 63,), 65)
    assert mp.node_mask([64]) == ((0, 1), 129)
    assert mp.node_mask([0, 65, 130]) == ((1, 2, 4), 193)
    assert mp.node_mask([1, 33], word_bits=32) == ((2, 2), 65)
    assert mp.node_mask([]) == ((), 0)
    for bad in ([-1], [mp.MAX_NODES], [True], [1.0]):
        with pytest.raises(ValueError, match="NUMA node ids must be integers"):
            mp.node_mask(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("nodes", [{0}, {3, 7}, {0, 63, 64, 255}, set(range(0, 1024, 17))])
@pytest.mark.parametrize("bits", [32, 64])
def test_mask_nodes_inverts_node_mask(nodes: set[int], bits: int) -> None:
    words, maxnode = mp.node_mask(nodes, bits)
    assert maxnode == len(words) * bits + 1
    assert mp.mask_nodes(words, bits) == nodes


# ------------------------------------------------------------------ numa_maps (pure)
# Recorded on this VM (kernel 6.18, after set_mempolicy(MPOL_PREFERRED, node 0) in the reader).
RECORDED = """\
55eadcd52000 prefer:0 file=/root/.pyenv/versions/3.11.7/bin/python3.11 mapped=1 N0=1 kernelpagesize_kB=4
55eadcd54000 prefer:0 file=/root/.pyenv/versions/3.11.7/bin/python3.11
55eaea823000 prefer:0 heap anon=225 dirty=225 active=0 N0=225 kernelpagesize_kB=4
7fbfa0000000 prefer:0 anon=1 dirty=1 active=0 N0=1 kernelpagesize_kB=4
7fbfa0021000 prefer:0
7fbfae458000 prefer:0 file=/usr/lib/x86_64-linux-gnu/libffi.so.8.1.2 mapped=2 active=0 N0=2 kernelpagesize_kB=4
"""

# Multi-node lines in the kernel's format (fs/proc/task_mmu.c show_numa_map, mm/mempolicy.c
# mpol_to_str), as a two-socket machine prints them: an mbind'ed range, labels with spaces,
# flags, a hugetlb mapping and an escaped path.
MULTI_NODE = """\
00400000 default file=/opt/app/bin/solver mapped=120 mapmax=3 N0=60 N1=60 kernelpagesize_kB=4
01a00000 default heap anon=2048 dirty=2048 N0=2000 N1=48 kernelpagesize_kB=4
7f0000000000 bind=static:0-1 anon=512 dirty=512 N0=256 N1=256 kernelpagesize_kB=4
7f1000000000 prefer (many):0,2 anon=10 dirty=10 N2=10 kernelpagesize_kB=4
7f2000000000 weighted interleave:0-3 anon=8 dirty=8 N0=2 N1=2 N2=2 N3=2 kernelpagesize_kB=4
7f3000000000 interleave=relative|balancing:1,3 anon=4 N1=2 N3=2 kernelpagesize_kB=4
7f4000000000 default file=/dev/hugepages/buf huge dirty=3 N1=3 kernelpagesize_kB=2048
7f5000000000 default file=/data/my\\040file mapped=1 N0=1 kernelpagesize_kB=4
7ffd00000000 default stack anon=33 dirty=33 N0=33 kernelpagesize_kB=4
not a numa_maps line
"""


def test_parse_recorded_numa_maps() -> None:
    entries = mp.parse_numa_maps(RECORDED)
    assert len(entries) == 6
    assert {e.policy for e in entries} == {"prefer:0"}
    heap = entries[2]
    assert (heap.address, heap.kind, heap.mode, heap.nodes) == (
        0x55EAEA823000,
        "heap",
        "prefer",
        frozenset({0}),
    )
    assert heap.pages == {0: 225}
    assert heap.counters["anon"] == 225
    assert entries[1].pages == {}
    assert entries[1].kind == "file=/root/.pyenv/versions/3.11.7/bin/python3.11"
    assert entries[4].kind is None  # anonymous, nothing resident
    assert mp.bytes_by_node(entries) == {0: (1 + 225 + 1 + 2) * 4096}
    assert mp.task_policy(entries) == "prefer:0"


def test_parse_multi_node_numa_maps() -> None:
    entries = mp.parse_numa_maps(MULTI_NODE)
    assert len(entries) == 9  # the junk line is skipped
    by_address = {e.address: e for e in entries}
    bound = by_address[0x7F0000000000]
    assert (bound.mode, bound.nodes, bound.pages) == ("bind", frozenset({0, 1}), {0: 256, 1: 256})
    many = by_address[0x7F1000000000]
    assert (many.mode, many.nodes, many.policy) == (
        "prefer (many)",
        frozenset({0, 2}),
        "prefer (many):0,2",
    )
    weighted = by_address[0x7F2000000000]
    assert (weighted.mode, weighted.nodes) == ("weighted interleave", frozenset(range(4)))
    huge = by_address[0x7F4000000000]
    assert (huge.kind, huge.page_size, huge.pages) == ("huge", 2 << 20, {1: 3})
    assert by_address[0x7F5000000000].kind == "file=/data/my\\040file"
    assert by_address[0x7FFD00000000].kind == "stack"
    assert mp.bytes_by_node(entries) == {
        0: (60 + 2000 + 256 + 2 + 1 + 33) * 4096,
        1: (60 + 48 + 256 + 2 + 2) * 4096 + 3 * (2 << 20),
        2: (10 + 2) * 4096,
        3: (2 + 2) * 4096,
    }
    assert mp.task_policy(entries) == "default"
    assert mp.task_policy([]) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("default", ("default", (), frozenset())),
        ("local", ("local", (), frozenset())),
        ("prefer:0", ("prefer", (), frozenset({0}))),
        ("bind=static:0-1", ("bind", ("static",), frozenset({0, 1}))),
        (
            "interleave=relative|balancing:1,3",
            ("interleave", ("relative", "balancing"), frozenset({1, 3})),
        ),
        ("prefer (many):0,2", ("prefer (many)", (), frozenset({0, 2}))),
        ("weighted interleave:0-3", ("weighted interleave", (), frozenset(range(4)))),
    ],
)
def test_parse_policy(text: str, expected: tuple[str, tuple[str, ...], frozenset[int]]) -> None:
    assert mp.parse_policy(text) == expected


def test_parse_policy_rejects_junk() -> None:
    with pytest.raises(ValueError, match="not a memory policy"):
        mp.parse_policy("prefer:")
    with pytest.raises(ValueError, match="not a memory policy"):
        mp.parse_policy("Prefer:0")


def test_policy_text_matches_numa_maps_labels() -> None:
    assert str(mp.MemoryPolicy("preferred", frozenset({0}))) == "prefer:0"
    assert str(mp.MemoryPolicy("bind", frozenset({0, 1, 3}))) == "bind:0-1,3"
    assert str(mp.MemoryPolicy("default")) == "default"
    assert str(mp.MemoryPolicy("preferred_many", frozenset({0, 2}))) == "prefer (many):0,2"


# ------------------------------------------------------------------ syscall numbers (pure)
def test_syscall_numbers_per_abi() -> None:
    assert mp.syscall_numbers("x86_64", 64) == (238, 239)
    assert mp.syscall_numbers("aarch64", 64) == (237, 236)
    assert mp.syscall_numbers("x86_64", 32) is None  # i386 numbers differ (276/275)
    assert mp.syscall_numbers("ppc64le", 64) is None


def test_syscall_numbers_match_this_machines_kernel_headers() -> None:
    import platform

    header = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
    if platform.machine() != "x86_64" or not header.exists():
        pytest.skip("checks the x86_64 header, which is not installed here")
    text = header.read_text()
    assert "#define __NR_set_mempolicy 238\n" in text
    assert "#define __NR_get_mempolicy 239\n" in text
    generic = Path("/usr/include/asm-generic/unistd.h")
    if generic.exists():  # the table aarch64 and riscv64 use
        assert "#define __NR_set_mempolicy 237\n" in generic.read_text()
        assert "#define __NR_get_mempolicy 236\n" in generic.read_text()


# ------------------------------------------------------------------ refusals, simulated
@pytest.fixture
def fresh_backend() -> Iterator[None]:
    mp._backend.cache_clear()
    yield
    mp._backend.cache_clear()


def _failing_backend(code: int) -> mp._Backend:
    def fail(*_: Any) -> int:
        ctypes.set_errno(code)
        return -1

    return mp._Backend(f"fake {errno.errorcode[code]}", fail, fail)


@pytest.mark.parametrize(
    ("code", "status", "words"),
    [
        (errno.EPERM, "refused", ["EPERM", "seccomp"]),
        (errno.ENOSYS, "unavailable", ["ENOSYS", "no NUMA memory-policy support"]),
        (errno.EINVAL, "refused", ["EINVAL", "allowed memory nodes"]),
    ],
)
def test_kernel_refusal_is_a_diagnostic(
    monkeypatch: pytest.MonkeyPatch, code: int, status: str, words: list[str]
) -> None:
    monkeypatch.setattr(mp, "_backend", lambda: _failing_backend(code))
    record = mp.apply(mp.decide([1]))
    assert record["status"] == status
    assert record["requested"] == "prefer:1"
    assert record["applied"] is None
    assert len(record["diagnostics"]) == 1
    for word in words:
        assert word in record["diagnostics"][0]
    assert json.loads(json.dumps(record)) == record


def test_apply_from_env_records_a_refusal_as_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mp, "_backend", lambda: _failing_backend(errno.EPERM))
    result = pin.apply_from_env({mp.MEMORY_NODES_ENV: "0"})
    assert result["memory"]["status"] == "refused"
    assert any(w.startswith("memory policy: set_mempolicy refused") for w in result["warnings"])


def test_unknown_architecture_without_libnuma_is_unavailable(
    monkeypatch: pytest.MonkeyPatch, fresh_backend: None
) -> None:
    monkeypatch.setattr(mp, "syscall_numbers", lambda machine, bits: None)
    monkeypatch.setattr(mp, "_LIBNUMA", "libnuma-absent-for-this-test.so.0")
    record = mp.apply(mp.decide([0]))
    assert record["status"] == "unavailable"
    assert record["backend"] is None
    assert "no set_mempolicy syscall number known for" in record["diagnostics"][0]
    with pytest.raises(mp.MempolicyUnavailable):
        mp.get_policy()


def test_decision_without_policy_touches_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> Any:
        raise AssertionError("no syscall expected")

    monkeypatch.setattr(mp, "_backend", boom)
    record = mp.apply(mp.decide([0, 1]))
    assert (record["status"], record["requested"], record["diagnostics"]) == ("skipped", None, [])
    assert "spans NUMA nodes" in record["reason"]


# ------------------------------------------------------------------ the environment
def _slot(nodes: tuple[int, ...]) -> Slot:
    memory = nodes[0] if len(nodes) == 1 else None
    return Slot(0, frozenset({0}), 1, (0,), nodes, (0,), memory)


def test_worker_env_carries_the_slot_nodes() -> None:
    assert pin.worker_env(_slot((4,)), 1)[mp.MEMORY_NODES_ENV] == "4"
    assert pin.worker_env(_slot((0, 1, 2)), 1)[mp.MEMORY_NODES_ENV] == "0-2"
    assert mp.MEMORY_NODES_ENV not in pin.worker_env(_slot(()), 1)
    assert mp.MEMORY_NODES_ENV not in pin.worker_env(_slot((4,)), 1, pin=False)
    assert mp.MEMORY_NODES_ENV not in pin.worker_env(None, 1)
    assert mp.MEMORY_POLICY_ENV not in pin.worker_env(_slot((4,)), 1)
    assert pin.worker_env(_slot((4,)), 1, memory="bind")[mp.MEMORY_POLICY_ENV] == "bind"
    with pytest.raises(ValueError, match="memory must be one of preferred, bind, none"):
        pin.worker_env(_slot((4,)), 1, memory="strict")
    envs = pin.worker_envs(plan(epyc_7763(nps=4), 4, 8), memory="none")
    assert [e[mp.MEMORY_NODES_ENV] for e in envs] == ["0", "4", "1", "5"]
    assert {e[mp.MEMORY_POLICY_ENV] for e in envs} == {"none"}


def test_unpinned_plans_carry_no_memory_node() -> None:
    envs = pin.worker_envs(plan(epyc_7763(nps=4), 4, 8, policy="none"))
    assert all(mp.MEMORY_NODES_ENV not in e for e in envs)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({mp.MEMORY_NODES_ENV: "zero"}, "CTRLSTACK_MEMORY_NODES must be a node list"),
        ({mp.MEMORY_NODES_ENV: "0", mp.MEMORY_POLICY_ENV: "hard"}, "must be one of"),
    ],
)
def test_bad_memory_variables_raise_before_anything_changes(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    monkeypatch.setattr(mp, "apply", lambda decision: pytest.fail("must not apply"))
    before = sorted(os.sched_getaffinity(0))
    with pytest.raises(ValueError, match=message):
        pin.apply_from_env({"CTRLSTACK_CPUS": str(before[0]), **env})
    assert sorted(os.sched_getaffinity(0)) == before


def test_apply_from_env_without_memory_variables_asks_for_nothing() -> None:
    assert pin.apply_from_env({})["memory"] is None
    none = pin.apply_from_env({mp.MEMORY_NODES_ENV: "0", mp.MEMORY_POLICY_ENV: "none"})
    assert none["memory"]["status"] == "skipped"
    assert none["warnings"] == []


# ------------------------------------------------------------------ real calls on this machine
@needs_mempolicy
def test_real_preferred_node_zero_reads_back() -> None:
    main_before = mp.get_policy()

    def run() -> tuple[mp.MemoryPolicy, mp.MemoryPolicy, str | None, frozenset[int]]:
        before = mp.get_policy()
        mp.set_policy(mp.MemoryPolicy("preferred", frozenset({0})))
        return before, mp.get_policy(), mp.thread_policy(), mp.allowed_nodes()

    before, after, shown, allowed = in_fresh_thread(run)
    assert before == mp.MemoryPolicy("default")
    assert after == mp.MemoryPolicy("preferred", frozenset({0}))
    assert shown == "prefer:0"  # /proc/self/task/<tid>/numa_maps agrees with get_mempolicy
    assert 0 in allowed
    # A policy is per thread: the test's own thread never saw it.
    assert mp.get_policy() == main_before
    assert mp.thread_policy() == str(main_before)


@needs_mempolicy
def test_real_apply_records_the_read_back() -> None:
    record = in_fresh_thread(lambda: mp.apply(mp.decide([0])))
    assert record["status"] == "applied"
    assert (record["requested"], record["applied"]) == ("prefer:0", "prefer:0")
    assert record["backend"].startswith("syscall ")
    allowed = in_fresh_thread(mp.allowed_nodes)
    assert record["allowed_nodes"] == format_cpulist(allowed)
    single = [d for d in record["diagnostics"] if "cannot change placement here" in d]
    assert len(single) == (1 if len(allowed) == 1 else 0)
    assert json.loads(json.dumps(record)) == record


@needs_mempolicy
def test_real_invalid_node_gives_a_diagnostic_not_a_crash() -> None:
    allowed = in_fresh_thread(mp.allowed_nodes)
    missing = max(allowed) + 1

    def run() -> tuple[dict[str, Any], mp.MemoryPolicy]:
        return mp.apply(mp.decide([missing])), mp.get_policy()

    record, after = in_fresh_thread(run)
    assert record["status"] == "refused"
    assert f"prefer:{missing} (EINVAL)" in record["diagnostics"][0]
    assert after == mp.MemoryPolicy("default")  # nothing half-applied
    # Out of the kernel's range altogether: refused by the mask builder, still no exception.
    huge = in_fresh_thread(lambda: mp.apply(mp.decide([mp.MAX_NODES + 5])))
    assert huge["status"] == "refused"
    assert "NUMA node ids must be integers" in huge["diagnostics"][0]


@needs_mempolicy
def test_real_bind_outside_mems_allowed_is_narrowed() -> None:
    allowed = in_fresh_thread(mp.allowed_nodes)
    record = in_fresh_thread(lambda: mp.apply(mp.decide(allowed | {max(allowed) + 1}, "bind")))
    assert record["status"] == "narrowed"
    assert record["applied"] == f"bind:{format_cpulist(allowed)}"
    assert "the kernel holds" in record["diagnostics"][0]


@needs_mempolicy
def test_real_apply_from_env_in_a_thread() -> None:
    ok = in_fresh_thread(lambda: pin.apply_from_env({mp.MEMORY_NODES_ENV: "0"}))
    assert ok["memory"]["status"] == "applied"
    assert ok["warnings"] == []
    allowed = in_fresh_thread(mp.allowed_nodes)
    bad = in_fresh_thread(lambda: pin.apply_from_env({mp.MEMORY_NODES_ENV: str(max(allowed) + 1)}))
    assert bad["memory"]["status"] == "refused"
    assert any("EINVAL" in w for w in bad["warnings"])


@needs_mempolicy
def test_real_first_touch_lands_on_the_preferred_node() -> None:
    np = pytest.importorskip("numpy")
    size = 32 << 20

    def run() -> tuple[int, list[mp.NumaMapsEntry], str | None]:
        mp.set_policy(mp.MemoryPolicy("preferred", frozenset({0})))
        array = np.ones(size // 8)  # first touch by this thread
        tid = threading.get_native_id()
        with open(f"/proc/self/task/{tid}/numa_maps") as f:
            entries = mp.parse_numa_maps(f.read())
        address = int(array.ctypes.data)
        del array
        return address, entries, mp.thread_policy(tid)

    address, entries, shown = in_fresh_thread(run)
    # The array's mapping may be split (glibc's header page, numpy's huge-page advice): take the
    # mapping holding its first byte and every mapping starting inside it.
    first = max((e for e in entries if e.address <= address), key=lambda e: e.address)
    spans = [first, *(e for e in entries if address < e.address < address + size)]
    assert shown == "prefer:0"
    assert {e.policy for e in spans} == {"prefer:0"}
    assert sum(n * e.page_size for e in spans for n in e.pages.values()) >= size
    assert set().union(*(e.pages for e in spans)) == {0}


@needs_mempolicy
def test_real_libnuma_fallback(monkeypatch: pytest.MonkeyPatch, fresh_backend: None) -> None:
    try:
        ctypes.CDLL(mp._LIBNUMA)
    except OSError:
        pytest.skip(f"{mp._LIBNUMA} is not installed")
    monkeypatch.setattr(mp, "syscall_numbers", lambda machine, bits: None)
    record = in_fresh_thread(lambda: mp.apply(mp.decide([0])))
    assert record["backend"] == mp._LIBNUMA
    assert (record["status"], record["applied"]) == ("applied", "prefer:0")


def test_placement_reports_memory() -> None:
    info = pin.placement()
    memory = info["memory"]
    if _UNUSABLE is None:
        assert memory["policy"] == str(mp.get_policy())
        assert memory["error"] is None
    assert memory["applied"] is None  # no worker, no preload record
    assert int(memory["resident_by_node"]["0"]) > 0
    me = {t["tid"]: t for t in info["threads"]}[threading.get_native_id()]
    assert me["mempolicy"] == mp.thread_policy()
    assert json.loads(json.dumps(info)) == info


# ------------------------------------------------------------------ the crowding report
def _placement(
    name: str, cpus: str, policy: str, held: list[str], applied: dict[str, Any] | None
) -> Any:
    return {
        "pid": 1,
        "host": "n1",
        "name": name,
        "slot_cpus": cpus,
        "threads": [
            {"tid": i, "name": "t", "affinity": cpus, "last_cpu": None, "mempolicy": h}
            for i, h in enumerate(held)
        ],
        "numba": None,
        "threadpools": [],
        "memory": {"policy": policy, "applied": applied},
    }


def test_crowding_report_shows_the_memory_policy() -> None:
    machine = epyc_7763(nps=4, smt=1)
    applied = {"status": "applied", "requested": "prefer:0"}
    refused = {"status": "refused", "requested": "prefer:0"}
    report = aggregate(
        {
            "tcp://a": _placement(
                "w0", "0-7", "prefer:0", ["prefer:0", "default", "prefer:0"], applied
            ),
            "tcp://b": _placement("w1", "64-71", "default", ["default"], refused),
        },
        machine,
    )
    memory = {w.label: w.memory for w in report.workers}
    assert memory == {"w0": "prefer:0 (2/3 threads)", "w1": "refused: prefer:0"}
    assert report.ok, str(report)  # the policy informs; it is not a crowding problem
    text = str(report)
    header = next(line for line in text.splitlines() if line.startswith("worker"))
    assert header.split() == ["worker", "slot", "threads", "numba", "blas", "memory", "confined"]
    assert "prefer:0 (2/3 threads)" in text
    assert report.to_dict()["workers"][1]["memory"] == "refused: prefer:0"


# ------------------------------------------------------------------ a real pinned cluster
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _worker_memory(dask_worker: Any) -> dict[str, Any]:
    """Inside the worker: the preload's record and placement()'s view of memory."""
    info = pin.placement(dask_worker)
    main = next(t for t in info["threads"] if t["tid"] == info["pid"])
    return {
        "applied": dask_worker.ctrlstack_pin["memory"],
        "memory": info["memory"],
        "main": main["mempolicy"],
        "threads": [t["mempolicy"] for t in info["threads"]],
        "env": os.environ.get(mp.MEMORY_NODES_ENV),
        "pid": info["pid"],
    }


@pytest.mark.slow
@needs_mempolicy
def test_pinned_cluster_worker_reports_its_policy(state_dir: Path) -> None:
    import ctrlstack

    handle = ctrlstack.launch("local", name="numa", workers=1, threads=1)
    try:
        client = handle.client()
        client.wait_for_workers(1, timeout=60)
        (seen,) = client.run(_worker_memory).values()
        assert seen["env"] == "0"  # this VM: one node, every slot in it
        applied = seen["applied"]
        assert (applied["status"], applied["requested"], applied["applied"]) == (
            "applied",
            "prefer:0",
            "prefer:0",
        )
        assert seen["memory"]["applied"] == applied
        assert seen["memory"]["policy"] == "prefer:0"  # read back by get_mempolicy now
        # The preload ran on the main thread: it and every thread created since hold the policy.
        assert seen["main"] == "prefer:0"
        assert applied["tid"] == seen["pid"]
        # A task thread is created after the preload, so it inherits the policy.
        assert client.submit(mp.thread_policy, pure=False).result() == "prefer:0"
        report = ctrlstack.crowding(client)
        (worker,) = report.workers
        assert worker.memory is not None
        assert worker.memory.startswith("prefer:0 (")
        assert report.ok, str(report)
        client.close()
    finally:
        handle.stop()
