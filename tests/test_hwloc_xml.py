"""The hwloc XML reader: real exports (copied fixtures and the shared collection) and edge cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctrlstack.topology.cpuset import parse_cpulist
from ctrlstack.topology.hwloc import from_hwloc_xml, parse_hwloc_xml
from ctrlstack.topology.model import Machine

FIXTURES = Path(__file__).parent / "fixtures" / "hwloc"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "topologies"


def test_epyc_7763_smt_off() -> None:
    machine = from_hwloc_xml(FIXTURES / "AMD-19h-Zen3-2xEpyc-7763.xml")
    assert len(machine.cpus) == 128
    assert len(machine.cores) == 128
    assert machine.smt == 1
    assert {p: len(c) for p, c in machine.packages.items()} == {0: 64, 1: 64}
    assert len(machine.l3) == 16
    assert [len(l3) for l3 in machine.l3] == [8] * 16
    assert machine.l3[0] == parse_cpulist("0-7")
    assert machine.l3[15] == parse_cpulist("120-127")
    assert machine.l3_sizes == (32 * 2**20,) * 16
    # This cpuid-based export has one NUMA node: cpuid cannot see the NPS setting.
    assert list(machine.numa_nodes) == [0]
    assert len(machine.leaves) == 16
    assert machine.allowed == machine.cpus
    assert machine.diagnostics == ()


def test_sapphire_rapids_xeon_max() -> None:
    machine = from_hwloc_xml(FIXTURES / "Intel-SapphireRapids-2xXeonMax9460.xml")
    assert len(machine.cpus) == 160
    assert len(machine.cores) == 80
    assert machine.smt == 2
    assert machine.cores[0] == frozenset({0, 80})
    assert machine.cores[-1] == frozenset({79, 159})
    assert machine.l3 == (parse_cpulist("0-39,80-119"), parse_cpulist("40-79,120-159"))
    assert machine.l3_sizes == (102236160, 102236160)
    assert [leaf.package for leaf in machine.leaves] == [0, 1]


@pytest.mark.parametrize(
    "name", ["AMD-19h-Zen3-2xEpyc-7763.xml", "Intel-SapphireRapids-2xXeonMax9460.xml"]
)
def test_real_exports_round_trip(name: str) -> None:
    machine = from_hwloc_xml(FIXTURES / name)
    assert Machine.from_dict(machine.to_dict()) == machine


def test_shared_cgroup2_export_is_restricted() -> None:
    path = SHARED / "32amd64-4s2n4c-cgroup2.xml"
    if not path.is_file():
        pytest.skip(f"{path} is not available (needs the shared topology collection)")
    machine = from_hwloc_xml(path)
    assert machine.cpus == parse_cpulist("0-5")
    assert machine.allowed == parse_cpulist("0-5")
    assert machine.numa_nodes[0] == parse_cpulist("0-3")
    assert machine.numa_nodes[1] == parse_cpulist("4-5")
    assert all(not machine.numa_nodes[n] for n in (2, 3, 4, 5))
    assert machine.l3 == (parse_cpulist("0-3"), parse_cpulist("4-5"))
    assert machine.numa_distances[0] == (10, 16, 16, 22, 16, 22)
    assert machine.numa_distances[5] == (22, 16, 22, 16, 16, 10)
    assert machine.numa_memory[1] == 17179869184
    assert machine.kinds == ()  # one cpukind covering everything is homogeneous
    assert "CPUs 6-31 have no PU object" in machine.diagnostics[0]


def _core(core: int, pus: list[int]) -> str:
    mask = sum(1 << pu for pu in pus)
    inner = "".join(f'<object type="PU" os_index="{pu}" cpuset="0x{1 << pu:08x}"/>' for pu in pus)
    return f'<object type="Core" os_index="{core}" cpuset="0x{mask:08x}">{inner}</object>'


HYBRID_V2 = f"""<?xml version="1.0" encoding="UTF-8"?>
<topology version="2.0">
  <object type="Machine" os_index="0" cpuset="0x000000ff" complete_cpuset="0x000000ff"
          allowed_cpuset="0x0000003c" gp_index="1">
    <object type="Package" os_index="0" cpuset="0x000000ff">
      <object type="NUMANode" os_index="0" cpuset="0x000000ff" local_memory="1073741824"
              gp_index="7"/>
      <object type="L3Cache" cpuset="0x000000ff" cache_size="12582912" depth="3">
        {_core(0, [0, 1])}{_core(1, [2, 3])}{_core(8, [4])}{_core(9, [5])}{_core(10, [6])}
        {_core(11, [7])}
      </object>
    </object>
    <object type="NUMANode" os_index="3" cpuset="0x0" local_memory="2147483648" gp_index="9"/>
  </object>
  <distances2 type="NUMANode" nbobjs="2" kind="5" name="NUMALatency" indexing="gp">
    <indexes length="4">9 7</indexes>
    <u64values length="12">10 30 30 10</u64values>
  </distances2>
  <cpukind cpuset="0x000000f0" forced_efficiency="0">
    <info name="CoreType" value="IntelAtom"/>
  </cpukind>
  <cpukind cpuset="0x0000000f" forced_efficiency="1">
    <info name="CoreType" value="IntelCore"/>
  </cpukind>
