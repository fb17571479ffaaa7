"""The text map printed by ``ctrlstack topology``."""

from __future__ import annotations

from pathlib import Path

import pytest
from sysfs_factory import (
    epyc_milan,
    hybrid_laptop,
    intel_snc2,
    milan_slurm_job,
    offline_cpus,
    write_tree,
)

from ctrlstack.topology.model import Machine
from ctrlstack.topology.render import format_bytes, format_cores, render_machine
from ctrlstack.topology.sysfs import from_sysfs


@pytest.fixture(scope="module")
def slurm_milan(tmp_path_factory: pytest.TempPathFactory) -> Machine:
    return from_sysfs(write_tree(tmp_path_factory.mktemp("milan"), milan_slurm_job()))


def test_summary_and_leaf_lines_for_a_scattered_slurm_job(slurm_milan: Machine) -> None:
    lines = render_machine(slurm_milan).splitlines()
    assert lines[0] == (
        "2 packages · 8 NUMA nodes · 16 L3 · 16 leaves · 128 cores · 256 PUs · SMT 2 · "
        "allowed 4/256"
    )
    assert "package 0  cores 0-63 (+128-191)  allowed 4/128: 44,46,62-63" in lines
    assert "  NUMA 2  32 GiB  distances 12,12,10,12,32,32,32,32  allowed 2/32: 44,46" in lines
    assert "    L3 #5 (32 MiB)  cores 40-47 (+168-175)  allowed 2/16: 44,46" in lines
    assert "  · L3 #0 (32 MiB)  cores 0-7 (+128-135)  allowed 0/16" in lines
    # One line per leaf: compact enough for a 256-CPU node.
    assert sum(1 for line in lines if "L3 #" in line) == 16
    assert len(lines) < 40


def test_full_machine_has_no_disallowed_marks(tmp_path: Path) -> None:
    text = render_machine(from_sysfs(write_tree(tmp_path, epyc_milan(nps=1))))
    assert "    L3 #3 (32 MiB)  cores 24-31 (+152-159)  allowed 16/16" in text.splitlines()
    assert " · L3" not in text


def test_snc_leaves_show_the_shared_l3(tmp_path: Path) -> None:
    text = render_machine(from_sysfs(write_tree(tmp_path, intel_snc2())))
    assert "    L3 #0 (30 MiB, spans NUMA 0,1)  cores 4-7 (+20-23)  allowed 8/8" in text


def test_hybrid_kinds_are_split(tmp_path: Path) -> None:
    text = render_machine(from_sysfs(write_tree(tmp_path, hybrid_laptop())))
    assert "kinds (least to most performant): E 12-19 (8 cores) · P 0-11 (6 cores)" in text
    assert "L3 #0 (24 MiB)  P cores 0,2,4,6,8,10 (+1,3,5,7,9,11) · E cores 12-19" in text


def test_cpuless_nodes_and_diagnostics(tmp_path: Path) -> None:
    text = render_machine(from_sysfs(write_tree(tmp_path, offline_cpus())))
    lines = text.splitlines()
    assert "(+2 CPU-less)" in lines[0]
    assert (
        "CPU-less NUMA nodes (memory only, or CPUs offline/hidden): 250 (15 GiB), 251 (15 GiB)"
        in lines
    )
    notes = lines[lines.index("notes:") + 1 :]
    assert "  - CPUs 16-31,48-63 are offline (no topology/ directory); excluded" in notes
    assert lines[-1].startswith("source: sysfs:")


def test_context_section(slurm_milan: Machine) -> None:
    context = {
        "affinity": "44,46,62-63",
        "cgroup": {"version": 2, "cpus": "40-47"},
        "slurm": {"cpu_bind_cpus": ["44,46,62-63"], "notes": ["task note"]},
        "notes": ["bound to 4 of the 32 CPUs"],
    }
    lines = render_machine(slurm_milan, context=context).splitlines()
    job = lines.index("job:")
    assert lines[job + 1 : job + 8] == [
        "  affinity: 44,46,62-63",
        "  cgroup:",
        "    version: 2",
        "    cpus: 40-47",
        "  slurm:",
        "    cpu_bind_cpus: 44,46,62-63",
        "    ! task note",
    ]
    assert "  - bound to 4 of the 32 CPUs" in lines


def test_machine_without_numa_or_l3() -> None:
    cpus = frozenset({0, 1})
    machine = Machine(
        cpus=cpus, allowed=frozenset({1}), packages={0: cpus}, numa_nodes={}, l3=(),
        cores=(frozenset({0}), frozenset({1})),
    )  # fmt: skip
    lines = render_machine(machine).splitlines()
    assert lines[0].startswith("1 package · 0 NUMA nodes · 0 L3 · 1 leaf · 2 cores · 2 PUs")
    assert "  NUMA ?  (no NUMA information)" in lines
    assert "    no L3  cores 0-1  allowed 1/2: 1" in lines


def test_render_round_tripped_machine_is_identical(slurm_milan: Machine) -> None:
    again = Machine.from_dict(slurm_milan.to_dict())
    assert render_machine(again) == render_machine(slurm_milan)


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (33554432, "32 MiB"),
        (3 * 2**29, "1.5 GiB"),
        (5240832, "5 MiB"),
        (512, "512 B"),
        (2**10, "1 KiB"),
    ],
)
def test_format_bytes(size: int, text: str) -> None:
    assert format_bytes(size) == text


def test_format_cores_handles_partial_cores() -> None:
    cpus = frozenset(range(4))
    machine = Machine(
        cpus=cpus, allowed=cpus, packages={0: cpus}, numa_nodes={}, l3=(),
        cores=(frozenset({0, 2}), frozenset({1, 3})),
    )  # fmt: skip
    assert format_cores(machine, frozenset({0, 1, 2, 3})) == "cores 0-1 (+2-3)"
    assert format_cores(machine, frozenset({2})) == "core 2"
