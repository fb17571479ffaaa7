"""A Slurm cluster through the public doors (``ctrlstack.launch``, the CLI) on the real Slurm."""

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
from ctrlstack.deploy.status import ClusterStatus

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(240)]


def _until(what: str, check: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _jobs(status: ClusterStatus, state: str = "RUNNING") -> list[str]:
    return [j.job_id for j in status.jobs if j.state == state]


def test_launch_compute_scale_adapt_stop(slurm: Any, state_dir: Path) -> None:
    cluster = ctrlstack.launch("slurm-cpu", name="big", workers=2)
    try:
        assert cluster.address.startswith("tls://")
        cluster.wait_for_workers(2, timeout=60)
        client = cluster.client()
        try:
            assert client.submit(lambda x: x + 1, 41).result(timeout=30) == 42
            assert sum(client.gather(client.map(lambda x: x * x, range(20)))) == 2470
        finally:
            client.close()
        status = _until("2 running jobs", lambda: len(_jobs(s := cluster.status())) == 2 and s)
        assert all(j.node == "localhost" and j.end_time for j in status.jobs)
        assert sorted(cluster.record.job_ids) == sorted(_jobs(status))
        assert sorted(slurm.queue()) == sorted(_jobs(status))

        # scancel of a job: replaced within one poll period (2 s) plus sbatch's time.
        victim = min(cluster.record.job_ids)
        _proc.run(["scancel", victim])
        killed = time.monotonic()
        _until(
            "a replacement job",
            lambda: victim not in (q := slurm.queue()) and len(q) == 2,
            timeout=10,
        )
        assert time.monotonic() - killed < 6
        cluster.wait_for_workers(2, timeout=60)
        assert victim not in cluster.record.job_ids
        ended = [j for j in cluster.status().jobs if j.job_id == victim]
        assert [j.state for j in ended] == ["CANCELLED"]

        cluster.scale(4)
        cluster.wait_for_workers(4, timeout=60)
        _until("4 jobs in the queue", lambda: len(slurm.queue()) == 4)
        cluster.scale(1)
        _until("1 job in the queue", lambda: len(slurm.queue()) == 1)
        _until("1 connected worker", lambda: cluster.status().connected == 1)

        status = cluster.adapt(minimum=2, maximum=3)
        assert status.adapt is not None
        assert (status.adapt.minimum, status.adapt.maximum) == (2, 3)
        _until("adapt to reach its minimum", lambda: cluster.status().connected >= 2, 60)
        assert 2 <= len(slurm.queue()) <= 3
    finally:
        cluster.stop()
    assert slurm.wait_empty(10) == []
    assert ctrlstack.clusters() == []


def test_cli_script_launch_list_stop_and_rejection(
    slurm: Any, state_dir: Path, tmp_path: Path
) -> None:
    site = tmp_path / "dask"
    site.mkdir()
    (site / "site.yaml").write_text(
        "ctrlstack:\n  profiles:\n    slurm-bad:\n      backend: slurm\n"
        "      threads: 1\n      slurm: {partition: nope, interface: lo}\n"
    )
    env = {**os.environ, "DASK_CONFIG": str(site)}
    # The `ctrlstack` console script, without depending on the venv's bin/ entry.
    exe = [sys.executable, "-c", "from ctrlstack.cli import main; main()"]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*exe, *args], capture_output=True, text=True, timeout=120, check=False, env=env
        )

    script = cli("script", "slurm-cpu", "--name", "x")
    assert script.returncode == 0, script.stderr
    assert "#SBATCH --partition=debug" in script.stdout
    assert "ctrlstack.cli_batch worker tls://SCHEDULER-ADDRESS:PORT --name x-0" in script.stdout

    started = time.monotonic()
    bad = cli("launch", "slurm-bad", "--name", "bad")
    assert time.monotonic() - started < 10
    assert bad.returncode == 2, bad.stderr
    assert "invalid partition" in bad.stderr.lower()
    assert bad.stderr.count("\n") == 1  # one line, no traceback

    good = cli("launch", "slurm-cpu", "--name", "good", "--workers", "1")
    assert good.returncode == 0, good.stderr
    try:
        listed = cli("list", "--json")
        assert listed.returncode == 0, listed.stderr
        rows = json.loads(listed.stdout)
        assert [r["name"] for r in rows] == ["good"]
        assert len(rows[0]["jobs"]) == 1
    finally:
        stopped = cli("stop", "good")
    assert stopped.returncode == 0, stopped.stderr
    assert slurm.wait_empty(10) == []


