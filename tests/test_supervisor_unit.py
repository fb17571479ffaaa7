"""Supervisor logic that needs no cluster: early registration and the owner watchdog."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from ctrlstack.config import get_profile
from ctrlstack.deploy import supervisor as supervisor_module
from ctrlstack.deploy.procs import ProcessId
from ctrlstack.deploy.registry import ClusterRecord, Registry
from ctrlstack.deploy.security import Credentials
from ctrlstack.deploy.supervisor import Supervisor


def supervisor(state_dir: Path, owner: ProcessId | None) -> Supervisor:
    registry = Registry(state_dir)
    Credentials.create(registry.tls_dir("demo"))
    return Supervisor("demo", get_profile("local"), registry, owner=owner)


def test_supervisor_registers_its_pid_before_the_slow_start(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Until the supervisor's own pid is in the record, liveness hangs on the "starting" grace
    # period alone; a launch-timeout longer than that would let `ctrlstack list` declare a
    # cluster dead (and kill its process group) while it is still starting.
    registry = Registry(state_dir)
    registry.reserve(ClusterRecord(name="demo", profile="local", backend="local"), lambda e: "x")
    Credentials.create(registry.tls_dir("demo"))
    seen: list[ClusterRecord | None] = []

    async def start(self: Supervisor) -> None:
        seen.append(self.registry.read(self.name))
        raise RuntimeError("stop here")

    monkeypatch.setattr(Supervisor, "start", start)
    read_fd, write_fd = os.pipe()
    args = argparse.Namespace(
        name="demo", profile="local", spec=json.dumps(get_profile("local").to_dict()),
        state_dir=str(state_dir), ready_fd=write_fd, owner=None,
    )  # fmt: skip
    try:
        assert asyncio.run(supervisor_module._main(args)) == 1
        report = json.loads(os.read(read_fd, 65536).decode().splitlines()[0])
    finally:
        os.close(read_fd)
    assert report == {"ok": False, "error": "stop here", "type": "RuntimeError",
                      "kind": "failure"}  # fmt: skip
    (record,) = seen
    assert record is not None
    assert record.supervisor == ProcessId.current()
    assert record.supervisor.started == psutil.Process().create_time()
    assert record.pgid == os.getpgid(0)
    assert registry.read_pid_file("demo") is None  # the failed start removed the private dir
    assert record.state == "starting"
    assert registry.read("demo") is None  # a failed start leaves nothing


class FakeScheduler:
    status = SimpleNamespace(name="running")
    tasks: dict[str, Any] = {}  # noqa: RUF012
    clients: dict[str, Any] = {}  # noqa: RUF012


def test_a_zombie_owner_counts_as_gone(state_dir: Path) -> None:
    owner = subprocess.Popen(["sleep", "60"])
    try:
        sup = supervisor(state_dir, ProcessId.of(owner.pid))
        sup.cluster = SimpleNamespace(scheduler=FakeScheduler())  # type: ignore[assignment]
        os.kill(owner.pid, signal.SIGKILL)  # killed outright, and its parent does not reap it
        deadline = time.monotonic() + 10
        while psutil.Process(owner.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        start = time.monotonic()
        asyncio.run(asyncio.wait_for(sup.run_until_stopped(), 5))
        assert time.monotonic() - start < 3
    finally:
        owner.kill()
        owner.wait()


def test_a_live_owner_keeps_the_cluster_until_stop(state_dir: Path) -> None:
    sup = supervisor(state_dir, ProcessId.current())
    sup.cluster = SimpleNamespace(scheduler=FakeScheduler())  # type: ignore[assignment]

    async def scenario() -> float:
        task = asyncio.create_task(sup.run_until_stopped())
        await asyncio.sleep(0.7)  # more than a watch interval: the owner (this process) lives
        assert not task.done()
        begin = time.monotonic()
        await sup.handle_stop()
        await asyncio.wait_for(task, 3)
        return time.monotonic() - begin

    assert asyncio.run(scenario()) < 2
