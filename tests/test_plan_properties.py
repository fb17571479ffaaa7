"""Property tests of the planner over random machines, cpusets, worker and thread counts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from machines import layered

from ctrlstack.topology.model import Machine
from ctrlstack.topology.plan import Plan, PlanError, plan

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def machines(draw: st.DrawFn, *, symmetric: bool = False) -> Machine:
    n_packages = draw(st.integers(1, 3))
    package_ids = draw(
        st.lists(
            st.sampled_from([0, 1, 2, 3, 36, 8442]),
            min_size=n_packages,
            max_size=n_packages,
            unique=True,
        )
    )
    numa_per_package = draw(st.integers(1, 4))
    l3_per_numa = draw(st.integers(1, 3))
    cores_per_l3 = draw(st.integers(1, 8))
    smt = draw(st.integers(1, 2))
    n = n_packages * numa_per_package * l3_per_numa * cores_per_l3
    order = None if symmetric else draw(st.permutations(range(n)))
    machine = layered(
        package_ids=package_ids,
        numa_per_package=numa_per_package,
        l3_per_numa=l3_per_numa,
        cores_per_l3=cores_per_l3,
        smt=smt,
        l3_spans_package=not symmetric and draw(st.booleans()),
        order=order,
    )
    if not symmetric and draw(st.booleans()):
        allowed = draw(st.sets(st.sampled_from(sorted(machine.cpus))))
        machine = machine.restrict(allowed)
    return machine


def units_of(machine: Machine, smt: bool) -> set[int]:
    units = set()
    for core in machine.cores:
        pus = sorted(core & machine.allowed)
        units.update(pus if smt else pus[:1])
    return units


def leaf_of(machine: Machine) -> dict[int, int]:
    return {cpu: leaf.index for leaf in machine.leaves for cpu in leaf.cpus}


def fewest(frees: Sequence[int], threads: int) -> int:
    total = 0
    for k, free in enumerate(sorted(frees, reverse=True), start=1):
        total += free
        if total >= threads:
            return k
    return 10**9


@SETTINGS
@given(
    machine=machines(),
    workers=st.integers(1, 40),
    threads=st.integers(1, 24),
    smt=st.booleans(),
    policy=st.sampled_from(["l3", "numa", "socket"]),
)
def test_invariants(machine: Machine, workers: int, threads: int, smt: bool, policy: str) -> None:
    units = units_of(machine, smt)
    try:
        p = plan(machine, workers, threads, policy, smt=smt)
    except PlanError:
        assert workers * threads > len(units)  # PlanError iff infeasible
        return
    assert workers * threads <= len(units)
    assert [s.index for s in p.slots] == list(range(workers))
    seen: set[int] = set()
    for s in p.slots:
        assert s.cpus <= machine.allowed
        assert s.cpus <= units
        assert len(s.cpus) == threads == s.threads
        assert not (s.cpus & seen)
        seen |= s.cpus
    assert plan(machine, workers, threads, policy, smt=smt) == p  # deterministic


@SETTINGS
@given(
    machine=machines(),
    workers=st.integers(1, 30),
    threads=st.integers(1, 12),
    smt=st.booleans(),
    cut=st.integers(1, 30),
)
def test_prefix_stable(machine: Machine, workers: int, threads: int, smt: bool, cut: int) -> None:
    try:
        full = plan(machine, workers, threads, smt=smt)
    except PlanError:
        return
    k = min(cut, workers)
    assert plan(machine, k, threads, smt=smt).slots == full.slots[:k]


def replay(machine: Machine, p: Plan, smt: bool) -> None:
    """Walk the plan worker by worker and check the placement rules against the free state."""
    leaves = leaf_of(machine)
    free: dict[int, set[int]] = {}
    for cpu in units_of(machine, smt):
        free.setdefault(leaves[cpu], set()).add(cpu)
    by_leaf = {leaf.index: leaf for leaf in machine.leaves}
    t = p.threads
    for s in p.slots:
        largest = max((len(f) for f in free.values()), default=0)
        if t <= largest:
            # Never straddle a leaf when the worker fits in one, and take a fullest leaf.
            assert len(s.leaves) == 1
            assert len(free[s.leaves[0]]) == largest
        else:
            node_free: Counter[object] = Counter()
            pkg_free: Counter[object] = Counter()
            for index, f in free.items():
                node_free[by_leaf[index].numa] += len(f)
                pkg_free[by_leaf[index].package] += len(f)
            if max(node_free.values()) >= t:
                assert len(s.numa_nodes) == 1  # within one NUMA node when possible
                # ... and across the fewest leaves any such node allows.
                best = min(
                    fewest([len(f) for i, f in free.items() if by_leaf[i].numa == node], t)
                    for node, n in node_free.items()
                    if n >= t
                )
                assert len(s.leaves) == best
            elif max(pkg_free.values()) >= t:
                assert len(s.packages) == 1  # then within one package
            # Split evenly: every share is capped by its leaf or within one of the largest share.
            shares = {i: len(s.cpus & free[i]) for i in s.leaves}
            top = max(shares.values())
            for i, share in shares.items():
                assert share == len(free[i]) or share >= top - 1
        for i in s.leaves:
            free[i] -= s.cpus


@SETTINGS
@given(
    machine=machines(), workers=st.integers(1, 40), threads=st.integers(1, 24), smt=st.booleans()
)
def test_leaf_rules(machine: Machine, workers: int, threads: int, smt: bool) -> None:
    try:
        p = plan(machine, workers, threads, smt=smt)
    except PlanError:
        return
    replay(machine, p, smt)


@SETTINGS
@given(machine=machines(symmetric=True), data=st.data(), smt=st.booleans())
def test_balance_on_symmetric_machines(machine: Machine, data: st.DataObject, smt: bool) -> None:
    """With every worker fitting in a leaf, workers spread evenly at every level."""
    leaf_size = len(units_of(machine, smt)) // len(machine.leaves)
    threads = data.draw(st.integers(1, leaf_size))
    workers = data.draw(st.integers(1, len(machine.leaves) * (leaf_size // threads)))
    p = plan(machine, workers, threads, smt=smt)
    for level in ("leaves", "numa_nodes", "packages"):
        counts = Counter(getattr(s, level) for s in p.slots)
        domains = (
            {(leaf.index,) for leaf in machine.leaves}
            if level == "leaves"
            else (
                {(n,) for n, c in machine.numa_nodes.items() if c}
                if level == "numa_nodes"
                else {(k,) for k in machine.packages}
            )
        )
        assert set(counts) <= domains
        per_domain = [counts.get(d, 0) for d in domains]
        assert max(per_domain) - min(per_domain) <= 1, (level, counts)


@SETTINGS
@given(
    machine=machines(), workers=st.integers(1, 40), threads=st.integers(1, 24), smt=st.booleans()
)
def test_unpinned_and_core_policies(
    machine: Machine, workers: int, threads: int, smt: bool
) -> None:
    units = units_of(machine, smt)
    try:
        unpinned = plan(machine, workers, threads, "none", smt=smt)
    except PlanError:
        assert workers * threads > len(units)
    else:
        assert workers * threads <= len(units)
        assert not unpinned.pinned
        assert all(s.cpus == machine.allowed for s in unpinned.slots)
        assert len(unpinned.slots) == workers
    try:
        per_core = plan(machine, workers, policy="core", smt=smt)
    except PlanError:
        assert workers > len(units)
    else:
        assert per_core.threads == 1
        assert len({s.cpus for s in per_core.slots}) == workers
        assert all(len(s.cpus) == 1 and s.cpus <= units for s in per_core.slots)
