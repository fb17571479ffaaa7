"""``ctrlstack.ops.preload``: workers load the configured kernels while they start.

The parsing is pure and tested directly; the effect is tested in real worker processes (a
ctrlstack local cluster, whose pin preload chains to it, and a plain ``distributed`` cluster
that lists it): the kernels' dispatchers must already hold compiled code when the first task
arrives, and with the default setting a worker must not even import Numba.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import ctrlstack
from ctrlstack.ops import preload

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([], []),
        ("all", None),
        (" all ", None),
        ("kmeans, moving_std", ["kmeans", "moving_std"]),
        (["group_mean"], ["group_mean"]),
        (("knn",), ["knn"]),
    ],
)
def test_requested_accepts_lists_strings_and_all(value: Any, expected: Any) -> None:
    assert preload.requested(value) == expected


@pytest.mark.parametrize("value", [5, [1, 2], {"kmeans": 1}])
def test_requested_refuses_other_shapes_naming_the_key(value: Any) -> None:
    with pytest.raises(ValueError, match=r"ctrlstack\.ops\.preload must be 'all' or a list"):
        preload.requested(value)


def test_requested_reads_the_dask_config() -> None:
    import dask.config

    assert preload.requested() == []  # packaged default
    with dask.config.set({"ctrlstack.ops.preload": ["histogram"]}):
        assert preload.requested() == ["histogram"]


def test_unknown_op_is_recorded_not_raised() -> None:
    record = preload.run(["kmeans", "no_such_op"])
    assert "no_such_op" in record["error"]
    assert "ops" not in record


def test_run_warms_the_named_ops_in_this_process() -> None:
    from ctrlstack.ops import grouped

    record = preload.run(["group_sum"])
    assert record["ops"] == ["group_sum"]
    assert record["seconds"] >= 0.0
    assert grouped._g_sum.signatures  # compiled (or loaded from the cache) now
    assert preload.preload_report() == record


def worker_state() -> dict[str, Any]:
    """Inside a worker: was Numba imported, and do the group kernels hold code already?"""
    loaded = "ctrlstack.ops" in sys.modules
    state: dict[str, Any] = {"numba": "numba" in sys.modules, "ops_loaded": loaded}
    if loaded:
        from ctrlstack.ops import grouped
        from ctrlstack.ops.preload import preload_report

        state["report"] = preload_report()
        # A one-thread worker (Numba pool of one) only ever runs the serial driver.
        state["group_sum_signatures"] = len(grouped._g_sum_serial.signatures)
    return state


@pytest.mark.slow
def test_ctrlstack_workers_load_configured_ops_at_start(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DASK_CTRLSTACK__OPS__PRELOAD", "group_sum")
    handle = ctrlstack.launch("local", name="preloaded", workers=1, threads=1)
    try:
        client = handle.client()
        client.wait_for_workers(1, timeout=60)
        (state,) = client.run(worker_state).values()
        client.close()
    finally:
        handle.stop()
    assert state["ops_loaded"], state
    assert state["report"]["ops"] == ["group_sum"], state
    assert state["group_sum_signatures"] >= 1, state


@pytest.mark.slow
def test_default_setting_leaves_numba_out_of_the_worker(state_dir: Path) -> None:
    handle = ctrlstack.launch("local", name="plain", workers=1, threads=1)
    try:
        client = handle.client()
        client.wait_for_workers(1, timeout=60)
        (state,) = client.run(worker_state).values()
        client.close()
    finally:
        handle.stop()
    assert state == {"numba": False, "ops_loaded": False}


@pytest.mark.slow
def test_plain_dask_cluster_can_list_the_preload() -> None:
    import dask.config
    from distributed import Client, LocalCluster

    with (
        dask.config.set({"ctrlstack.ops.preload": "group_sum"}),
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            preload=["ctrlstack.ops.preload"],
        ) as cluster,
        Client(cluster) as client,
    ):
        (state,) = client.run(worker_state).values()
    assert state["report"]["ops"] == ["group_sum"], state
    assert state["group_sum_signatures"] >= 1, state
