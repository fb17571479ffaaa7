"""Planner scenarios (topology notes §6.3) on machines built directly by ``tests/machines.py``."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from machines import (
    SCATTERED,
    SLURM_JOB,
    epyc_7763,
    intel_snc2,
    kunpeng,
    layered,
    restrict,
    vm2,
)

from ctrlstack.topology.cpuset import parse_cpulist
from ctrlstack.topology.plan import POLICIES, Plan, PlanError, Slot, capacity, plan


def cpus(p: Plan) -> list[str]:
    from ctrlstack.topology.cpuset import format_cpulist

    return [format_cpulist(s.cpus) for s in p.slots]


# ------------------------------------------------------------------ the scenario table (§6.3)
def test_nps4_4x8_alternates_sockets_one_ccd_each() -> None:
    m = epyc_7763(nps=4)
    p = plan(m, 4, 8)
    assert cpus(p) == ["0-7", "64-71", "16-23", "80-87"]
    assert [s.leaves for s in p.slots] == [(0,), (8,), (2,), (10,)]
    assert [s.numa_nodes for s in p.slots] == [(0,), (4,), (1,), (5,)]
    assert [s.packages for s in p.slots] == [(0,), (1,), (0,), (1,)]
    assert [s.memory_node for s in p.slots] == [0, 4, 1, 5]
    assert (p.pinned, p.policy, p.smt) == (True, "l3", False)


def test_nps4_16x8_one_worker_per_ccd() -> None:
    m = epyc_7763(nps=4)
    p = plan(m, 16, 8)
    assert sorted(s.leaves for s in p.slots) == [(i,) for i in range(16)]
    for s in p.slots:
        assert s.cpus == m.leaves[s.leaves[0]].cpus & frozenset(range(128))


def test_nps4_32x4_two_workers_per_ccd_spread_the_same_way() -> None:
    m = epyc_7763(nps=4)
    p = plan(m, 32, 4)
    per_leaf = Counter(s.leaves for s in p.slots)
    assert set(per_leaf.values()) == {2}
    assert len(per_leaf) == 16
    # The second round revisits the CCDs in the order of the first round.
    assert [s.leaves for s in p.slots[16:]] == [s.leaves for s in p.slots[:16]]
    assert (cpus(p)[0], cpus(p)[16]) == ("0-3", "4-7")


def test_nps4_3x12_splits_evenly_over_two_ccds_of_one_node() -> None:
    p = plan(epyc_7763(nps=4), 3, 12)
    assert cpus(p) == ["0-5,8-13", "64-69,72-77", "16-21,24-29"]
    assert [s.memory_node for s in p.slots] == [0, 4, 1]


def test_split_prefers_the_node_needing_fewest_leaves() -> None:
    # Node 0 offers 8 + 4 free cores (2 leaves); node 1 offers 5 + 5 + 5 (more, but 3 leaves).
    m = layered(package_ids=[0], numa_per_package=2, l3_per_numa=3, cores_per_l3=8)
    m = restrict(m, "0-11,24-28,32-36,40-44")
    p = plan(m, 2, 12)
    assert cpus(p) == ["0-11", "24-27,32-35,40-43"]
    assert [s.leaves for s in p.slots] == [(0, 1), (3, 4, 5)]


def test_nps4_2x40_takes_five_ccds_per_socket() -> None:
    p = plan(epyc_7763(nps=4), 2, 40)
    assert cpus(p) == ["0-39", "64-103"]
    assert [s.leaves for s in p.slots] == [(0, 1, 2, 3, 4), (8, 9, 10, 11, 12)]
    assert [s.packages for s in p.slots] == [(0,), (1,)]
    assert all(s.memory_node is None for s in p.slots)  # spans NUMA nodes


def test_nps1_4x8_still_alternates_sockets() -> None:
    p = plan(epyc_7763(nps=1), 4, 8)
    assert cpus(p) == ["0-7", "64-71", "8-15", "72-79"]
    assert [s.numa_nodes for s in p.slots] == [(0,), (1,), (0,), (1,)]


@pytest.mark.parametrize("smt_cpus", [False, True])
def test_slurm_cpuset_4x8_fills_the_four_ccds_and_5x8_raises(smt_cpus: bool) -> None:
    allowed = SLURM_JOB + (",128-143,192-207" if smt_cpus else "")
    m = restrict(epyc_7763(nps=4, smt=2), allowed)
    p = plan(m, 4, 8)
    assert cpus(p) == ["0-7", "64-71", "8-15", "72-79"]
    with pytest.raises(PlanError) as info:
        plan(m, 5, 8)
    message = str(info.value)
    assert "5 workers × 8 threads need 40 cores, only 32 allowed" in message
    assert "threads=6" in message
    assert "at most 4 workers" in message
    # smt=True is only offered when the allowed set really holds SMT siblings.
    assert ("smt=True" in message) is smt_cpus
    if smt_cpus:
        assert len(plan(m, 5, 8, smt=True).slots) == 5


def test_scattered_cpuset_2x2() -> None:
    m = restrict(epyc_7763(nps=4), SCATTERED)
    p = plan(m, 2, 2)
    assert [s.cpus for s in p.slots] == [frozenset({44, 46}), frozenset({62, 63})]
    assert [s.leaves for s in p.slots] == [(5,), (7,)]


def test_snc2_interleaved_4x9_one_worker_per_numa_half() -> None:
    m = intel_snc2()
    p = plan(m, 4, 9)
    assert sorted(s.numa_nodes for s in p.slots) == [(0,), (1,), (2,), (3,)]
    for s in p.slots:
        assert s.cpus == m.numa_nodes[s.numa_nodes[0]]
    assert [s.packages for s in p.slots] == [(0,), (1,), (0,), (1,)]


def test_kunpeng_8x16_two_workers_per_l3_and_odd_package_ids() -> None:
    m = kunpeng()
    p = plan(m, 8, 16)
    assert Counter(s.numa_nodes for s in p.slots) == {(n,): 2 for n in range(4)}
    assert [s.packages for s in p.slots[:2]] == [(36,), (8442,)]


def test_vm_two_cpus() -> None:
    m = vm2()
    assert cpus(plan(m, 2, 1)) == ["0", "1"]
    auto = plan(m)
    assert (auto.workers, auto.threads) == (1, 2)
    core = plan(m, policy="core")
    assert (core.workers, core.threads) == (2, 1)


# ------------------------------------------------------------------ SMT, policies, defaults
def test_smt_takes_whole_cores_first() -> None:
    m = epyc_7763(nps=4, smt=2)
    p = plan(m, 2, 2, smt=True)
    assert [s.cpus for s in p.slots] == [frozenset({0, 128}), frozenset({64, 192})]
    wide = plan(m, 1, 16, smt=True)
    assert cpus(wide) == ["0-7,128-135"]
    odd = plan(m, 2, 3, smt=True)  # a whole core plus one PU of the next, per worker
    assert cpus(odd) == ["0-1,128", "64-65,192"]


def test_smt_single_thread_workers_get_their_own_core_first() -> None:
    m = restrict(epyc_7763(nps=4, smt=2), "0-7,128-135")  # one CCD, 8 cores × 2 PUs
    p = plan(m, 16, 1, smt=True)
    assert [min(s.cpus) for s in p.slots[:8]] == list(range(8))
    assert [min(s.cpus) for s in p.slots[8:]] == list(range(128, 136))
    pairs = plan(m, 8, 2, smt=True)
    assert [s.cpus for s in pairs.slots] == [frozenset({c, c + 128}) for c in range(8)]


def test_default_l3_plan_is_one_worker_per_ccd() -> None:
    m = epyc_7763(nps=4)
    p = plan(m)
    assert (p.workers, p.threads) == (16, 8)
    assert capacity(m, 8) == 16


def test_auto_threads_uses_most_common_leaf_size_on_partial_allocations() -> None:
    # Four whole CCDs and half of a fifth: the common size is 8, so 4 workers of 8 (+4 spare).
    m = restrict(epyc_7763(nps=4, smt=1), "0-35")
    p = plan(m)
    assert (p.workers, p.threads) == (4, 8)
    # Ties go to the larger size.
    tie = restrict(epyc_7763(nps=4, smt=1), "0-7,8-11")
    assert plan(tie).threads == 8


def test_numa_and_socket_policies() -> None:
    m = epyc_7763(nps=4, memory_nodes=(250, 251))
    numa = plan(m, policy="numa")
    assert (numa.workers, numa.threads) == (8, 16)
    assert sorted(s.numa_nodes for s in numa.slots) == [(n,) for n in range(8)]
    socket = plan(m, policy="socket")
    assert (socket.workers, socket.threads) == (2, 64)
    assert [s.packages for s in socket.slots] == [(0,), (1,)]
    # CPU-less memory nodes never appear in a plan.
    assert all(250 not in s.numa_nodes and 251 not in s.numa_nodes for s in numa.slots)


def test_core_policy_one_single_thread_worker_per_core() -> None:
    m = restrict(epyc_7763(nps=4), SCATTERED)
    p = plan(m, policy="core")
    assert (p.workers, p.threads) == (4, 1)
    assert sorted(min(s.cpus) for s in p.slots) == [44, 46, 62, 63]
    with pytest.raises(ValueError, match="threads must be 1"):
        plan(m, threads=2, policy="core")


def test_none_policy_is_unpinned_but_budgeted() -> None:
    m = restrict(epyc_7763(nps=4), SLURM_JOB)
    p = plan(m, 4, policy="none")
    assert not p.pinned
    assert p.threads == 8
    assert all(s.cpus == m.allowed for s in p.slots)
    assert all(s.memory_node is None for s in p.slots)
    with pytest.raises(PlanError, match="need 40 cores"):
        plan(m, 5, 8, policy="none")
    auto = plan(m, policy="none")
    assert (auto.workers, auto.threads) == (4, 8)  # same shape as the pinned default


def test_only_workers_given_divides_units() -> None:
    m = epyc_7763(nps=4)
    assert plan(m, workers=3).threads == 42
    with pytest.raises(PlanError, match="at most 2 workers"):
        plan(vm2(), workers=3)


def test_only_threads_given_uses_capacity() -> None:
    m = epyc_7763(nps=4)
    p = plan(m, threads=12)
    assert p.workers == 10 == capacity(m, 12)
    with pytest.raises(PlanError, match="1 worker × 3 threads need 3 cores, only 2"):
        plan(vm2(), threads=3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"workers": 0}, "workers must be an integer >= 1"),
        ({"workers": True}, "workers must be an integer >= 1"),
        ({"threads": -2}, "threads must be an integer >= 1"),
        ({"threads": 2.0}, "threads must be an integer >= 1"),
        ({"policy": "ccd"}, "policy must be one of l3, numa, socket, core, none"),
    ],
)
def test_argument_validation_names_the_argument(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        plan(vm2(), **kwargs)  # type: ignore[arg-type]


def test_smt_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="smt must be True or False, got 'yes'"):
        plan(vm2(), smt="yes")  # type: ignore[arg-type]


def test_empty_allowed_set_raises() -> None:
    m = restrict(vm2(), [])
    with pytest.raises(PlanError, match="no allowed CPUs"):
        plan(m)


def test_capacity_validation() -> None:
    with pytest.raises(ValueError, match="threads must be 1 for policy 'core'"):
        capacity(vm2(), 2, "core")
    assert capacity(epyc_7763(), 8, smt=True) == 32
    assert set(POLICIES) == {"l3", "numa", "socket", "core", "none"}


# ------------------------------------------------------------------ stability, output
def test_prefix_stable_on_the_scenarios() -> None:
    m = restrict(epyc_7763(nps=4), "0-100")
    full = plan(m, 12, 6)
    for k in range(1, 13):
        assert plan(m, k, 6).slots == full.slots[:k]


def test_to_dict_round_trips_through_json() -> None:
    m = epyc_7763(nps=4)
    p = plan(m, 3, 12)
    data = json.loads(json.dumps(p.to_dict()))
    assert data["slots"][0]["cpus"] == "0-5,8-13"
    assert Plan.from_dict(data) == p
    assert Slot.from_dict(data["slots"][1]).cpus == parse_cpulist("64-69,72-77")


def test_render_has_header_and_one_line_per_worker() -> None:
    m = epyc_7763(nps=4)
    text = plan(m, 3, 12).render(m)
    lines = text.splitlines()
    assert lines[0].startswith("plan policy=l3: 3 workers × 12 threads = 36 of 128 allowed cores")
    assert lines[1].split() == ["worker", "cpus", "threads", "leaves", "numa", "package", "memory"]
    assert lines[2].split() == ["0", "0-5,8-13", "12", "0-1", "0", "0", "0"]
    assert len(lines) == 5
    unpinned = plan(m, 2, 4, policy="none").render(m)
    assert "not pinned" in unpinned


def test_wide_workers_alternate_sockets_when_one_numa_node_spans_both() -> None:
    """cpuid-derived topologies report one NUMA node over two packages; sockets still alternate."""
    from pathlib import Path

    from ctrlstack.topology.hwloc import from_hwloc_xml

    xml = Path(__file__).parent / "fixtures" / "hwloc" / "AMD-19h-Zen3-2xEpyc-7763.xml"
    machine = from_hwloc_xml(xml)
    assert len(machine.numa_nodes) == 1
    assert len(machine.packages) == 2
    result = plan(machine, workers=3, threads=12)
    assert [s.packages for s in result.slots] == [(0,), (1,), (0,)]
