"""The crowding report's aggregation, from synthetic placements (no cluster needed)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from machines import epyc_7763

from ctrlstack.topology import pin
from ctrlstack.topology.report import aggregate, crowding

MACHINE = epyc_7763(nps=4, smt=1)


def placement(
    name: str,
    slot: str | None,
    threads: Sequence[tuple[str, int]],
    *,
    host: str = "node1",
    numba: int | None = 8,
    blas: int = 1,
) -> dict[str, Any]:
    """What :func:`ctrlstack.topology.pin.placement` returns, for made-up threads."""
    return {
        "pid": 1000 + len(name),
        "host": host,
        "name": name,
        "slot_cpus": slot,
        "threads": [
            {"tid": 100 + i, "name": f"t{i}", "affinity": affinity, "last_cpu": last}
            for i, (affinity, last) in enumerate(threads)
        ],
        "numba": None
        if numba is None
        else {"num_threads_config": numba, "num_threads": numba, "launched": True},
        "threadpools": [{"user_api": "blas", "internal_api": "openblas", "num_threads": blas}],
    }


def pinned_pair() -> dict[str, dict[str, Any]]:
    return {
        "tcp://a": placement("w0", "0-7", [("0-7", 0), ("0-7", 3), ("0-7", 7)]),
        "tcp://b": placement("w1", "64-71", [("64-71", 64), ("64-71", 65)]),
    }


def test_clean_pinned_cluster_is_ok() -> None:
    report = aggregate(pinned_pair(), MACHINE)
    assert report.ok
    assert report.problems == ()
    leaves = {leaf.index: leaf for leaf in report.leaves}
    assert leaves[0].workers == ("w0",)
    assert (leaves[0].confined, leaves[0].unpinned, leaves[0].running) == (3, 0, 3)
    assert leaves[8].workers == ("w1",)
    assert (leaves[8].confined, leaves[8].running) == (2, 2)
    assert (leaves[1].workers, leaves[1].confined, leaves[1].running) == ((), 0, 0)
    workers = {w.label: w for w in report.workers}
    assert workers["w0"].confined is True
    assert (workers["w0"].numba_threads, workers["w0"].blas_threads) == (8, 1)


def test_unpinned_workers_crowding_one_ccd_are_flagged() -> None:
    # Two unpinned workers may run anywhere, and all their threads last ran on CCD 0.
    everything = "0-127"
    placements = {
        "tcp://a": placement("w0", None, [(everything, c) for c in (0, 1, 2, 3)]),
        "tcp://b": placement("w1", None, [(everything, c) for c in (4, 5, 6, 7)]),
    }
    report = aggregate(placements, MACHINE)
    assert not report.ok
    assert any("w0 and w1 share CPUs 0-127" in p for p in report.problems)
    leaves = {leaf.index: leaf for leaf in report.leaves}
    assert leaves[0].running == 8
    assert all(leaf.running == 0 for i, leaf in leaves.items() if i != 0)
    assert all(leaf.unpinned == 8 for leaf in report.leaves)
    assert all(leaf.workers == () for leaf in report.leaves)  # no slots to show
    assert {w.confined for w in report.workers} == {None}


def test_a_thread_left_outside_its_slot_is_flagged() -> None:
    # The classic: an OpenBLAS thread created at `import numpy` kept the old, wide mask.
    placements = pinned_pair()
    placements["tcp://a"]["threads"].append(
        {"tid": 999, "name": "openblas", "affinity": "0-127", "last_cpu": 64}
    )
    report = aggregate(placements, MACHINE)
    assert not report.ok
    w0 = {w.label: w for w in report.workers}["w0"]
    assert w0.confined is False
    assert w0.outside == ("tid 999 'openblas' on 0-127",)
    assert any("w0: 1 of 4 threads may run outside its slot 0-7" in p for p in report.problems)
    # ... and the stray thread shares CPUs with w1's slot.
    assert any("w0 and w1 share CPUs 64-71" in p for p in report.problems)
    assert {leaf.index: leaf for leaf in report.leaves}[8].running == 3


def test_overlapping_slots_are_flagged() -> None:
    placements = {
        "tcp://a": placement("w0", "0-7", [("0-7", 0)]),
        "tcp://b": placement("w1", "4-11", [("4-11", 9)]),
    }
    report = aggregate(placements, MACHINE)
    assert not report.ok
    assert report.problems == ("workers w0 and w1 share CPUs 4-7",)
    # w1's single thread spans leaves 0 and 1: counted as unpinned in both.
    leaves = {leaf.index: leaf for leaf in report.leaves}
    assert (leaves[0].confined, leaves[0].unpinned) == (1, 1)
    assert (leaves[1].confined, leaves[1].unpinned) == (0, 1)
    assert leaves[1].workers == ("w1",)


def test_same_cpus_on_different_hosts_do_not_clash() -> None:
    placements = {
        "tcp://a": placement("w0", "0-7", [("0-7", 0)], host="node1"),
        "tcp://b": placement("w1", "0-7", [("0-7", 1)], host="node2"),
    }
    report = aggregate(placements, MACHINE, host="node1")
    assert report.ok
    leaf0 = {leaf.index: leaf for leaf in report.leaves}[0]
    assert (leaf0.workers, leaf0.running) == (("w0",), 1)  # node2 is not this machine


def test_outputs_text_html_and_json() -> None:
    placements = pinned_pair()
    placements["tcp://b"]["name"] = "<w1>"
    placements["tcp://b"]["numba"] = {"num_threads_config": 8, "num_threads": None}
    report = aggregate(placements, MACHINE)
    text = str(report)
    assert text.splitlines()[0] == "crowding: OK — 2 workers, 2 pinned"
    assert "leaf  cpus" in text
    assert "(8, not started)" in text
    html = report._repr_html_()
    assert "&lt;w1&gt;" in html
    assert "<w1>" not in html
    assert html.count("<table>") == 2
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is True
    assert data["workers"][0]["slot"] == "0-7"
    assert data["leaves"][0]["confined_threads"] == 3


def test_crowding_runs_placement_through_the_client() -> None:
    class FakeClient:
        def run(self, fn: Callable[..., Any]) -> dict[str, Any]:
            assert fn is pin.placement
            return pinned_pair()

    report = crowding(FakeClient(), MACHINE)
    assert report.ok
    assert [w.label for w in report.workers] == ["w0", "w1"]
