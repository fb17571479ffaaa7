"""Stacks, kernels, version checks and runs: the pure parts (fast, no network, no venvs)."""

from __future__ import annotations

import json
import pathlib

import dask
import nbformat
import pytest
from click.testing import CliRunner

from ctrlstack import cli
from ctrlstack.errors import NotFoundError, UserError
from ctrlstack.runs.execute import failing_cell
from ctrlstack.runs.params import inject, parse_params
from ctrlstack.runs.record import RunRecord, list_runs, load, save
from ctrlstack.stacks.build import build, build_steps
from ctrlstack.stacks.check import Drift, drift
from ctrlstack.stacks.kernel import in_job, kernel_env, kernel_slot
from ctrlstack.stacks.kernelspec import render
from ctrlstack.stacks.lock import lock_input, pinned
from ctrlstack.stacks.model import StackError, get_stack, parse_stack, read_stack_file, stacks
from ctrlstack.stacks.versions import compare, message
from ctrlstack.topology.cpuset import format_cpulist
from ctrlstack.topology.hwloc import from_hwloc_xml

ROOT = pathlib.Path(__file__).resolve().parents[1]
TESTS = pathlib.Path(__file__).resolve().parent
EPYC = TESTS / "fixtures" / "hwloc" / "AMD-19h-Zen3-2xEpyc-7763.xml"


# ------------------------------------------------------------------------------------ model
def test_packaged_stacks_are_ml_sci_hpc_each_with_a_hashed_lock() -> None:
    found = stacks()
    assert {"ml", "sci", "hpc"} <= set(found)
    for name in ("ml", "sci", "hpc"):
        stack = found[name]
        assert stack.lock is not None
        assert stack.lock.is_file()
        text = stack.lock.read_text()
        pins = pinned(text)
        # ctrlstack's own requirements and ipykernel are always resolved into the lock
        assert {"distributed", "dask", "numba", "ipykernel", "threadpoolctl"} <= set(pins)
        assert text.count("--hash=sha256:") >= len(pins)


def test_site_stack_from_config_and_bad_entries(tmp_path: pathlib.Path) -> None:
    tiny = TESTS / "stacks" / "tiny.toml"
    with dask.config.set({"ctrlstack.stacks": {"tiny": {"file": str(tiny), "prefix": "/x/y"}}}):
        stack = get_stack("tiny")
        assert stack.prefix == pathlib.Path("/x/y")
        assert stack.env == {"CTRLSTACK_TEST_STACK": "tiny"}
    with (
        dask.config.set({"ctrlstack.stacks": {"other": {"file": str(tiny)}}}),
        pytest.raises(StackError, match="defines stack 'tiny', not 'other'"),
    ):
        stacks()
    with dask.config.set({"ctrlstack.stacks-dir": str(tmp_path)}):
        assert get_stack("sci").prefix == tmp_path / "sci"
    with pytest.raises(NotFoundError, match=r"unknown stack .nope.; known stacks: .*sci"):
        get_stack("nope")


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"name": "a b"}, "name = 'a b' is invalid"),
        ({"name": "a", "packages": "numpy"}, "packages = 'numpy' is invalid"),
        ({"name": "a", "threads": {"numba-threading-layer": "fast"}}, "numba-threading-layer"),
        ({"name": "a", "env": {"1X": "y"}}, "env = "),
        ({"name": "a", "python": "3"}, "python = '3' is invalid"),
        ({"name": "a", "extra": 1}, "unknown key 'extra'"),
    ],
)
def test_bad_stack_files_name_the_key(body: dict, error: str) -> None:
    with pytest.raises(StackError, match=error):
        parse_stack(body, where="x.toml")


def test_kernel_env_adds_the_threading_layer_unless_default() -> None:
    stack = parse_stack(
        {"name": "a", "threads": {"numba-threading-layer": "omp"}, "env": {"A": "1"}}, where="x"
    )
    assert stack.kernel_env() == {"A": "1", "NUMBA_THREADING_LAYER": "omp"}
    assert parse_stack({"name": "a"}, where="x").kernel_env() == {}


# ------------------------------------------------------------------------------------ lock/build
def test_lock_input_adds_ctrlstack_requirements_once() -> None:
    stack = read_stack_file(ROOT / "environments" / "hpc.toml")
    lines = lock_input(stack).splitlines()
    assert lines[:2] == ["numpy", "dask[array]"]
    assert "ipykernel" in lines
    assert any(line.startswith("distributed") for line in lines)
    assert len(lines) == len(set(lines))


