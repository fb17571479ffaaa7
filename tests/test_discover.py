"""Live discovery (this machine) and the allocation context (cgroups, quota, Slurm)."""

from __future__ import annotations

import dataclasses
import os
import tarfile
from pathlib import Path

import pytest
from sysfs_factory import milan_slurm_job, write_tree

from ctrlstack.topology.cgroup import (
    parse_cfs_quota,
    parse_cpu_max,
    parse_mounts,
    parse_proc_cgroup,
    parse_status_cpus_allowed,
    read_cpu_quota,
)
from ctrlstack.topology.cpuset import parse_cpulist
from ctrlstack.topology.discover import (
    discover,
    job_context,
    parse_job_cpus_per_node,
    parse_slurm_cpu_bind,
    quota_note,
    slurm_context,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "topologies"


# --------------------------------------------------------------------------- live machine
def test_discover_matches_affinity_and_is_cached() -> None:
    machine = discover()
    assert machine.allowed == frozenset(os.sched_getaffinity(0))
    assert machine.allowed <= machine.cpus
    assert len(machine.cores) >= 1
    assert discover() is machine
    fresh = discover(refresh=True)
    assert fresh is not machine
    assert fresh == machine
    assert discover() is fresh


def test_discover_refresh_sees_a_new_affinity() -> None:
    before = os.sched_getaffinity(0)
    if len(before) < 2:
        pytest.skip("needs at least 2 allowed CPUs to narrow the affinity")
    one = min(before)
    try:
        os.sched_setaffinity(0, {one})
        assert discover(refresh=True).allowed == frozenset({one})
    finally:
        os.sched_setaffinity(0, before)
    assert discover(refresh=True).allowed == frozenset(before)


def test_live_job_context_reports_affinity() -> None:
    context = job_context(env={})
    assert parse_cpulist(context["affinity"]) == frozenset(os.sched_getaffinity(0))
    assert "slurm" not in context


# --------------------------------------------------------------------------- Slurm parsing
def test_parse_slurm_mask_cpu_scattered() -> None:
    bind = parse_slurm_cpu_bind("quiet,mask_cpu:0xC000500000000000")
    assert bind.type == "mask_cpu"
    assert not bind.verbose
    assert bind.cpus == (frozenset({44, 46, 62, 63}),)


def test_parse_slurm_mask_list_is_per_task_not_words() -> None:
    bind = parse_slurm_cpu_bind("verbose,mask_cpu:0x3,0xC,30")
    assert bind.verbose
    assert bind.cpus == (frozenset({0, 1}), frozenset({2, 3}), frozenset({4, 5}))
    assert bind.for_task(4) == frozenset({2, 3})


@pytest.mark.parametrize(
    ("value", "kind", "cpus", "ldoms"),
    [
        ("map_cpu:0,4,8", "map_cpu", ({0}, {4}, {8}), ()),
        ("quiet,cores", "cores", (), ()),
        ("none", "none", (), ()),
        ("mask_ldom:0x1,0x2", "mask_ldom", (), ({0}, {1})),
    ],
)
def test_parse_slurm_cpu_bind_types(
    value: str, kind: str, cpus: tuple[set[int], ...], ldoms: tuple[set[int], ...]
) -> None:
    bind = parse_slurm_cpu_bind(value)
    assert bind.type == kind
    assert bind.cpus == tuple(frozenset(c) for c in cpus)
    assert bind.ldoms == tuple(frozenset(c) for c in ldoms)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("quiet", "no binding type"),
        ("mask_cpu:0xZZ", "entry '0xZZ' of mask_cpu is not a hex mask"),
        ("map_cpu:a", "entry 'a' of map_cpu is not a number"),
        ("cores:3", "type 'cores' takes no list"),
        ("mask_cpu:", "mask_cpu needs a list"),
    ],
)
def test_parse_slurm_cpu_bind_errors(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_slurm_cpu_bind(value)


def test_parse_job_cpus_per_node() -> None:
    assert parse_job_cpus_per_node("72(x2),36") == [72, 72, 36]
    assert parse_job_cpus_per_node("4") == [4]
    with pytest.raises(ValueError, match="part 'x' is not N or N"):
        parse_job_cpus_per_node("4,x")


def test_slurm_context_from_env() -> None:
    env = {
        "SLURM_JOB_ID": "4242",
        "SLURM_CPU_BIND": "quiet,mask_cpu:0xC000500000000000",
        "SLURM_CPU_BIND_TYPE": "mask_cpu:",
        "SLURM_CPU_BIND_LIST": "0xC000500000000000",
        "SLURM_CPUS_PER_TASK": "4",
        "SLURM_JOB_CPUS_PER_NODE": "32(x2)",
        "SLURM_LOCALID": "0",
    }
    context = slurm_context(env, allowed=frozenset({44, 46, 62, 63}))
    assert context["cpu_bind_cpus"] == ["44,46,62-63"]
    assert context["cpus_per_task"] == 4
    assert context["localid"] == 0
    assert context["job_cpus_per_node"] == [32, 32]
    assert "notes" not in context
    narrowed = slurm_context(env, allowed=frozenset({44}))
    assert any("may run on 44" in note for note in narrowed["notes"])
    assert any("SLURM_CPUS_PER_TASK=4 but only 1" in note for note in narrowed["notes"])
    assert slurm_context({"HOME": "/root"}) == {}


def test_slurm_context_keeps_unparsable_values_with_a_note() -> None:
    context = slurm_context({"SLURM_CPU_BIND": "mask_cpu:zz", "SLURM_JOB_CPUS_PER_NODE": "?"})
    assert context["cpu_bind"] == "mask_cpu:zz"
    assert context["job_cpus_per_node"] == "?"
    assert len(context["notes"]) == 2


# --------------------------------------------------------------------------- cgroup parsing
def test_parse_proc_cgroup_hybrid_layout() -> None:
    membership = parse_proc_cgroup("4:cpu,cpuacct:/a\n3:cpuset:/job\n0::/user.slice\nbad line")
    assert membership.v2 == "/user.slice"
    assert membership.v1 == {"cpu": "/a", "cpuacct": "/a", "cpuset": "/job"}


def test_parse_mounts_decodes_spaces() -> None:
    (mount,) = parse_mounts("cgroup2 /sys/fs/my\\040cgroup cgroup2 rw,nosuid 0 0\nshort")
    assert mount.mountpoint == "/sys/fs/my cgroup"
    assert mount.fstype == "cgroup2"
    assert "nosuid" in mount.options


def test_parse_status_and_quotas() -> None:
    assert parse_status_cpus_allowed("Name:\tx\nCpus_allowed_list:\t0-3,8\n") == parse_cpulist(
        "0-3,8"
    )
    assert parse_status_cpus_allowed("Name:\tx\n") is None
    assert parse_cpu_max("200000 100000\n") == 2.0
    assert parse_cpu_max("max 100000") is None
    assert parse_cfs_quota("150000", "100000") == 1.5
    assert parse_cfs_quota("-1", "100000") is None
    with pytest.raises(ValueError, match=r"invalid cpu\.max 'lots 1'"):
        parse_cpu_max("lots 1")
    with pytest.raises(ValueError, match="invalid cgroup v1 CPU quota"):
        parse_cfs_quota("x", None)


def test_quota_note_only_when_quota_is_below_allowed() -> None:
    assert quota_note(None, 8) is None
    assert quota_note(8.0, 8) is None
    note = quota_note(2.0, 8)
    assert note is not None
    assert "quota of 2 CPUs is below the 8 allowed" in note


# --------------------------------------------------------------------------- job context on trees
def test_job_context_on_generated_slurm_step(tmp_path: Path) -> None:
    spec = dataclasses.replace(milan_slurm_job(), cpu_max="100000 100000")
    root = write_tree(tmp_path, spec)
    env = {"SLURM_CPU_BIND": "quiet,mask_cpu:0xC000500000000000", "SLURM_LOCALID": "0"}
    context = job_context(root=root, env=env)
    assert context["affinity"] == "44,46,62-63"
    assert context["cgroup"]["version"] == 2
    assert context["cgroup"]["path"].endswith("job_4242/step_0/user/task_0")
    assert context["cgroup"]["cpus"] == "40-47,56-63,168-175,184-191"
    assert context["cpu_quota"] == 1.0
    assert context["slurm"]["cpu_bind_cpus"] == ["44,46,62-63"]
    notes = " | ".join(context["notes"])
    assert "bound to 4 of the 32 CPUs of cgroup" in notes
    assert "quota of 1 CPUs is below the 4 allowed" in notes
    assert read_cpu_quota(root) == 1.0


def test_job_context_on_real_cgroup2_capture(tmp_path: Path) -> None:
    archive = SHARED / "32amd64-4s2n4c-cgroup2.tar.bz2"
    if not archive.is_file():
        pytest.skip(f"{archive} is not available (needs the shared topology collection)")
    with tarfile.open(archive) as tar:
        members = [m for m in tar if "/proc/" in m.name or "/cgroup/" in m.name]
        tar.extractall(tmp_path, members=members, filter="data")
    context = job_context(root=tmp_path / "32amd64-4s2n4c-cgroup", env={})
    assert context["cgroup"] == {
        "version": 2,
        "path": "/uid_2008/job_15389/step_0",
        "file": "/cgroup/unified/uid_2008/job_15389/step_0/cpuset.cpus.effective",
        "cpus": "0-5",
    }
    assert context["affinity"] == "0-5"
