"""CPU list and mask parsing: the encodings every reader depends on."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sysfs_factory import format_mask

from ctrlstack.topology.cpuset import format_cpulist, parse_cpulist, parse_cpumask


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0-3,8,10-11", {0, 1, 2, 3, 8, 10, 11}),
        ("0-15:4", {0, 4, 8, 12}),
        ("3\n\x00", {3}),  # hwloc-gathered files end in NUL bytes
        ("", set()),  # CPU-less NUMA node
        ("\n", set()),
        (" 1 , 3 ", {1, 3}),
        ("5-5", {5}),
        ("0-3,,5", {0, 1, 2, 3, 5}),
    ],
)
def test_parse_cpulist(text: str, expected: set[int]) -> None:
    assert parse_cpulist(text) == frozenset(expected)


@pytest.mark.parametrize(
    ("text", "bad_part"),
    [("0-3,x", "'x'"), ("4-2", "'4-2'"), ("-1", "'-1'"), ("0-7:0", "'0-7'"), ("1.5", "'1.5'")],
)
def test_parse_cpulist_rejects_bad_parts(text: str, bad_part: str) -> None:
    with pytest.raises(ValueError, match="invalid CPU list") as info:
        parse_cpulist(text)
    assert bad_part in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("00000000,0000ffff", set(range(16))),  # kernel cpumap
        ("0000ffff,00000000", set(range(32, 48))),
        ("0x000000ff,,,,,,0x000000ff", set(range(8)) | set(range(192, 200))),  # hwloc 9654 XML
        ("0x80000000,,,0x0", {127}),  # hwloc omits zero words, keeps a trailing 0x0
        ("0xC000500000000000", {44, 46, 62, 63}),  # Slurm: one wide word
        ("0x0", set()),
        ("", set()),
        ("ff\n\x00", set(range(8))),
        (",000000ff", set(range(8))),  # empty high word
        ("000000ff,", set(range(32, 40))),  # empty low word
    ],
)
def test_parse_cpumask(text: str, expected: set[int]) -> None:
    assert parse_cpumask(text) == frozenset(expected)


def test_parse_cpumask_rejects_non_hex_word() -> None:
    with pytest.raises(ValueError, match=r"word 'zz' is not hex"):
        parse_cpumask("000000ff,zz")


@pytest.mark.parametrize(
    ("cpus", "text"),
    [
        ({0, 1, 2, 3, 8}, "0-3,8"),
        (set(), ""),
        ({5}, "5"),
        ({1, 3, 5}, "1,3,5"),
        ({44, 46, 62, 63}, "44,46,62-63"),
    ],
)
def test_format_cpulist(cpus: set[int], text: str) -> None:
    assert format_cpulist(cpus) == text


cpu_sets = st.frozensets(st.integers(min_value=0, max_value=600), max_size=80)


@given(cpu_sets)
def test_cpulist_round_trip(cpus: frozenset[int]) -> None:
    assert parse_cpulist(format_cpulist(cpus)) == cpus


@given(cpu_sets, st.booleans())
def test_cpumask_round_trip(cpus: frozenset[int], compress: bool) -> None:
    nbits = max(cpus, default=0) + 1
    assert parse_cpumask(format_mask(cpus, nbits, compress=compress)) == cpus