def test_pinned_reads_names_versions_and_extras() -> None:
    text = "# c\nDask[array]==2026.8.0 \\\n    --hash=sha256:ab\nzope.interface==7.1 ; x\n"
    assert pinned(text) == {"dask": "2026.8.0", "zope-interface": "7.1"}


def test_build_steps_uv_sync_with_hashes_and_editable_ctrlstack(tmp_path: pathlib.Path) -> None:
    stack = read_stack_file(TESTS / "stacks" / "tiny.toml")
    steps = build_steps(stack, tmp_path, tool="uv", uv="/bin/uv", source="/src/ctrlstack")
    assert steps[0][:2] == ["/bin/uv", "venv"]
    assert steps[0][-1] == str(tmp_path)
    assert steps[1][:3] == ["/bin/uv", "pip", "sync"]
    assert "--require-hashes" in steps[1]
    assert steps[1][-1] == str(stack.lock)
    assert steps[2][-3:] == ["--no-deps", "-e", "/src/ctrlstack"]
    pip = build_steps(stack, tmp_path, tool="pip", uv=None, source="ctrlstack==0.1.0")
    assert pip[1][-4:] == ["--require-hashes", "--no-deps", "-r", str(stack.lock)]
    assert pip[2][-2:] == ["--no-deps", "ctrlstack==0.1.0"]
    with pytest.raises(StackError, match="uv is not installed"):
        build_steps(stack, tmp_path, tool="uv", uv=None, source="x")


