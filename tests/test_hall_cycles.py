"""50 launch/stop cycles leave 0 processes, 0 records and a bounded number of logs (issue 6).

Through the API (the fast path: no CLI interpreter per command).  Every cycle checks that its
supervisor and the processes of its group are gone; at the end no process of ours is left on
the machine (no supervisor or worker with this test's state dir), the registry is empty, and
the logs of the name are pruned to ``ctrlstack.logs.keep-per-name``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest
from proc_helpers import alive

import ctrlstack
from ctrlstack.config import log_retention
from ctrlstack.deploy.registry import Registry

pytestmark = pytest.mark.slow

CYCLES = 50


def ours(state_dir: Path) -> list[psutil.Process]:
    """Live processes started for this state dir: supervisors (the path is on their command
    line) and everything in a process group one of them led."""
    found = []
    for proc in psutil.process_iter():
        try:
            if str(state_dir) in " ".join(proc.cmdline()) and alive(proc):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.mark.timeout(1500)  # ~5-15 s per cycle on a loaded 2-core machine
def test_fifty_launch_stop_cycles_leave_nothing(state_dir: Path) -> None:
    keep_per_name, _ = log_retention()
    registry = Registry(state_dir)
    groups: set[int] = set()
    timings = []
    t_all = time.monotonic()
    for i in range(CYCLES):
        t0 = time.monotonic()
        handle = ctrlstack.launch("local", name="cycle", workers=1, threads=1)
        record = handle.record
        assert record.supervisor is not None
        assert record.pgid is not None
        groups.add(record.pgid)
        sup = psutil.Process(record.supervisor.pid)
        t1 = time.monotonic()
        handle.stop()
        assert not alive(sup), f"cycle {i}: supervisor {sup.pid} still runs after stop"
        assert registry.names() == [], f"cycle {i}: {registry.names()}"
        timings.append((t1 - t0, time.monotonic() - t1))
        print(f"cycle {i}: launch {t1 - t0:.1f} s, stop {time.monotonic() - t1:.1f} s", flush=True)
    total = time.monotonic() - t_all
    print(
        f"\n{CYCLES} cycles in {total:.1f} s; launch median "
        f"{sorted(t[0] for t in timings)[CYCLES // 2]:.2f} s, stop median "
        f"{sorted(t[1] for t in timings)[CYCLES // 2]:.2f} s"
    )

    # 0 processes: no supervisor, nanny or worker of any of the 50 clusters.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        left = [p.pid for p in psutil.process_iter() if _in_groups(p, groups)]
        if not left:
            break
        time.sleep(0.2)
    assert not left, f"processes left in the clusters' groups: {left}"
    assert ours(state_dir) == []
    # 0 records, 0 private dirs.
    assert ctrlstack.clusters() == []
    assert sorted(p.name for p in (state_dir / "clusters").iterdir()) == [".lock"]
    # Logs: pruned to keep-per-name for the name.
    logs = sorted((state_dir / "logs").glob("cycle-*.log"))
    assert 1 <= len(logs) <= keep_per_name, [p.name for p in logs]


def _in_groups(proc: psutil.Process, groups: set[int]) -> bool:
    try:
        return os.getpgid(proc.pid) in groups and alive(proc)
    except (OSError, psutil.Error):
        return False
