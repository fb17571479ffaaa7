"""The real ``sci`` stack (environments/sci.toml + its hashed lock) built with uv in CI.

One build into a temporary prefix for the module (about 40 s cold from PyPI, seconds with a warm
uv cache); then its pinned kernel runs a cell that uses the stack's xarray/Numba kernels, and a
cluster with ``stack: sci`` runs its scheduler and workers in that stack's Python.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
from collections.abc import Iterator

import dask
import pytest

import ctrlstack
from ctrlstack.stacks.build import build
from ctrlstack.stacks.check import check
from ctrlstack.stacks.kernel import in_job, kernel_slot
from ctrlstack.stacks.model import get_stack
from ctrlstack.topology.cpuset import format_cpulist
from ctrlstack.topology.discover import discover

pytestmark = pytest.mark.slow

ONE = {"workers": 1, "threads": 1, "task-threads": 1, "dashboard": False}


@pytest.fixture(scope="module")
def sci(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    prefix = tmp_path_factory.mktemp("sci") / "sci"
    with dask.config.set({"ctrlstack.stacks.sci": {"prefix": str(prefix)}}):
        result = build(get_stack("sci"))
        assert result.changed
        assert result.tool == "uv"
        yield prefix


@pytest.fixture
def sci_config(sci: pathlib.Path) -> Iterator[pathlib.Path]:
    with dask.config.set(
        {"ctrlstack.stacks.sci": {"prefix": str(sci)}, "ctrlstack.profiles.one": ONE}
    ):
        yield sci


def test_sci_build_matches_its_lock(sci_config: pathlib.Path) -> None:
    result = check(get_stack("sci"))
    assert result.ok, result.to_dict()
    assert result.drift == []
    assert not build(get_stack("sci")).changed  # idempotent


def test_sci_kernel_starts_pinned_and_runs_the_stacks_kernels(
    sci_config: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jupyter_client.manager import start_new_kernel

    from ctrlstack.stacks.kernelspec import install

    install(get_stack("sci"), jupyter_prefix=str(tmp_path))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
    monkeypatch.setenv("CTRLSTACK_KERNEL_THREADS", "1")
    expected = kernel_slot(discover(), 1, job=in_job(os.environ))
    km, kc = start_new_kernel(kernel_name="ctrlstack-sci", startup_timeout=120)
    try:
        out: list[str] = []
        code = (
            "import os, sys, json, numpy as np, xarray as xr, ctrlstack.ops as ops\n"
            "a = xr.DataArray(np.arange(10.0), dims='t')\n"
            "m = ops.moving_mean(a, 3, min_count=3, dim='t')\n"
            "print(json.dumps([sorted(os.sched_getaffinity(0)), sys.executable, "
            "float(m[-1]), os.environ.get('NUMBA_THREADING_LAYER')]))"
        )
        reply = kc.execute_interactive(
            code, timeout=120, output_hook=lambda m: out.append(m["content"].get("text", ""))
        )
        assert reply["content"]["status"] == "ok", reply["content"]
        affinity, executable, last, layer = json.loads("".join(out))
        assert format_cpulist(frozenset(affinity)) == format_cpulist(expected.cpus)
        assert executable == str(sci_config / "bin" / "python")
        assert last == 8.0  # mean of 7, 8, 9
        assert layer == "workqueue"  # the stack's [threads] setting
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_cluster_with_stack_sci_runs_in_the_stacks_python(
    sci_config: pathlib.Path, state_dir: pathlib.Path
) -> None:
    c = ctrlstack.launch("one", name="in-sci", stack="sci")
    try:
        client = c.client()
        python = str(sci_config / "bin" / "python")
        assert set(client.run(lambda: sys.executable).values()) == {python}
        assert client.run_on_scheduler(lambda: sys.executable) == python
    finally:
        c.stop()
