"""Supervisor placement and ``launch(wait=N)`` on the real Slurm.

* ``wait=N`` returns once N workers are connected, and a job that dies at start (a prologue
  ``exit 3`` through the site escape hatch) fails the launch at once with the job's state and
  log tail, leaving neither a cluster nor a job behind.
* ``slurm.supervisor.where: job``: the supervisor itself runs as a Slurm job, so the cluster
  outlives the process that launched it; stop, and scancel of the supervisor job, leave an
  empty queue.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import ctrlstack
from ctrlstack import _proc
from ctrlstack.deploy.backends.slurm import SubmitError
from ctrlstack.deploy.launcher import LaunchError
from ctrlstack.deploy.waiting import JobDiedError

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(240)]


def test_launch_wait_raises_at_once_when_a_job_dies_at_start(slurm: Any, state_dir: Path) -> None:
    started = time.monotonic()
    with pytest.raises(JobDiedError) as info:
        ctrlstack.launch(
            "slurm-cpu",
            name="dies",
            workers=1,
            prologue=["echo prologue-about-to-fail", "exit 3"],
            wait=1,
            wait_timeout=120,
        )
    elapsed = time.monotonic() - started
    assert elapsed < 30, f"took {elapsed:.1f} s: the timeout (120 s) must not be what raised"
    message = str(info.value)
    assert "FAILED" in message
    assert "prologue-about-to-fail" in message  # the job's log tail
    assert "was stopped" in message
    assert ctrlstack.clusters() == []
    assert slurm.wait_empty(10) == []


def _until(what: str, check: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    exe = [sys.executable, "-c", "from ctrlstack.cli import main; main()"]
    return subprocess.run(
        [*exe, *args], capture_output=True, text=True, timeout=120, check=False, env=env
    )


def test_supervisor_as_a_job_outlives_its_launcher_scales_and_stops(
    slurm: Any, state_dir: Path, tmp_path: Path
) -> None:
    site = tmp_path / "dask"
    site.mkdir()
    (site / "site.yaml").write_text(
        "ctrlstack:\n  profiles:\n    slurm-sup:\n      backend: slurm\n      threads: 1\n"
        "      slurm:\n        partition: debug\n        memory: 1 GiB\n        interface: lo\n"
        "        supervisor: {where: job, walltime: '00:10:00', memory: 1 GiB}\n"
    )
    env = {**os.environ, "DASK_CONFIG": str(site)}
    launched = _cli(env, "launch", "slurm-sup", "--name", "sup", "--workers", "2", "--wait", "2")
    # The launching process has exited; the cluster lives on in its supervisor job.
    assert launched.returncode == 0, launched.stderr
    cluster = ctrlstack.get("sup")
    try:
        record = cluster.record
        assert record.supervisor_job is not None
        assert record.supervisor_job not in record.job_ids
        queue = slurm.queue()
        assert record.supervisor_job in queue
        assert len(queue) == 3
        shown = _proc.run(["scontrol", "show", "job", record.supervisor_job]).stdout
        assert "JobName=ctrlstack-supervisor-sup" in shown
        assert "JobState=RUNNING" in shown
        assert record.supervisor is not None
        assert record.host == record.supervisor.host
        client = cluster.client()
        try:
            assert client.submit(lambda x: x + 1, 41).result(timeout=30) == 42
        finally:
            client.close()
        cluster.scale(3)
        _until("3 connected workers", lambda: cluster.status().connected == 3, 60)
        assert len(slurm.queue()) == 4
        listed = _cli(env, "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert [r["name"] for r in json.loads(listed.stdout)] == ["sup"]
        logs = _cli(env, "logs", "sup")
        assert "cluster sup running at tls://" in logs.stdout
    finally:
        stopped = _cli(env, "stop", "sup")
    assert stopped.returncode == 0, stopped.stderr
    assert slurm.wait_empty(10) == []  # neither worker jobs nor the supervisor job
    assert ctrlstack.clusters() == []


def test_scancel_of_the_supervisor_job_cancels_its_worker_jobs(slurm: Any, state_dir: Path) -> None:
    cluster = ctrlstack.launch(
        "slurm-cpu",
        name="supkill",
        workers=2,
        supervisor={"where": "job", "walltime": "00:10:00", "memory": "1 GiB"},
        wait=2,
    )
    record = cluster.record
    assert record.supervisor_job is not None
    assert len(record.job_ids) == 2
    _proc.run(["scancel", record.supervisor_job])
    assert slurm.wait_empty(40) == []  # its worker jobs went with it
    assert ctrlstack.clusters() == []  # the supervisor removed its own record


def test_a_refused_supervisor_job_leaves_nothing(slurm: Any, state_dir: Path) -> None:
    started = time.monotonic()
    with pytest.raises(SubmitError, match=r"(?i)invalid partition"):
        ctrlstack.launch(
            "slurm-cpu",
            name="suprefused",
            workers=1,
            supervisor={"where": "job", "partition": "nope"},
        )
    assert time.monotonic() - started < 5
    assert slurm.queue() == []
    assert ctrlstack.clusters() == []


def test_a_supervisor_job_that_dies_before_ready_fails_the_launch_with_its_log(
    slurm: Any, state_dir: Path
) -> None:
    with pytest.raises(LaunchError) as info:
        ctrlstack.launch(
            "slurm-cpu",
            name="supdies",
            workers=1,
            supervisor={"where": "job", "prologue": ["echo supervisor-prologue-fails", "exit 4"]},
        )
    message = str(info.value)
    assert "supervisor job" in message
    assert "supervisor-prologue-fails" in message
    assert slurm.wait_empty(10) == []
    assert ctrlstack.clusters() == []
