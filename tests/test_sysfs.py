"""The sysfs reader on generated trees (every quirk on purpose) and on real captured trees."""

from __future__ import annotations

import dataclasses
import os
import posixpath
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from sysfs_factory import (
    TreeSpec,
    arm_l3_numa,
    epyc_milan,
    hybrid_laptop,
    intel_snc2,
    lxcfs_like,
    milan_slurm_job,
    no_l3_vm,
    offline_cpus,
    write_tree,
)

from ctrlstack.topology.cpuset import parse_cpulist
from ctrlstack.topology.hwloc import from_hwloc_xml
from ctrlstack.topology.model import Machine
from ctrlstack.topology.sysfs import from_sysfs, parse_cache_size, parse_meminfo_total

SHARED = Path(__file__).resolve().parents[2] / "shared" / "topologies"

BUILDERS: dict[str, Callable[[], TreeSpec]] = {
    "milan_nps1": lambda: epyc_milan(nps=1),
    "milan_nps4": lambda: epyc_milan(nps=4),
    "milan_nps4_smt1": lambda: epyc_milan(nps=4, smt=1),
    "milan_slurm": milan_slurm_job,
    "snc2": intel_snc2,
    "arm": arm_l3_numa,
    "hybrid": hybrid_laptop,
    "offline": offline_cpus,
    "lxcfs": lxcfs_like,
    "no_l3": no_l3_vm,
}


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each named tree written once for the module (Milan trees hold ~2,500 files)."""
    return {
        name: write_tree(tmp_path_factory.mktemp(name), build()) for name, build in BUILDERS.items()
    }


def _read(trees: dict[str, Path], name: str, **kwargs: object) -> Machine:
    return from_sysfs(trees[name], **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- every tree
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_reader_reproduces_the_spec(trees: dict[str, Path], name: str) -> None:
    """Cores, L3 domains, NUMA nodes and packages equal the generating spec, restricted to online."""
    spec = BUILDERS[name]()
    machine = _read(trees, name)
    online = spec.online
    assert machine.cpus == online
    assert set(machine.cores) == {c & online for c in spec.cores if c & online}
    assert set(machine.l3) == {cpus & online for cpus, _ in spec.l3 if cpus & online}
    assert dict(machine.numa_nodes) == {n: c & online for n, c in spec.nodes.items()}
    assert dict(machine.packages) == {p: c & online for p, c in spec.packages.items()}
    sizes = {cpus & online: kib * 1024 for cpus, kib in spec.l3 if cpus & online}
    assert dict(zip(machine.l3, machine.l3_sizes, strict=True)) == sizes
    assert Machine.from_dict(machine.to_dict()) == machine


# --------------------------------------------------------------------------- named machines
@pytest.mark.parametrize(("nps", "nodes"), [(1, 2), (4, 8)])
def test_milan_counts_and_leaves(trees: dict[str, Path], nps: int, nodes: int) -> None:
    machine = _read(trees, f"milan_nps{nps}")
    assert len(machine.packages) == 2
    assert len(machine.numa_nodes) == nodes
    assert len(machine.l3) == 16
    assert len(machine.cores) == 128
    assert len(machine.cpus) == 256
    assert machine.smt == 2
    assert len(machine.leaves) == 16
    assert all(len(leaf.cpus) == 16 for leaf in machine.leaves)
    assert machine.leaves[0].cpus == parse_cpulist("0-7,128-135")
    assert machine.leaves[15].cpus == parse_cpulist("120-127,248-255")
    assert machine.leaves[8].package == 1
    assert machine.l3_sizes == (32 * 2**20,) * 16
    assert machine.numa_memory[0] == 256 * 2**30 // nodes
    assert machine.kinds == ()


def test_milan_nps4_numa_and_distances(trees: dict[str, Path]) -> None:
    machine = _read(trees, "milan_nps4")
    assert machine.numa_nodes[0] == parse_cpulist("0-15,128-143")
    assert [leaf.numa for leaf in machine.leaves] == [n for n in range(8) for _ in range(2)]
    assert machine.numa_distances[0] == (10, 12, 12, 12, 32, 32, 32, 32)
    assert machine.numa_distances[5] == (32, 32, 32, 32, 12, 10, 12, 12)


def test_milan_smt_off(trees: dict[str, Path]) -> None:
    machine = _read(trees, "milan_nps4_smt1")
    assert machine.smt == 1
    assert len(machine.cpus) == 128
    assert machine.leaves[0].cpus == parse_cpulist("0-7")


def test_snc_splits_one_l3_per_package_into_two_leaves(trees: dict[str, Path]) -> None:
    machine = _read(trees, "snc2")
    assert len(machine.l3) == 2
    assert len(machine.leaves) == 4
    assert [leaf.l3 for leaf in machine.leaves] == [0, 0, 1, 1]
    assert [leaf.numa for leaf in machine.leaves] == [0, 1, 2, 3]
    assert machine.leaves[1].cpus == parse_cpulist("4-7,20-23")


def test_arm_leaves_are_numa_nodes(trees: dict[str, Path]) -> None:
    machine = _read(trees, "arm")
    assert sorted(machine.packages) == [36, 8442]
    assert [leaf.cpus for leaf in machine.leaves] == [
        machine.numa_nodes[n] for n in sorted(machine.numa_nodes)
    ]
    assert [leaf.package for leaf in machine.leaves] == [36, 36, 8442, 8442]
    assert machine.smt == 1
    assert machine.kinds == ()  # every cpu_capacity is 1024
    assert machine.numa_distances[1] == (16, 10, 25, 32)


def test_hybrid_kinds_from_intel_pmu_lists(trees: dict[str, Path]) -> None:
    machine = _read(trees, "hybrid")
    assert machine.kinds == (parse_cpulist("12-19"), parse_cpulist("0-11"))
    assert machine.kind_names == ("E", "P")
    assert len(machine.cores) == 14
    assert machine.kind_of(13) == 0
    assert machine.kind_of(4) == 1


@pytest.mark.parametrize(
    ("change", "names"),
    [
        (
            {"capacity": {c: 1024 if c < 12 else 718 for c in range(20)}},
            ("capacity=718", "capacity=1024"),
        ),
        ({}, ("max 3900 MHz", "max 5000 MHz")),
    ],
    ids=["arm-capacity", "cpufreq"],
)
def test_hybrid_kinds_fallbacks(
    tmp_path: Path, change: dict[str, object], names: tuple[str, ...]
) -> None:
    spec = dataclasses.replace(hybrid_laptop(), cpu_core=None, cpu_atom=None, **change)  # type: ignore[arg-type]
    machine = from_sysfs(write_tree(tmp_path, spec))
    assert machine.kind_names == names
    assert machine.kinds == (parse_cpulist("12-19"), parse_cpulist("0-11"))


def test_turbo_bins_are_not_core_kinds(tmp_path: Path) -> None:
    freq = {c: 4_000_000 if c in (0, 1) else 3_800_000 for c in range(8)}
    spec = dataclasses.replace(lxcfs_like(), online_text=None, max_freq_khz=freq)
    machine = from_sysfs(write_tree(tmp_path, spec))
    assert machine.kinds == ()
    assert any("turbo bins" in note for note in machine.diagnostics)


def test_offline_cpus_cpuless_nodes_and_power9_masks(trees: dict[str, Path]) -> None:
    machine = _read(trees, "offline")
    assert machine.cpus == parse_cpulist("0-15,32-47")
    assert machine.numa_nodes[250] == frozenset()
    assert machine.numa_nodes[251] == frozenset()
    assert machine.numa_memory[250] == 15 * 2**30
    assert machine.smt == 4
    assert len(machine.l3) == 4
    assert len(machine.leaves) == 4
    assert sorted(machine.packages) == [0, 8]
    notes = " | ".join(machine.diagnostics)
    assert "CPUs 16-31,48-63 are offline" in notes
    assert "shared_cpu_map" in notes
    assert "thread_siblings_list" in notes


def test_lxcfs_online_file_is_not_trusted(trees: dict[str, Path]) -> None:
    machine = _read(trees, "lxcfs")
    assert machine.cpus == parse_cpulist("0-7")
    assert machine.allowed == machine.cpus
    assert any("cpu/online says '0'" in note for note in machine.diagnostics)


def test_no_l3_gives_numa_leaves_and_says_so(trees: dict[str, Path]) -> None:
    machine = _read(trees, "no_l3")
    assert machine.l3 == ()
    assert [(leaf.cpus, leaf.l3, leaf.numa) for leaf in machine.leaves] == [
        (parse_cpulist("0-3"), None, 0)
    ]
    assert any("no L3 cache" in note for note in machine.diagnostics)


# --------------------------------------------------------------------------- allowed CPUs
def test_slurm_scattered_cpuset_from_proc_status(trees: dict[str, Path]) -> None:
    machine = _read(trees, "milan_slurm")
    assert machine.allowed == frozenset({44, 46, 62, 63})
    allowed_leaves = [leaf.index for leaf in machine.leaves if leaf.cpus & machine.allowed]
    assert allowed_leaves == [5, 7]


def test_slurm_cpuset_from_cgroup_v2_when_status_is_absent(tmp_path: Path) -> None:
    machine = from_sysfs(write_tree(tmp_path, milan_slurm_job(status=False)))
    assert machine.allowed == parse_cpulist("40-47,56-63,168-175,184-191")
    assert any("cgroup v2" in note for note in machine.diagnostics)


def test_cgroup_v1_cpuset(tmp_path: Path) -> None:
    spec = dataclasses.replace(intel_snc2(), cgroup=(1, "/slurm/uid_1/job_7", parse_cpulist("0-3")))
    machine = from_sysfs(write_tree(tmp_path, spec))
    assert machine.allowed == parse_cpulist("0-3")


def test_explicit_allowed_wins_and_is_intersected(trees: dict[str, Path]) -> None:
    machine = _read(trees, "milan_slurm", allowed={1, 2, 999})
    assert machine.allowed == frozenset({1, 2})
    assert "allowed CPUs 999 have no topology" in machine.diagnostics[-1]


def test_without_evidence_everything_is_allowed(trees: dict[str, Path]) -> None:
    machine = _read(trees, "snc2")
    assert machine.allowed == machine.cpus
    assert any("no affinity or cpuset evidence" in note for note in machine.diagnostics)


def test_live_root_uses_sched_getaffinity() -> None:
    machine = from_sysfs("/")
    assert machine.allowed == frozenset(os.sched_getaffinity(0))
    assert machine.source == "sysfs:/"


# --------------------------------------------------------------------------- damaged trees
def test_cache_ids_are_ignored(tmp_path: Path) -> None:
    root = write_tree(tmp_path, intel_snc2())
    for path in root.glob("sys/devices/system/cpu/cpu*/cache/index3/id"):
        path.write_text("0\n")  # every L3 claims id 0: grouping must use the CPU sets
    assert len(from_sysfs(root).l3) == 2


def test_missing_numa_and_package_files(tmp_path: Path) -> None:
    root = write_tree(tmp_path, intel_snc2())
    shutil.rmtree(root / "sys/devices/system/node")
    (root / "sys/devices/system/cpu/cpu9/topology/physical_package_id").unlink()
    machine = from_sysfs(root)
    assert machine.numa_nodes == {}
    assert len(machine.leaves) == 3  # package 1 lost CPU 9 to package 0's "assumed" id
    assert machine.package_of(9) == 0
    notes = " | ".join(machine.diagnostics)
    assert "no nodeN directories" in notes
    assert "CPUs 9 have no physical_package_id" in notes


def test_tree_without_cpu_directories_falls_back_to_online(tmp_path: Path) -> None:
    (tmp_path / "sys/devices/system/cpu").mkdir(parents=True)
    (tmp_path / "sys/devices/system/cpu/online").write_text("0-3\n")
    machine = from_sysfs(tmp_path)
    assert machine.cpus == parse_cpulist("0-3")
    assert len(machine.cores) == 4
    assert any("no cpuN directories" in note for note in machine.diagnostics)


def test_garbage_in_files_is_reported_not_raised(tmp_path: Path) -> None:
    root = write_tree(tmp_path, no_l3_vm())
    (root / "sys/devices/system/cpu/cpu1/topology/core_cpus_list").write_text("1-x\n")
    (root / "sys/devices/system/node/node0/meminfo").write_text("garbage\n")
    machine = from_sysfs(root)
    assert frozenset({1}) in machine.cores
    assert machine.numa_memory == {}
    assert any("invalid CPU list '1-x'" in note for note in machine.diagnostics)


# --------------------------------------------------------------------------- helpers
@pytest.mark.parametrize(
    ("text", "size"),
    [("32768K", 32 * 2**20), ("1M\n\x00", 2**20), ("512", 512), ("2G", 2**31)],
)
def test_parse_cache_size(text: str, size: int) -> None:
    assert parse_cache_size(text) == size


def test_parse_cache_size_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="invalid cache size 'big'"):
        parse_cache_size("big")


def test_parse_meminfo_total() -> None:
    text = "Node 0 MemTotal:       131732940 kB\nNode 0 MemFree:   1 kB\n"
    assert parse_meminfo_total(text) == 131732940 * 1024
    assert parse_meminfo_total("Node 0 MemFree: 1 kB") is None


# --------------------------------------------------------------------------- real captures
_NEEDED = {
    "online", "present", "possible", "physical_package_id", "core_cpus_list",
    "thread_siblings_list", "level", "type", "size", "shared_cpu_list", "shared_cpu_map",
    "cpu_capacity", "cpuinfo_max_freq", "base_frequency", "cpulist", "distance", "meminfo",
    "status", "cgroup", "cpuset", "mounts", "cpuset.cpus.effective", "cpuset.effective_cpus",
}  # fmt: skip


def _extract(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    archive = SHARED / f"{name}.tar.bz2"
    if not archive.is_file():
        pytest.skip(f"{archive} is not available (needs the shared topology collection)")
    target = tmp_path_factory.mktemp(name)
    with tarfile.open(archive) as tar:
        members = [m for m in tar if m.isfile() and posixpath.basename(m.name) in _NEEDED]
        tar.extractall(target, members=members, filter="data")
    (top,) = [p for p in target.iterdir() if p.is_dir()]
    return top


@pytest.fixture(scope="module")
def kunpeng(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _extract(tmp_path_factory, "128arm-2pa2n8cluster4co")


@pytest.fixture(scope="module")
def cgroup2_step(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _extract(tmp_path_factory, "32amd64-4s2n4c-cgroup2")


def test_real_kunpeng_tree(kunpeng: Path) -> None:
    machine = from_sysfs(kunpeng)
    assert len(machine.cpus) == 128
    assert sorted(machine.packages) == [36, 8442]
    assert {n: len(c) for n, c in machine.numa_nodes.items()} == {0: 32, 1: 32, 2: 32, 3: 32}
    assert [leaf.cpus for leaf in machine.leaves] == [machine.numa_nodes[n] for n in range(4)]
    assert machine.l3_sizes == (32 * 2**20,) * 4
    assert machine.numa_distances[0] == (10, 16, 32, 33)
    assert machine.smt == 1
    assert machine.allowed == machine.cpus  # cgroup v1 cpuset "/" holds 0-127


def test_real_slurm_cgroup2_step(cgroup2_step: Path) -> None:
    machine = from_sysfs(cgroup2_step)
    assert len(machine.cpus) == 32
    assert machine.allowed == parse_cpulist("0-5")
    assert len(machine.packages) == 4
    assert len(machine.numa_nodes) == 8
    assert len(machine.l3) == 8
    assert [len(leaf.cpus) for leaf in machine.leaves] == [4] * 8
    notes = " | ".join(machine.diagnostics)
    assert "thread_siblings_list" in notes
    assert "/cgroup/unified/uid_2008/job_15389/step_0/cpuset.cpus.effective" in notes


def test_real_slurm_step_agrees_with_hwlocs_own_export(cgroup2_step: Path) -> None:
    """hwloc read the same tree into ``.xml``: our allowed leaves must equal its leaves."""
    xml = SHARED / "32amd64-4s2n4c-cgroup2.xml"
    if not xml.is_file():
        pytest.skip(f"{xml} is not available (needs the shared topology collection)")
    ours = from_sysfs(cgroup2_step)
    theirs = from_hwloc_xml(xml)
    assert ours.allowed == theirs.allowed
    allowed_leaves = [leaf.cpus & ours.allowed for leaf in ours.leaves if leaf.cpus & ours.allowed]
    assert allowed_leaves == [leaf.cpus for leaf in theirs.leaves]
    # hwloc's export only kept nodes 0-5 (the others are outside the cgroup's memory nodes).
    assert {n: ours.numa_distances[n][:6] for n in theirs.numa_distances} == theirs.numa_distances


def test_empty_sysfs_uses_the_allowed_cpus(tmp_path: Path) -> None:
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/status").write_text("Cpus_allowed_list:\t2-3\n")
    machine = from_sysfs(tmp_path)
    assert machine.cpus == machine.allowed == frozenset({2, 3})
    assert machine.packages == {0: frozenset({2, 3})}
    assert any("names no CPUs at all" in note for note in machine.diagnostics)
