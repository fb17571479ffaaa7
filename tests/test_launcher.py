"""The launcher's failure paths, with a fake supervisor (no Dask cluster): fast and exact.

The fake speaks the launcher's protocol (``--ready-fd``, ``--state-dir``, ``--name``, double fork,
own registry record) and misbehaves on request through ``FAKE_SUPERVISOR``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest

from ctrlstack import _proc
from ctrlstack.config import get_profile
from ctrlstack.deploy import launcher, lifecycle
from ctrlstack.deploy.launcher import LaunchError, start_supervisor
from ctrlstack.deploy.procs import wait_gone
from ctrlstack.deploy.registry import ClusterRecord, Registry
from ctrlstack.errors import UserError

FAKE = textwrap.dedent(
    """
    import argparse, json, os, sys, time
    from ctrlstack.deploy.procs import ProcessId
    from ctrlstack.deploy.registry import ClusterRecord, Registry
    from ctrlstack.deploy.status import ClusterStatus

    p = argparse.ArgumentParser()
    for opt in ("--name", "--profile", "--spec", "--state-dir", "--ready-fd", "--owner"):
        p.add_argument(opt)
    args = p.parse_args()
    mode = os.environ["FAKE_SUPERVISOR"]
    fd = int(args.ready_fd)
    if mode == "die":
        print("fake supervisor crashed", file=sys.stderr)
        sys.exit(3)
    if mode in ("fail", "planfail"):
        kind = "user" if mode == "planfail" else "failure"
        msg = {"ok": False, "error": "boom", "type": "RuntimeError", "kind": kind}
        os.write(fd, (json.dumps(msg) + "\\n").encode())
        sys.exit(1)
    if os.fork() > 0:
        os._exit(0)
    reg = Registry(args.state_dir)
    me = ProcessId.current()
    with open(os.environ["FAKE_PIDFILE"], "w") as fh:
        fh.write(str(me.pid))
    record = reg.read(args.name) or ClusterRecord(name=args.name, profile="p", backend="local")
    record.supervisor, record.pgid = me, os.getpgid(0)
    record.state = "running" if mode == "ok" else "starting"
    record.address = "tls://127.0.0.1:9"
    reg.write(record)
    if mode == "ok":
        status = ClusterStatus(name=args.name, pid=me.pid).to_dict()
        os.write(fd, (json.dumps({"ok": True, "status": status}) + "\\n").encode())
    time.sleep(60)
    """
)


@pytest.fixture
def fake(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    """Route start_supervisor to the fake; afterwards kill whatever it left and drop records."""
    script = tmp_path / "fake_supervisor.py"
    script.write_text(FAKE)
    pidfile = tmp_path / "pid"
    monkeypatch.setenv("FAKE_PIDFILE", str(pidfile))
    monkeypatch.setattr(launcher, "check_spec", lambda spec, name="": None)
    real_spawn = _proc.spawn

    def spawn(argv: Sequence[str], **kwargs: Any) -> Any:
        args = list(argv)
        i = args.index("-m")
        args[i : i + 2] = [str(script)]
        return real_spawn(args, **kwargs)

    monkeypatch.setattr(launcher._proc, "spawn", spawn)
    info: dict[str, Any] = {"registry": Registry(state_dir), "pidfile": pidfile}
    yield info
    if pidfile.exists():
        pid = int(pidfile.read_text())
        with contextlib.suppress(ProcessLookupError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)
    for path in (state_dir / "clusters").glob("*.json"):
        path.unlink()


def fake_pid(info: dict[str, Any]) -> int:
    deadline = time.monotonic() + 10
    while not info["pidfile"].exists() or not info["pidfile"].read_text():
        assert time.monotonic() < deadline, "the fake supervisor never started"
        time.sleep(0.02)
    return int(info["pidfile"].read_text())


def gone(pid: int) -> bool:
    try:
        return wait_gone([psutil.Process(pid)], 5) == []
    except psutil.NoSuchProcess:
        return True


def start(info: dict[str, Any], name: str = "demo", timeout: float = 20) -> Any:
    return start_supervisor(name, get_profile("local"), registry=info["registry"], timeout=timeout)


def test_the_launcher_never_writes_over_the_supervisors_record(
    fake: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SUPERVISOR", "ok")
    registry: Registry = fake["registry"]
    real_read = Registry.read

    def slow_read(self: Registry, name: str) -> ClusterRecord | None:
        # Any read-modify-write by the launcher: let the supervisor write in between.
        record = real_read(self, name)
        fake_pid(fake)
        deadline = time.monotonic() + 10
        while (now := real_read(self, name)) is not None and now.supervisor is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        return record

    monkeypatch.setattr(Registry, "read", slow_read)
    report = start(fake)
    monkeypatch.setattr(Registry, "read", real_read)
    record = registry.read("demo")
    assert record is not None
    assert record.supervisor is not None
    assert record.supervisor.pid == report.pid
    assert record.state == "running"
    assert lifecycle.judge(registry, record).state == "running"


def test_a_failure_before_the_spawn_releases_the_name(
    fake: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_fds() -> tuple[int, int]:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(launcher.os, "pipe", no_fds)
    with pytest.raises(LaunchError, match="Too many open files"):
        start(fake)
    assert fake["registry"].read("demo") is None


def test_a_silent_supervisor_times_out_and_is_cleaned_up_promptly(
    fake: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SUPERVISOR", "silent")
    begin = time.monotonic()
    with pytest.raises(LaunchError, match=r"did not report ready within 1 s"):
        start(fake, timeout=1.0)
    # Not 1 s + the 5 s SIGKILL grace: the spawned intermediate's zombie must not make the
    # (already dead) process group look alive.
    assert time.monotonic() - begin < 3
    assert fake["registry"].read("demo") is None
    assert gone(fake_pid(fake))


def test_a_supervisor_that_dies_silently_is_reported_with_its_log(
    fake: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SUPERVISOR", "die")
    with pytest.raises(LaunchError, match="exited before reporting ready") as info:
        start(fake)
    assert "fake supervisor crashed" in str(info.value)
    assert fake["registry"].read("demo") is None


def test_a_reported_start_failure_is_raised_and_nothing_is_left(
    fake: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SUPERVISOR", "fail")
    with pytest.raises(LaunchError, match="RuntimeError: boom"):
        start(fake)
    assert fake["registry"].read("demo") is None
    monkeypatch.setenv("FAKE_SUPERVISOR", "planfail")  # a user error found by the supervisor
    with pytest.raises(UserError, match="boom"):
        start(fake)
    assert fake["registry"].read("demo") is None


def test_the_name_is_checked_before_anything_is_created(fake: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="not allowed"):
        start(fake, name="../escape")
    assert list(fake["registry"].dir.iterdir()) == []


def test_a_live_name_is_refused_before_a_spawn(
    fake: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry: Registry = fake["registry"]
    registry.reserve(ClusterRecord(name="demo", profile="p", backend="local"), lambda e: "held")
    spawned: list[object] = []
    monkeypatch.setattr(launcher._proc, "spawn", lambda *a, **k: spawned.append(a))
    with pytest.raises(ValueError, match="already exists"):
        start(fake)
    assert spawned == []
    assert json.loads((registry.dir / "demo.json").read_text())["profile"] == "p"


def test_supervisor_argv_is_a_list_with_the_python_running_us(
    fake: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[str]] = []

    def spawn(argv: Sequence[str], **kwargs: Any) -> Any:
        seen.append(list(argv))
        raise _proc.CommandError(argv, None, "", "no")

    monkeypatch.setattr(launcher._proc, "spawn", spawn)
    with pytest.raises(LaunchError):
        start(fake)
    (argv,) = seen
    assert argv[:3] == [sys.executable, "-m", "ctrlstack.deploy.supervisor"]
    assert argv[argv.index("--name") + 1] == "demo"
    assert fake["registry"].read("demo") is None


def test_a_failed_start_does_not_remove_a_successors_record(
    fake: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # While our start hangs, the user stops it (`ctrlstack stop demo` removes the record) and
    # launches "demo" again; our clean-up must leave the new record alone.
    monkeypatch.setenv("FAKE_SUPERVISOR", "silent")
    registry: Registry = fake["registry"]
    successor = ClusterRecord(name="demo", profile="successor", backend="local")
    real_await = launcher._await_ready

    def await_ready(read_fd: int, proc: Any, timeout: float) -> Any:
        fake_pid(fake)
        deadline = time.monotonic() + 10
        while (now := registry.read("demo")) is None or now.supervisor is None:  # fake registered
            assert time.monotonic() < deadline
            time.sleep(0.02)
        registry.remove("demo")
        registry.reserve(successor, lambda e: "held")
        return real_await(read_fd, proc, 0.2)

    monkeypatch.setattr(launcher, "_await_ready", await_ready)
    with pytest.raises(LaunchError):
        start(fake)
    record = registry.read("demo")
    assert record is not None
    assert record.profile == "successor"