def test_walltime_drain_replaces_first_and_loses_no_task(slurm: Any, state_dir: Path) -> None:
    """A 60 s job whose workers retire 30 s before its end: the replacement is submitted 15 s
    earlier, the old worker hands over and leaves, every task's result arrives."""
    from ctrlstack.deploy.worker import job_placement

    cluster = ctrlstack.launch(
        "slurm-cpu", name="wall", workers=1, walltime="00:01:00", retire_before=30
    )
    try:
        cluster.wait_for_workers(1, timeout=60)
        first = list(cluster.record.job_ids)
        assert len(first) == 1
        status = cluster.status()
        (job,) = [j for j in status.jobs if j.job_id == first[0]]
        _until(
            "the job to run",
            lambda: any(j.state == "RUNNING" and j.end_time for j in cluster.status().jobs),
        )
        client = cluster.client()
        try:
            before = set(client.run(job_placement))
            futures = client.map(lambda x: (time.sleep(0.25), x * x)[1], range(120))
            _until(
                "the first job to be replaced",
                lambda: first[0] not in cluster.record.job_ids,
                timeout=75,
            )
            assert sum(client.gather(futures)) == sum(i * i for i in range(120))
            cluster.wait_for_workers(1, timeout=30)
            after = set(client.run(job_placement))
            assert before.isdisjoint(after)  # a new worker, in the new job
        finally:
            client.close()
        assert cluster.status().connected >= 1
        assert "recomputed" not in cluster.logs()  # the retiring worker handed its results over
    finally:
        cluster.stop()
    del job


def test_killed_supervisor_jobs_are_cancelled_by_list(slurm: Any, state_dir: Path) -> None:
    import os
    import signal

    cluster = ctrlstack.launch("slurm-cpu", name="orphan", workers=2)
    jobs = list(cluster.record.job_ids)
    assert len(jobs) == 2
    supervisor = cluster.record.supervisor
    assert supervisor is not None
    os.kill(supervisor.pid, signal.SIGKILL)
    _until("the supervisor to die", lambda: supervisor.process() is None, 10)
    assert sorted(slurm.queue()) == sorted(jobs)  # nothing cancelled them yet
    listed = ctrlstack.clusters()
    assert [(s.name, s.state) for s in listed] == [("orphan", "dead")]
    assert slurm.wait_empty(10) == []
    assert ctrlstack.clusters() == []


def _per_job(client: Any) -> dict[str, list[dict[str, Any]]]:
    from ctrlstack.deploy.worker import job_placement

    jobs: dict[str, list[dict[str, Any]]] = {}
    for info in client.run(job_placement).values():
        jobs.setdefault(info["job_id"], []).append(info)
    return jobs


def test_packed_cluster_scales_by_worker_inside_jobs(slurm: Any, state_dir: Path) -> None:
    """2 jobs × 2 forked workers: 4→3 keeps both jobs (one with 1 worker) and every result,
    →1 cancels the emptied job, →4 adds jobs (the partly used one is not refilled)."""
    from ctrlstack.topology.cpuset import parse_cpulist

    cluster = ctrlstack.launch("slurm-cpu", name="packed", workers=4, workers_per_job=2, cores=2)
    try:
        cluster.wait_for_workers(4, timeout=90)
        client = cluster.client()
        try:
            jobs = _per_job(client)
            assert len(jobs) == 2
            assert sorted(len(w) for w in jobs.values()) == [2, 2]
            assert sorted(slurm.queue()) == sorted(jobs)
            for infos in jobs.values():  # pinning inside the packed job
                used = []
                for info in infos:
                    cpus = set().union(*(parse_cpulist(t["affinity"]) for t in info["threads"]))
                    assert cpus == parse_cpulist(info["slot_cpus"]), info
                    assert cpus <= parse_cpulist(info["job_cpus"]), info
                    used.append(cpus)
                assert not used[0] & used[1], used
            # Random results: a recomputed one would differ, so equality proves none was lost.
            futures = client.map(lambda i: os.urandom(16), range(24), pure=False)
            before = client.gather(futures)
            assert len({w for ws in client.who_has(futures).values() for w in ws}) == 4

            cluster.scale(3)
            _until("3 workers", lambda: len(client.scheduler_info()["workers"]) == 3, 30)
            assert sorted(len(w) for w in _per_job(client).values()) == [1, 2]
            assert sorted(slurm.queue()) == sorted(jobs)  # both jobs still run
            assert client.gather(futures) == before

            cluster.scale(1)
            _until("1 worker", lambda: len(client.scheduler_info()["workers"]) == 1, 30)
            _until("1 job in the queue", lambda: len(slurm.queue()) == 1, 20)
            (kept,) = slurm.queue()
            assert kept in jobs
            assert client.gather(futures) == before

            cluster.scale(4)
            cluster.wait_for_workers(4, timeout=90)
            sizes = {j: len(w) for j, w in _per_job(client).items()}
            assert sizes[kept] == 1
            assert sorted(sizes.values()) == [1, 1, 2]
            assert len(slurm.queue()) == 3
            assert cluster.status().requested == 4
            assert client.gather(futures) == before
            del futures
        finally:
            client.close()
    finally:
        cluster.stop()
    assert slurm.wait_empty(10) == []
