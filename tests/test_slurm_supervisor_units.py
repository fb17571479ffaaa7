"""Pure parts of supervisor placement and ``launch(wait=N)`` (no Slurm needed).

* the judgement of a record whose supervisor runs as a Slurm job on *another* host: ``remote``
  while its scheduler answers, ``unreachable`` (never reaped) while its job may still run, and
  ``dead`` (cleaned up, worker jobs cancelled) only once Slurm says that job ended;
* the supervisor job script; the wait loop's judgement of dead jobs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ctrlstack.config import get_profile
from ctrlstack.deploy import lifecycle, placement, waiting
from ctrlstack.deploy.registry import ClusterRecord, Registry
from ctrlstack.deploy.status import ClusterStatus, JobStatus


def _record(registry: Registry) -> ClusterRecord:
    record = ClusterRecord(
        name="far",
        profile="slurm-cpu",
        backend="slurm",
        host="node-b",
        boot="other-boot",
        state="running",
        address="tls://node-b:4242",
        job_ids=["11", "12"],
        supervisor_job="10",
    )
    registry.write(record)
    return record


@pytest.fixture
def queue(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Slurm's answers and the cancellations asked for, instead of a Slurm on node-b."""
    seen: dict[str, Any] = {"states": {}, "cancelled": [], "probe": "refused"}
    monkeypatch.setattr(lifecycle, "_probe", lambda registry, record: seen["probe"])
    monkeypatch.setattr(placement, "job_state", lambda job_id: seen["states"].get(job_id))
    monkeypatch.setattr(placement, "finish_job", lambda job_id, wait=15: None)
    from ctrlstack.deploy.backends.slurm import SlurmBackend

    monkeypatch.setattr(
        SlurmBackend, "cancel", classmethod(lambda cls, ids, opts: seen["cancelled"].extend(ids))
    )
    return seen


def test_remote_supervisor_job_answering_is_remote(tmp_path: Path, queue: dict[str, Any]) -> None:
    registry = Registry(tmp_path)
    _record(registry)
    queue["probe"] = None
    assert [s.state for s in lifecycle.sweep(registry)] == ["remote"]
    assert registry.read("far") is not None


def test_remote_supervisor_job_running_but_silent_is_never_reaped(
    tmp_path: Path, queue: dict[str, Any]
) -> None:
    registry = Registry(tmp_path)
    _record(registry)
    queue["states"]["10"] = JobStatus(job_id="10", state="RUNNING", node="node-b")
    assert [s.state for s in lifecycle.sweep(registry)] == ["unreachable"]
    queue["states"].clear()  # Slurm cannot be asked: no proof either
    assert [s.state for s in lifecycle.sweep(registry)] == ["unreachable"]
    assert registry.read("far") is not None
    assert queue["cancelled"] == []


def test_remote_supervisor_job_that_ended_is_dead_and_its_jobs_cancelled(
    tmp_path: Path, queue: dict[str, Any]
) -> None:
    registry = Registry(tmp_path)
    _record(registry)
    queue["states"]["10"] = JobStatus(job_id="10", state="TIMEOUT", reason="TimeLimit")
    [status] = lifecycle.sweep(registry)
    assert status.state == "dead"
    assert "supervisor job 10" in (status.message or "")
    assert "TIMEOUT" in (status.message or "")
    assert registry.read("far") is None
    assert sorted(queue["cancelled"]) == ["11", "12"]


def test_supervisor_job_script() -> None:
    spec = get_profile("slurm-cpu", supervisor={"where": "job", "walltime": "02:00:00"})
    job = placement.supervisor_job(spec)
    assert job is not None
    assert job.partition == "debug"  # inherited from the workers' section
    argv = placement.supervisor_argv(
        "/py", name="c1", profile="slurm-cpu", state_dir="/s", spec_file="/s/x", ready_file="/r"
    )
    text = placement.job_script(job, name="c1", log="/s/log", argv=argv)
    assert "#SBATCH --time=02:00:00" in text
    assert "#SBATCH --signal=B:TERM@60" in text
    assert "#SBATCH --output=/s/log" in text
    assert text.rstrip().endswith("--no-daemon --as-job")
    assert "--spec-file /s/x" in text  # the spec is a file, not a command-line argument
    assert placement.supervisor_job(get_profile("slurm-cpu")) is None


def test_dead_jobs_and_wait() -> None:
    failed = JobStatus(job_id="5", state="FAILED", reason="NonZeroExitCode", log_tail="boom")
    scaled_down = JobStatus(job_id="6", state="CANCELLED")
    status = ClusterStatus(name="c", connected=0, jobs=[failed, scaled_down])
    assert waiting.dead_jobs(status) == [failed]
    with pytest.raises(waiting.JobDiedError, match="boom"):
        waiting.wait_for_workers(lambda: status, 1, 100, sleep=lambda s: None)
    pending = ClusterStatus(name="c", jobs=[JobStatus(job_id="7", state="PENDING")])
    clock = iter(range(100))
    with pytest.raises(waiting.WaitTimeoutError, match="0/2 workers"):
        waiting.wait_for_workers(
            lambda: pending, 2, 3, clock=lambda: float(next(clock)), sleep=lambda s: None
        )
    done = ClusterStatus(name="c", connected=2)
    assert waiting.wait_for_workers(lambda: done, 2, 1) is done
    with pytest.raises(ValueError, match="wait must be"):
        waiting.check_wait(0)


def test_supervisor_job_directives() -> None:
    job = placement.SupervisorJob(
        partition="login", account=None, qos="long", walltime=12 * 3600 + 1, cores=1,
        memory=2**31 + 1, extra_directives=("--comment=x",),
    )  # fmt: skip
    assert placement.directives(job, name="far", log="/l/far.log") == [
        "--job-name=ctrlstack-supervisor-far",
        "--partition=login",
        "--qos=long",
        "--time=12:00:01",
        "--nodes=1",
        "--ntasks=1",
        "--cpus-per-task=1",
        "--mem=2049M",
        "--output=/l/far.log",
        "--open-mode=append",
        f"--signal=B:TERM@{placement.STOP_GRACE}",
        "--comment=x",
    ]
    with pytest.raises(ValueError, match="newline"):
        placement.directives(job, name="far\n#SBATCH --x", log="/l")
