"""The flat machine model: leaves as L3 ∩ NUMA, restriction, serialisation."""

from __future__ import annotations

import json

from ctrlstack.topology.model import Machine


def _snc_like() -> Machine:
    """One package, one L3 over two NUMA nodes, SMT2, plus a CPU-less node and no-L3 CPUs."""
    cpus = frozenset(range(12))
    return Machine(
        cpus=cpus,
        allowed=cpus,
        packages={0: cpus},
        numa_nodes={0: frozenset({0, 1, 2, 3}), 1: frozenset(range(4, 12)), 7: frozenset()},
        l3=(frozenset(range(8)),),
        cores=tuple(frozenset({c, c + 1}) for c in range(0, 12, 2)),
        numa_distances={0: (10, 12, 40), 1: (12, 10, 40), 7: (40, 40, 10)},
        numa_memory={0: 2**34, 1: 2**34, 7: 2**33},
        l3_sizes=(33554432,),
        diagnostics=("hand-made",),
        source="test",
    )


def test_leaves_are_l3_intersect_numa_with_a_pseudo_leaf_for_cpus_without_l3() -> None:
    machine = _snc_like()
    leaves = [(leaf.cpus, leaf.numa, leaf.l3) for leaf in machine.leaves]
    assert leaves == [
        (frozenset({0, 1, 2, 3}), 0, 0),
        (frozenset({4, 5, 6, 7}), 1, 0),
        (frozenset({8, 9, 10, 11}), 1, None),
    ]
    assert [leaf.index for leaf in machine.leaves] == [0, 1, 2]


def test_lookups_and_smt() -> None:
    machine = _snc_like()
    assert machine.smt == 2
    assert machine.package_of(5) == 0
    assert machine.package_of(99) == -1
    assert machine.numa_of(5) == 1
    assert machine.numa_of(99) is None
    assert machine.l3_of(9) is None
    assert machine.cores[machine.core_of(7)] == frozenset({6, 7})
    assert machine.kind_of(3) == 0


def test_restrict_intersects_and_explains_unknown_cpus() -> None:
    machine = _snc_like().restrict({2, 3, 40, 41})
    assert machine.allowed == frozenset({2, 3})
    assert machine.diagnostics[-1].startswith("allowed CPUs 40-41 have no topology")
    # Leaves still cover every online CPU; only ``allowed`` shrinks.
    assert sum(len(leaf.cpus) for leaf in machine.leaves) == 12


def test_dict_round_trip_is_json_and_lossless() -> None:
    machine = _snc_like().restrict({1, 2, 3})
    data = json.loads(json.dumps(machine.to_dict()))
    assert Machine.from_dict(data) == machine
    assert data["leaves"][0] == {
        "index": 0,
        "cpus": "0-3",
        "allowed": "1-3",
        "package": 0,
        "numa": 0,
        "l3": 0,
    }
    assert data["numa_nodes"]["7"] == ""
