"""End-to-end lifecycle of real pinned local clusters: launch, connect, list, scale, stop, crash.

Every cluster here is a real supervisor process with a real scheduler and real worker processes;
the assertions check processes and thread affinities through /proc, not our own bookkeeping.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

import ctrlstack
from ctrlstack.config import ConfigError
from ctrlstack.deploy.registry import Registry
from ctrlstack.topology.plan import PlanError

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "ctrlstack.cli"]
NCPU = len(os.sched_getaffinity(0))


def cli(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"ctrlstack {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
        )
    return proc


def group_members(pgid: int) -> list[int]:
    out = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid:
                out.append(proc.pid)
        except (ProcessLookupError, PermissionError):
            continue
    return out


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.2) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def test_launch_connect_list_scale_stop_across_processes(state_dir: Path) -> None:
    # Launch from one process (the CLI), which returns while the cluster keeps running.
    out = cli("launch", "local", "--name", "demo", "--workers", "1", "--threads", "1", "--json")
    status = json.loads(out.stdout)
    assert status["name"] == "demo"
    # TLS only, and loopback only for local clusters
    assert status["address"].startswith("tls://127.0.0.1:")

    # Seen from this process: listed, connectable, computing.
    (info,) = [c for c in ctrlstack.clusters() if c.name == "demo"]
    assert info.state == "running"
    record = Registry(state_dir).read("demo")
    assert record is not None
    assert record.supervisor is not None
    assert record.supervisor.process() is not None
    sup_pid = record.supervisor.pid
    assert (state_dir / "clusters" / "demo.json").stat().st_mode & 0o777 == 0o600

    client = ctrlstack.connect("demo")
    try:
        assert client.submit(lambda x: x + 1, 41).result(timeout=30) == 42

        handle = ctrlstack.get("demo")
        if NCPU >= 2:
            handle.scale(2)
            client.wait_for_workers(2, timeout=60)
            workers = handle.status().workers
            assert sorted(w.cpus or "" for w in workers) == ["0", "1"]  # one CPU each, disjoint
            assert {w.state for w in workers} == {"running"}

        # Too many workers: refused with a plan error, and nothing changes.
        before = handle.status().requested
        with pytest.raises(PlanError, match="fit"):
            handle.scale(NCPU + 1)
        assert handle.status().requested == before

        data = handle.adapt(minimum=1, maximum=NCPU)
        assert data.adapt is not None
        assert (data.adapt.minimum, data.adapt.maximum) == (1, NCPU)
        with pytest.raises(ValueError, match="minimum"):
            handle.adapt(minimum=3, maximum=1)
    finally:
        client.close()

    # Stop from yet another process; supervisor and every worker process must be gone.
    cli("stop", "demo")
    assert wait_until(lambda: not psutil.pid_exists(sup_pid), 30)
    assert record.pgid is not None
    assert wait_until(lambda: not group_members(record.pgid), 30), group_members(record.pgid)
    assert "demo" not in [c.name for c in ctrlstack.clusters()]
    listing = cli("list").stdout
    assert "demo" not in listing


def test_kill_9_supervisor_is_reported_dead_and_cleaned(state_dir: Path) -> None:
    handle = ctrlstack.launch("local", name="crash", workers=1, threads=1)
    record = handle.record
    assert record.supervisor is not None
    assert record.pgid is not None
    handle.wait_for_workers(1)
    assert len(group_members(record.pgid)) >= 2  # supervisor + worker process

    os.kill(record.supervisor.pid, signal.SIGKILL)
    assert wait_until(
        lambda: record.supervisor is not None and record.supervisor.process() is None, 10
    )

    (info,) = [c for c in ctrlstack.clusters() if c.name == "crash"]
    assert info.state == "dead"
    assert wait_until(lambda: not group_members(record.pgid), 20), group_members(record.pgid)
    # Reported once, then forgotten.
    assert "crash" not in [c.name for c in ctrlstack.clusters()]
    handle._client and handle._client.close()


def test_bad_input_changes_nothing(state_dir: Path) -> None:
    with pytest.raises(ConfigError, match="policy"):
        ctrlstack.launch("local", name="bad", policy="l4")
    with pytest.raises(ConfigError, match="nope"):
        ctrlstack.launch("nope", name="bad")
    with pytest.raises(PlanError):
        ctrlstack.launch("local", name="bad", workers=NCPU + 1, threads=1)
    with pytest.raises(ValueError, match="name"):
        ctrlstack.launch("local", name="bad name!")
    assert ctrlstack.clusters() == []
    assert list((state_dir / "clusters").glob("*.json")) == []

    proc = cli("launch", "local", "--name", "bad", "--policy", "numa", "--workers", str(NCPU + 1),
               check=False)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:")
    assert f"at most {NCPU} workers" in proc.stderr
    assert ctrlstack.clusters() == []


def test_duplicate_name_is_refused(state_dir: Path) -> None:
    ctrlstack.launch("local", name="twice", workers=1, threads=1)
    try:
        with pytest.raises(ValueError, match="already exists"):
            ctrlstack.launch("local", name="twice", workers=1, threads=1)
        assert [c.name for c in ctrlstack.clusters()] == ["twice"]
    finally:
        ctrlstack.stop("twice")


def test_ephemeral_cluster_stops_on_exit_and_on_exception(state_dir: Path) -> None:
    with ctrlstack.cluster("local", workers=1, threads=1) as client:
        assert client.submit(sum, [1, 2, 3]).result(timeout=30) == 6
        (info,) = ctrlstack.clusters()
        assert info.ephemeral
        pid = info.pid
    assert ctrlstack.clusters() == []
    assert pid is not None
    assert wait_until(lambda: not psutil.pid_exists(pid), 10)

    with (
        pytest.raises(RuntimeError, match="boom"),
        ctrlstack.cluster("local", workers=1, threads=1),
    ):
        raise RuntimeError("boom")
    assert ctrlstack.clusters() == []


SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    import ctrlstack
    with ctrlstack.cluster("local", workers=1, threads=1) as client:
        print("READY", os.environ.get("DASK_CTRLSTACK__STATE_DIR"), flush=True)
        time.sleep(120)
    """
)


