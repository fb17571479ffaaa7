"""Stacks for real: build a small stack, start its pinned kernel, run a cluster in it, submit runs.

The stack is ``tests/stacks/tiny.toml`` (ctrlstack's requirements at the versions of the test
environment) built with uv into a temporary prefix from its committed hashed lock; its twin
``tiny-other`` differs in toolz only, to trigger the version-mismatch message.  Needs PyPI (or
a warm uv cache) for the build.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time
from collections.abc import Iterator

import dask
import nbformat
import pytest

import ctrlstack
from ctrlstack.runs.record import load
from ctrlstack.stacks.build import build, read_stamp
from ctrlstack.stacks.check import check
from ctrlstack.stacks.kernel import in_job, kernel_slot
from ctrlstack.stacks.model import StackError, get_stack
from ctrlstack.stacks.versions import VersionMismatchError, VersionMismatchWarning, check_client
from ctrlstack.topology.cpuset import format_cpulist
from ctrlstack.topology.discover import discover

pytestmark = pytest.mark.slow

TESTS = pathlib.Path(__file__).resolve().parent
ONE = {"workers": 1, "threads": 1, "task-threads": 1, "dashboard": False}


@pytest.fixture(scope="module")
def prefixes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, pathlib.Path]]:
    root = tmp_path_factory.mktemp("stacks")
    out = {name: root / name for name in ("tiny", "tiny-other")}
    config = {
        name: {"file": str(TESTS / "stacks" / f"{name}.toml"), "prefix": str(path)}
        for name, path in out.items()
    }
    with dask.config.set({"ctrlstack.stacks": config}):
        for name in out:
            result = build(get_stack(name))
            assert result.changed
            assert result.tool == "uv"
        yield out


@pytest.fixture
def stack_config(prefixes: dict[str, pathlib.Path]) -> Iterator[dict[str, pathlib.Path]]:
    config = {
        name: {"file": str(TESTS / "stacks" / f"{name}.toml"), "prefix": str(path)}
        for name, path in prefixes.items()
    }
    with dask.config.set({"ctrlstack.stacks": config, "ctrlstack.profiles.one": ONE}):
        yield prefixes


def test_build_is_idempotent_and_check_finds_drift(stack_config: dict[str, pathlib.Path]) -> None:
    tiny = get_stack("tiny")
    stamp = read_stamp(stack_config["tiny"])
    assert stamp is not None
    again = build(tiny)
    assert not again.changed  # same lock: nothing to do
    assert read_stamp(stack_config["tiny"]) == stamp
    result = check(tiny)
    assert result.ok, result.to_dict()
    assert result.drift == []
    # The other stack's build, judged against tiny's lock: another lock and toolz differs.
    other = check(tiny, stack_config["tiny-other"])
    assert other.lock_changed
    assert [str(d) for d in other.drift] == ["toolz: locked 1.2.0, installed 1.0.0"]


def test_kernel_starts_pinned_from_the_stack_and_runs_a_cell(
    stack_config: dict[str, pathlib.Path], tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jupyter_client.manager import start_new_kernel

    from ctrlstack.stacks.kernelspec import install, installed_kernels

    where = install(get_stack("tiny"), jupyter_prefix=str(tmp_path))
    assert pathlib.Path(where, "kernel.json").is_file()
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
    monkeypatch.setenv("CTRLSTACK_KERNEL_THREADS", "1")
    assert installed_kernels()["ctrlstack-tiny"] == "tiny"
    assert check(get_stack("tiny")).kernels == ["ctrlstack-tiny"]
    expected = kernel_slot(discover(), 1, job=in_job(os.environ))
    km, kc = start_new_kernel(kernel_name="ctrlstack-tiny", startup_timeout=120)
    try:
        out: list[str] = []
        code = (
            "import os, sys, json; print(json.dumps([sorted(os.sched_getaffinity(0)), "
            "sys.executable, {k: os.environ.get(k) for k in ('NUMBA_NUM_THREADS', "
            "'OPENBLAS_NUM_THREADS', 'NUMBA_THREADING_LAYER', 'CTRLSTACK_TEST_STACK')}]))"
        )
        reply = kc.execute_interactive(
            code,
            timeout=60,
            output_hook=lambda m: out.append(m["content"].get("text", "")),
        )
        assert reply["content"]["status"] == "ok"
        affinity, executable, env = json.loads("".join(out))
        assert format_cpulist(frozenset(affinity)) == format_cpulist(expected.cpus)
        assert len(affinity) == 1
        assert executable == str(stack_config["tiny"] / "bin" / "python")
        assert env == {
            "NUMBA_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "NUMBA_THREADING_LAYER": "workqueue",
            "CTRLSTACK_TEST_STACK": "tiny",
        }
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert not km.is_alive()


def test_cluster_runs_in_the_profiles_stack_and_a_different_stack_is_reported(
    stack_config: dict[str, pathlib.Path], state_dir: pathlib.Path
) -> None:
    c = ctrlstack.launch("one", name="in-tiny", stack="tiny")
    try:
        client = c.client()  # same versions: no warning (warnings are errors in the tests)
        python = str(stack_config["tiny"] / "bin" / "python")
        assert set(client.run(lambda: sys.executable).values()) == {python}
        assert client.run_on_scheduler(lambda: sys.executable) == python
        # the stack's env reaches the workers
        assert set(client.run(lambda: os.environ["CTRLSTACK_TEST_STACK"]).values()) == {"tiny"}
    finally:
        c.stop()
    other = ctrlstack.launch("one", name="in-other", stack="tiny-other")
    try:
        with pytest.warns(VersionMismatchWarning) as caught:
            client = other.client()
        assert len(caught) == 1  # one message, not distributed's table as well
        text = str(caught[0].message)
        assert "toolz: client 1.2.0, scheduler 1.0.0, workers 1.0.0 (1 of 1)" in text
        assert "dask:" not in text
        with (
            dask.config.set({"ctrlstack.version-mismatch": "error"}),
            pytest.raises(VersionMismatchError, match=r"toolz: client 1\.2\.0"),
        ):
            check_client(client, "in-other")
        with dask.config.set({"ctrlstack.version-mismatch": "ignore"}):
            assert check_client(client) == []
    finally:
        other.stop()


def test_a_profile_naming_an_unbuilt_stack_is_refused_before_anything_starts(
    state_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    with (
        dask.config.set({"ctrlstack.stacks.sci": {"prefix": str(tmp_path / "nowhere")}}),
        pytest.raises(StackError, match="not built at"),
    ):
        ctrlstack.launch("local", name="never", stack="sci")
    assert ctrlstack.clusters() == []


def _notebook(path: pathlib.Path) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("n = 10")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        params,
        nbformat.v4.new_code_cell(
            "from distributed import Client\n"
            "client = Client()\n"
            "print('total', client.submit(sum, range(n)).result())"
        ),
        nbformat.v4.new_code_cell("print('ratio', 1 / (n - 100))"),
    ]
    nbformat.write(nb, path)


def test_submit_notebooks_detached_with_parameters_and_a_failing_cell(
    state_dir: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DASK_CTRLSTACK__PROFILES__ONE", repr(ONE))  # for the run processes
    source = tmp_path / "analysis.ipynb"
    _notebook(source)
    with dask.config.set({"ctrlstack.profiles.one": ONE}):
        good = ctrlstack.submit(source, "one", params={"n": 20}, kernel="python3")
        bad = ctrlstack.submit(source, "one", params={"n": 100}, output=tmp_path / "out")
    assert good.state == "pending"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        records = [load(r.id, state_dir) for r in (good, bad)]
        if all(r.state not in ("pending", "running") for r in records):
            break
        time.sleep(1)
    done_good, done_bad = records
    assert done_good.state == "succeeded", pathlib.Path(good.log).read_text()
    executed = nbformat.read(done_good.output, as_version=4)
    text = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert "total 190" in text  # n = 20 was injected: sum(range(20))
    assert pathlib.Path(done_good.output).parent == tmp_path
    assert pathlib.Path(done_good.log).is_file()
    assert done_bad.state == "failed"
    assert done_bad.failed_cell == 3  # the cell after parameters, injected cell, Client cell
    assert done_bad.error == "cell 3 (\"print('ratio', 1 / (n - 100))\") failed: " + (
        "ZeroDivisionError: division by zero"
    )
    assert pathlib.Path(done_bad.output).parent == tmp_path / "out"
    assert "total 4950" in pathlib.Path(done_bad.output).read_text()  # written despite the error
    assert ctrlstack.clusters() == []  # both runs stopped their clusters
