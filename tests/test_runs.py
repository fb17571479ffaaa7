"""Submitted runs without a queue: job scripts (Slurm and PBS), module loads, records, judging.

The real-Slurm path is in ``test_runs_slurm.py``; everything here is pure or touches only a
temporary state directory.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator

import dask
import psutil
import pytest

from ctrlstack.config import get_profile
from ctrlstack.deploy.batch import slurm as S
from ctrlstack.deploy.batch.options import resolve
from ctrlstack.deploy.status import JobStatus
from ctrlstack.runs import batch
from ctrlstack.runs.record import RunRecord, list_runs, load, new_id, process_alive, save
from ctrlstack.runs.submit import executor_argv

SITE_STACK = """\
name = "site"
description = "a site stack with module loads"
python = "3.11"
packages = ["numpy"]
ops = []
modules = ["gcc/13.2", "openmpi/4.1 ; touch /tmp/pwned"]
[threads]
numba-threading-layer = "workqueue"
[env]
"""

PBS_PROFILE = {
    "backend": "pbs",
    "workers": 3,
    "threads": 2,
    "pbs": {"queue": "workq", "walltime": "01:00:00", "memory": "2 GiB", "workers-per-job": 1},
}


@pytest.fixture
def site_stack(tmp_path: pathlib.Path) -> Iterator[str]:
    path = tmp_path / "site.toml"
    path.write_text(SITE_STACK)
    stacks = {"site": {"file": str(path), "prefix": str(tmp_path / "site-venv")}}
    with dask.config.set({"ctrlstack.stacks": stacks}):
        yield "site"


def _record(tmp_path: pathlib.Path, **kw: object) -> RunRecord:
    base: dict[str, object] = {
        "id": new_id(),
        "kind": "notebook",
        "input": str(tmp_path / "analysis.ipynb"),
        "output_dir": str(tmp_path / "out"),
        "profile": "slurm-cpu",
        "mode": "batch",
    }
    base.update(kw)
    return RunRecord(**base)  # type: ignore[arg-type]


def test_slurm_run_script_holds_the_whole_cluster_and_logs_to_the_run_log(
    tmp_path: pathlib.Path,
) -> None:
    spec = get_profile("slurm-cpu", workers=3, threads=2, policy="l3")
    record = _record(tmp_path)
    argv = executor_argv("/opt/py/bin/python", record, tmp_path / "state")
    text = batch.preview(spec, record, argv, {"VIRTUAL_ENV": "/opt/stack dir"})
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert "#SBATCH --cpus-per-task=6" in lines  # 3 workers x 2 threads, in one job
    assert "#SBATCH --mem=3072M" in lines  # 3 jobs' worth of the profile's 1 GiB
    assert "#SBATCH --partition=debug" in lines
    assert f"#SBATCH --job-name=ctrlstack-run-{record.id}" in lines
    assert f"#SBATCH --output={record.log}" in lines
    assert sum(1 for ln in lines if ln.startswith("#SBATCH --output")) == 1
    assert "export VIRTUAL_ENV='/opt/stack dir'" in lines
    assert lines[-1] == (
        f"exec /opt/py/bin/python -m ctrlstack.runs.execute --run {record.id} "
        f"--state-dir {tmp_path / 'state'}"
    )
    assert "3 pinned Dask worker(s)" in text


def test_pbs_run_script_comes_from_the_pure_pbs_builders(tmp_path: pathlib.Path) -> None:
    with dask.config.set({"ctrlstack.profiles.pbs-test": PBS_PROFILE}):
        spec = get_profile("pbs-test")
    record = _record(tmp_path, profile="pbs-test", scheduler="pbs")
    text = batch.preview(spec, record, ["/py", "-m", "ctrlstack.runs.execute"], {})
    lines = text.splitlines()
    assert "#PBS -l select=1:ncpus=6:mem=6144mb" in lines
    assert "#PBS -l walltime=01:00:00" in lines
    assert "#PBS -q workq" in lines
    assert f"#PBS -o {record.log}" in lines
    assert "#PBS -j oe" in lines
    assert not any(ln.startswith("#SBATCH") for ln in lines)


def test_stack_module_loads_go_into_run_and_worker_job_scripts_quoted(
    tmp_path: pathlib.Path, site_stack: str
) -> None:
    spec = get_profile("slurm-cpu", stack=site_stack)
    opts = resolve(spec, cluster_name="demo")
    assert opts.modules == ("gcc/13.2", "openmpi/4.1 ; touch /tmp/pwned")
    expected = ["module load gcc/13.2", "module load 'openmpi/4.1 ; touch /tmp/pwned'"]
    worker = S.job_script(
        opts, scheduler="tls://h:1", name="demo-0", credentials="/c", log_directory="/l"
    )
    run = batch.preview(spec, _record(tmp_path), ["/py"], {})
    for text in (worker, run):
        lines = text.splitlines()
        assert [ln for ln in lines if ln.startswith("module ")] == expected
        # the loads come before the command
        assert lines.index(expected[-1]) < next(
            i for i, ln in enumerate(lines) if ln.startswith("exec ")
        )


def test_profile_modules_follow_the_stacks_without_duplicates(
    tmp_path: pathlib.Path, site_stack: str
) -> None:
    profile = {
        "backend": "slurm",
        "threads": 1,
        "stack": site_stack,
        "slurm": {"modules": ["cuda/12", "gcc/13.2"], "interface": "lo"},
    }
    with dask.config.set({"ctrlstack.profiles.mods": profile}):
        opts = resolve(get_profile("mods"))
    assert opts.modules == ("gcc/13.2", "openmpi/4.1 ; touch /tmp/pwned", "cuda/12")


def test_ctrlstack_script_shows_the_stacks_module_loads(
    tmp_path: pathlib.Path, site_stack: str, state_dir: pathlib.Path
) -> None:
    cfg = tmp_path / "dask"
    cfg.mkdir()
    (cfg / "site.yaml").write_text(
        json.dumps(
            {
                "ctrlstack": {
                    "stacks": {"site": {"file": str(tmp_path / "site.toml")}},
                    "profiles": {"slurm-site": {"backend": "slurm", "threads": 1,
                                                "stack": "site", "slurm": {"interface": "lo"}}},
                }
            }
        )
    )  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "ctrlstack.cli", "script", "slurm-site", "--name", "x"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "DASK_CONFIG": str(cfg)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "module load 'openmpi/4.1 ; touch /tmp/pwned'" in out.stdout.splitlines()


def test_a_log_path_a_directive_cannot_hold_is_refused(tmp_path: pathlib.Path) -> None:
    spec = get_profile("slurm-cpu")
    record = _record(tmp_path, output_dir=str(tmp_path / "my results"))
    with pytest.raises(ValueError, match="may not contain whitespace"):
        batch.preview(spec, record, ["/py"], {})


def test_judge_job_marks_runs_whose_job_ended_without_them(tmp_path: pathlib.Path) -> None:
    running = JobStatus(job_id="7", state="RUNNING")
    assert batch.judge_job(_record(tmp_path, state="running"), running).state == "running"
    ended = batch.judge_job(_record(tmp_path, state="running"), None)
    assert ended.state == "failed"
    assert ended.error == "the job ended without the run recording its end"
    gone = JobStatus(job_id="7", state="TIMEOUT", reason="walltime")
    timed_out = batch.judge_job(_record(tmp_path, state="pending"), gone)
    assert (timed_out.state, timed_out.error) == (
        "failed",
        "the job reached its walltime (walltime)",
    )
    cancelled = batch.judge_job(
        _record(tmp_path, state="running"), JobStatus(job_id="7", state="CANCELLED")
    )
    assert cancelled.state == "cancelled"
    done = _record(tmp_path, state="succeeded")
    assert batch.judge_job(done, None).state == "succeeded"  # an end written stays


def test_record_liveness_uses_process_identity_not_the_bare_pid(
    tmp_path: pathlib.Path, state_dir: pathlib.Path
) -> None:
    from ctrlstack.deploy.procs import ProcessId

    me = ProcessId.current().to_dict()
    alive = _record(tmp_path, mode="local", state="running", pid=os.getpid(), process=me)
    assert process_alive(alive) is True
    # Same pid, another start time: the pid was reused by someone else -> the run is gone.
    reused = dict(me, started=me["started"] - 3600)
    record = _record(tmp_path, mode="local", state="running", pid=os.getpid(), process=reused)
    save(record, state_dir)
    judged = load(record.id, state_dir)
    assert judged.state == "failed"
    assert judged.error == "the run's process died without recording its end"
    # Another host: cannot be judged here, the state stays.
    elsewhere = dict(me, host="node-17")
    far = _record(tmp_path, state="running", pid=os.getpid(), process=elsewhere)
    assert process_alive(far) is None
    # A dead child of ours.
    child = psutil.Popen([sys.executable, "-c", "pass"])
    ident = ProcessId.of(child.pid)
    child.wait()
    assert ident is not None
    dead = _record(tmp_path, state="running", pid=child.pid, process=ident.to_dict())
    assert process_alive(dead) is False


def test_damaged_records_neither_crash_nor_hide_the_others(
    tmp_path: pathlib.Path, state_dir: pathlib.Path
) -> None:
    from ctrlstack.errors import NotFoundError

    good = _record(tmp_path, state="succeeded")
    save(good, state_dir)
    runs = state_dir / "runs"
    (runs / "20260101-000000-dead.json").write_text("{not json")
    (runs / "20260101-000001-beef.json").write_text("[1, 2]")
    assert [r.id for r in list_runs(state_dir)] == [good.id]
    with pytest.raises(NotFoundError, match="unreadable"):
        load("20260101-000000-dead", state_dir)
    with pytest.raises(NotFoundError, match="run ids look like"):
        load("../../etc/passwd", state_dir)


def test_runs_list_oldest_first_even_within_one_second(
    tmp_path: pathlib.Path, state_dir: pathlib.Path
) -> None:
    # Ids carry the second only: the file names of two runs submitted in one second sort by
    # their random suffix, which must not decide the order (it did, and flaked a Slurm test).
    first = _record(tmp_path, id="20260101-000000-ffff", created=1000.25)
    second = _record(tmp_path, id="20260101-000000-0000", created=1000.75)
    save(second, state_dir)
    save(first, state_dir)
    (state_dir / "runs" / "20260101-000000-aaaa.json").write_text(
        json.dumps({**_record(tmp_path, id="20260101-000000-aaaa").to_dict(), "created": "x"})
    )  # a damaged creation time sorts first and crashes nothing
    assert [r.id for r in list_runs(state_dir)] == [
        "20260101-000000-aaaa",
        first.id,
        second.id,
    ]


def test_refresh_never_overwrites_an_end_the_executor_wrote(
    tmp_path: pathlib.Path, state_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = _record(tmp_path, state="running", job_id="41", scheduler="slurm")
    save(record, state_dir)
    stale = load(record.id, state_dir)
    finished = load(record.id, state_dir)
    finished.state, finished.ended = "succeeded", time.time()
    save(finished, state_dir)  # the executor's last write, after `stale` was read
    monkeypatch.setattr(batch, "_query", lambda scheduler, ids: {})  # the job is gone
    (after,) = batch.refresh([stale], state_dir)
    assert after.state == "succeeded"
    assert load(record.id, state_dir).state == "succeeded"
    lost = _record(tmp_path, state="running", job_id="42", scheduler="slurm")
    save(lost, state_dir)
    (judged,) = batch.refresh([load(lost.id, state_dir)], state_dir)
    assert judged.state == "failed"
    assert load(lost.id, state_dir).state == "failed"
    # a queue that does not answer changes nothing
    monkeypatch.setattr(batch, "_query", lambda scheduler, ids: None)
    again = _record(tmp_path, state="pending", job_id="43", scheduler="slurm")
    save(again, state_dir)
    assert batch.refresh([load(again.id, state_dir)], state_dir)[0].state == "pending"