def test_build_refuses_a_non_empty_directory_that_is_not_a_venv(tmp_path: pathlib.Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    stack = read_stack_file(TESTS / "stacks" / "tiny.toml")
    with pytest.raises(StackError, match="not empty and not a virtual environment"):
        build(stack, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_drift_names_changed_missing_and_extra_packages() -> None:
    found = drift(
        {"toolz": "1.2.0", "dask": "1", "msgpack": "2"},
        {"toolz": "1.0.0", "Dask": "1", "extra": "3", "pip": "25", "ctrlstack": "0.1"},
    )
    assert found == [
        Drift("extra", None, "3"),
        Drift("msgpack", "2", None),
        Drift("toolz", "1.2.0", "1.0.0"),
    ]
    assert str(found[2]) == "toolz: locked 1.2.0, installed 1.0.0"


# ------------------------------------------------------------------------------------ kernels
def test_kernel_slot_is_one_l3_domain_outside_a_job_and_the_allocation_inside() -> None:
    machine = from_hwloc_xml(EPYC)
    slot = kernel_slot(machine, None, job=False)
    assert slot.threads == 8
    assert len(slot.leaves) == 1
    job = machine.restrict(frozenset(range(16)))
    whole = kernel_slot(job, None, job=True)
    assert format_cpulist(whole.cpus) == "0-15"
    assert kernel_slot(machine, 3, job=False).threads == 3
    assert in_job({"SLURM_JOB_ID": "7"})
    assert not in_job({})


def test_kernel_env_sets_slot_threads_and_keeps_the_stack_layer() -> None:
    slot = kernel_slot(from_hwloc_xml(EPYC), 4, job=False)
    env = kernel_env(slot, {"NUMBA_THREADING_LAYER": "omp", "HOME": "/h"})
    assert env["NUMBA_NUM_THREADS"] == env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "4"
    assert env["NUMBA_THREADING_LAYER"] == "omp"
    assert env["HOME"] == "/h"
    assert env["CTRLSTACK_CPUS"] == format_cpulist(slot.cpus)
    assert kernel_env(slot, {})["NUMBA_THREADING_LAYER"] == "workqueue"


def test_rendered_kernelspec_runs_the_launcher_from_the_stack_python() -> None:
    stack = read_stack_file(ROOT / "environments" / "hpc.toml")
    template = json.loads((ROOT / "kernels" / "hpc" / "kernel.json").read_text())
    spec = render(template, stack, pathlib.Path("/p/hpc/bin/python"))
    assert spec["argv"][:3] == ["/p/hpc/bin/python", "-m", "ctrlstack.stacks.kernel"]
    assert "{connection_file}" in spec["argv"]
    assert spec["env"]["NUMBA_THREADING_LAYER"] == "omp"
    assert spec["metadata"]["ctrlstack"] == {"stack": "hpc", "prefix": "/p/hpc"}
    generic = json.loads((ROOT / "kernels" / "_default" / "kernel.json").read_text())
    assert (
        "(hpc, ctrlstack)" in render(generic, stack, pathlib.Path("/b/bin/python"))["display_name"]
    )


# ------------------------------------------------------------------------------------ versions
def _side(**packages: str | None) -> dict:
    return {"packages": packages}


def test_compare_names_package_side_and_version() -> None:
    versions = {
        "client": _side(python="3.11.7.final.0", toolz="1.2.0", numba="0.68.1"),
        "scheduler": _side(python="3.11.9.final.0", toolz="1.2.0", numba="0.68.1"),
        "workers": {
            "w1": _side(python="3.11.1.final.0", toolz="1.0.0", numba="0.68.1"),
            "w2": _side(python="3.11.1.final.0", toolz="1.2.0", numba=None),
        },
    }
    found = compare(versions)
    assert [m.package for m in found] == ["toolz", "numba"]  # python 3.11.x agrees
    text = message(found, "demo")
    assert (
        "toolz: client 1.2.0, scheduler 1.2.0, workers 1.0.0 (1 of 2), workers 1.2.0 (1 of 2)"
        in text
    )
    assert (
        "numba: client 0.68.1, scheduler 0.68.1, workers 0.68.1 (1 of 2), workers not installed"
        in text
    )
    assert "cluster 'demo'" in text
    assert compare({"client": _side(dask="1"), "scheduler": _side(dask="1"), "workers": {}}) == []


# ------------------------------------------------------------------------------------ runs
def test_parse_params_yaml_values_and_errors() -> None:
    assert parse_params(["n=100", "x=0.5", "s=abc", "l=[1, 2]", "e="]) == {
        "n": 100, "x": 0.5, "s": "abc", "l": [1, 2], "e": "",
    }  # fmt: skip
    for bad in ("n", "1n=2", "a-b=1"):
        with pytest.raises(UserError, match="NAME=VALUE"):
            parse_params([bad])


def test_inject_after_the_parameters_cell_and_replace_old_injections() -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("n = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), params, nbformat.v4.new_code_cell("n")]
    inject(nb, {"n": 100})
    inject(nb, {"n": 200})
    assert [c.source.splitlines()[-1] for c in nb.cells] == ["# t", "n = 1", "n = 200", "n"]
    assert nb.cells[2].metadata["tags"] == ["injected-parameters"]


def test_failing_cell_finds_the_first_error_output() -> None:
    nb = nbformat.v4.new_notebook()
    ok, bad = nbformat.v4.new_code_cell("1"), nbformat.v4.new_code_cell("1/0")
    bad.outputs = [nbformat.v4.new_output("error", ename="ZeroDivisionError", evalue="boom")]
    nb.cells = [ok, bad]
    assert failing_cell(nb) == (1, "ZeroDivisionError: boom")
    nb.cells = [ok]
    assert failing_cell(nb) is None


def test_run_records_round_trip_and_a_dead_run_is_failed(tmp_path: pathlib.Path) -> None:
    record = RunRecord(
        id="20260101-000000-abcd", kind="notebook", input="/d/a.ipynb", output_dir="/d",
        profile="local", mode="local", state="running", pid=2**22 + 12345,
    )  # fmt: skip
    save(record, tmp_path)
    assert (tmp_path / "runs" / f"{record.id}.json").stat().st_mode & 0o777 == 0o600
    loaded = load(record.id, tmp_path)
    assert loaded.state == "failed"
    assert "died" in (loaded.error or "")
    assert loaded.output == "/d/a.20260101-000000-abcd.ipynb"
    assert [r.id for r in list_runs(tmp_path)] == [record.id]
    with pytest.raises(NotFoundError):
        load("nope", tmp_path)


# ------------------------------------------------------------------------------------ CLI
def test_cli_stack_list_and_user_errors(state_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    runner = CliRunner()
    listed = runner.invoke(cli.main, ["stack", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert {"ml", "sci", "hpc"} <= {row["name"] for row in json.loads(listed.output)}
    for argv, text in (
        (["stack", "build", "nope"], "error: unknown stack 'nope'"),
        (["stack", "check", "nope"], "error: unknown stack 'nope'"),
        (["kernels", "install", "--stack", "sci", "--prefix", str(tmp_path)], "is not built"),
    ):
        result = runner.invoke(cli.main, argv)
        assert result.exit_code == 2, (argv, result.output)
        assert result.output.strip().splitlines()[-1].startswith("error:"), result.output
        assert text in result.output
    bad = tmp_path / "notes.txt"
    bad.write_text("x")
    result = runner.invoke(cli.main, ["submit", str(bad)])
    assert result.exit_code == 2
    assert "expected a notebook (.ipynb) or script (.py)" in result.output
    with dask.config.set({"ctrlstack.stacks-dir": str(tmp_path / "none")}):
        result = runner.invoke(cli.main, ["stack", "check", "hpc"])
    assert result.exit_code == 1
    assert "hpc: not built" in result.output
    assert runner.invoke(cli.main, ["runs"]).output.strip() == "no runs"