def test_sigterm_to_script_stops_its_cluster(state_dir: Path, tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("READY"), line
        (info,) = ctrlstack.clusters()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        assert proc.returncode == 128 + signal.SIGTERM
        assert info.pid is not None
        assert wait_until(lambda: not psutil.pid_exists(info.pid), 20)
        assert ctrlstack.clusters() == []
    finally:
        if proc.poll() is None:
            proc.kill()


def test_owner_killed_outright_ephemeral_cluster_stops_itself(
    state_dir: Path, tmp_path: Path
) -> None:
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("READY")
        (info,) = ctrlstack.clusters()
        proc.kill()
        proc.wait(10)
        assert info.pid is not None
        assert wait_until(lambda: not psutil.pid_exists(info.pid), 30)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_run_command_gives_script_a_cluster_and_stops_it(state_dir: Path, tmp_path: Path) -> None:
    script = tmp_path / "work.py"
    out = tmp_path / "result.json"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, os, sys
            from distributed import Client
            with Client() as client:   # finds the cluster through DASK_SCHEDULER_ADDRESS
                total = client.submit(sum, range(int(sys.argv[1]))).result()
                info = client.scheduler_info()
            json.dump({{"total": total, "workers": len(info["workers"]),
                       "cluster": os.environ["CTRLSTACK_CLUSTER"]}}, open({str(out)!r}, "w"))
            """
        )
    )
    cli("run", "--profile", "local", "--workers", "1", "--threads", "1", str(script), "10")
    result = json.loads(out.read_text())
    assert result["total"] == 45
    assert result["workers"] == 1
    assert result["cluster"].startswith("run-")
    assert ctrlstack.clusters() == []

    failing = tmp_path / "fail.py"
    failing.write_text("import sys; sys.exit(3)\n")
    proc = cli("run", "--workers", "1", "--threads", "1", str(failing), check=False)
    assert proc.returncode == 3
    assert ctrlstack.clusters() == []