</topology>
"""


def test_hybrid_kinds_cpuless_node_gp_distances_and_allowed() -> None:
    machine = parse_hwloc_xml(HYBRID_V2)
    assert machine.cpus == parse_cpulist("0-7")
    assert machine.allowed == parse_cpulist("2-5")
    assert machine.kinds == (parse_cpulist("4-7"), parse_cpulist("0-3"))
    assert machine.kind_names == ("E", "P")
    assert machine.numa_nodes == {0: parse_cpulist("0-7"), 3: frozenset()}
    assert machine.numa_memory == {0: 2**30, 3: 2**31}
    assert machine.numa_distances == {0: (10, 30), 3: (30, 10)}
    assert machine.smt == 2
    assert machine.l3_sizes == (12 * 2**20,)


V1_STYLE = f"""<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE topology SYSTEM "hwloc.dtd">
<topology>
  <object type="Machine" os_index="0" cpuset="0x0000000f" complete_cpuset="0x0000000f"
          online_cpuset="0x0000000f" allowed_cpuset="0x0000000f">
    <object type="NUMANode" os_index="0" cpuset="0x00000003" local_memory="1024">
      <object type="Socket" os_index="0" cpuset="0x00000003">
        <object type="Cache" cpuset="0x00000003" depth="3" cache_size="4194304" cache_type="0">
          {_core(0, [0])}{_core(1, [1])}
        </object>
      </object>
    </object>
    <object type="NUMANode" os_index="1" cpuset="0x0000000c" local_memory="1024">
      <object type="Socket" os_index="1" cpuset="0x0000000c">
        <object type="Cache" cpuset="0x0000000c" depth="3" cache_size="4194304" cache_type="0">
          {_core(0, [2])}{_core(1, [3])}
        </object>
      </object>
    </object>
    <distances nbobjs="2" relative_depth="1" latency_base="10.0">
      <latency value="1.0"/><latency value="2.0"/><latency value="2.0"/><latency value="1.0"/>
    </distances>
  </object>
</topology>
"""


def test_hwloc_1x_format() -> None:
    machine = parse_hwloc_xml(V1_STYLE)
    assert machine.packages == {0: parse_cpulist("0-1"), 1: parse_cpulist("2-3")}
    assert machine.numa_nodes == {0: parse_cpulist("0-1"), 1: parse_cpulist("2-3")}
    assert machine.l3 == (parse_cpulist("0-1"), parse_cpulist("2-3"))
    assert len(machine.leaves) == 2
    notes = " | ".join(machine.diagnostics)
    assert "version 1.x" in notes
    assert "1.x <distances> are not read" in notes


def test_no_l3_and_no_core_objects_are_reported() -> None:
    text = """<topology version="2.0"><object type="Machine" cpuset="0x3">
      <object type="PU" os_index="0" cpuset="0x1"/><object type="PU" os_index="1" cpuset="0x2"/>
    </object></topology>"""
    machine = parse_hwloc_xml(text)
    assert machine.cores == (frozenset({0}), frozenset({1}))
    assert machine.l3 == ()
    assert machine.packages == {0: frozenset({0, 1})}
    notes = " | ".join(machine.diagnostics)
    assert "no L3 cache" in notes
    assert "no Package objects" in notes


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<topology", "not well-formed XML"),
        ("<machine/>", "root element is <machine>"),
        ("<topology version='2.0'/>", "has no root <object>"),
        ("<topology><object type='Machine' cpuset='0x1'/></topology>", "no PU objects"),
        (
            (
                "<topology><object type='Machine'><object type='Core' cpuset='0xzz'>"
                "<object type='PU' os_index='0'/></object></object></topology>"
            ),
            "test.xml: object type='Core' os_index=None: bad cpuset",
        ),
        (
            (
                "<topology><object type='Machine'><object type='PU' os_index='one'/></object>"
                "</topology>"
            ),
            "test.xml: PU os_index 'one' is not an integer",
        ),
    ],
)
def test_invalid_xml_raises_clear_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_hwloc_xml(text, source="test.xml")


def test_allowed_override() -> None:
    machine = from_hwloc_xml(FIXTURES / "AMD-19h-Zen3-2xEpyc-7763.xml", allowed={0, 1, 500})
    assert machine.allowed == frozenset({0, 1})
