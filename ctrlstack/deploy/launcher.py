"""Start a supervisor process and wait for its one-line ready report.

Order matters for "bad input changes nothing": the spec is validated and planned *here*, before
anything is created; only then is the name reserved and the supervisor spawned.  If the supervisor
fails, times out or dies, everything it started is killed (by process group) and the record is
removed before the error reaches the caller.

After the spawn the launcher never writes the record: the supervisor registers its own pid and
process group (see :mod:`ctrlstack.deploy.supervisor`), and a read-modify-write here could put a
stale copy back over the supervisor's.  The launcher only reserves the name before the spawn and
removes the record after a failed start, once the supervisor's process group is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from typing import Any

import psutil

from ctrlstack import _proc
from ctrlstack.config import ClusterSpec
from ctrlstack.deploy.registry import ClusterRecord, Registry, validate_name
from ctrlstack.topology.plan import PlanError, plan

__all__ = ["LaunchError", "check_spec", "start_supervisor"]


class LaunchError(RuntimeError):
    """A cluster did not start; the message carries the cause and the supervisor's log tail."""


def check_spec(spec: ClusterSpec) -> None:
    """Raise ``PlanError`` now if the spec cannot be placed on this machine."""
    from ctrlstack.topology.discover import discover

    plan(
        discover(),
        workers=None if spec.workers == "auto" else int(spec.workers),
        threads=None if spec.threads == "auto" else int(spec.threads),
        policy=spec.policy,
        smt=spec.smt,
    )


def _tail(path: str | None, lines: int = 25) -> str:
    if not path:
        return ""
    try:
        with open(path, errors="replace") as fh:
            return "".join(fh.readlines()[-lines:])
    except OSError:
        return ""


def _kill_group(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM the supervisor's process group, SIGKILL it after ``timeout``; bounded.

    ``proc`` (the process we spawned, whose pid is the group id) is reaped while we wait: an
    unreaped zombie is still a group member, so otherwise the group would never look empty.
    """
    pgid = proc.pid
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.poll()
        if not _group_running(pgid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _group_running(pgid: int) -> bool:
    """Whether any process of group ``pgid`` still runs; zombies do not count.

    The daemonised supervisor is re-parented to init, so after it dies it stays a zombie (and a
    group member) until init reaps it, which some container inits do late or never.
    """
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    for member in psutil.process_iter():
        try:
            if os.getpgid(member.pid) == pgid and member.status() != psutil.STATUS_ZOMBIE:
                return True
        except (OSError, psutil.Error):
            continue
    return False


def start_supervisor(
    name: str,
    spec: ClusterSpec,
    *,
    registry: Registry,
    timeout: float,
    ephemeral: bool = False,
) -> dict[str, Any]:
    """Spawn the supervisor for ``name`` and return its ready report (the cluster status)."""
    validate_name(name)
    check_spec(spec)
    log_path = str(registry.log_path(name))
    reservation = ClusterRecord(
        name=name,
        profile=spec.profile,
        backend=spec.backend,
        spec=spec.to_dict(),
        ephemeral=ephemeral,
        log=log_path,
    )
    registry.reserve(reservation)
    # From here on every exit path must release the name: nothing before the try may fail.
    read_fd = write_fd = -1
    proc: subprocess.Popen[bytes] | None = None
    try:
        read_fd, write_fd = os.pipe()
        argv = [
            sys.executable, "-m", "ctrlstack.deploy.supervisor",
            "--name", name,
            "--profile", spec.profile,
            "--spec", json.dumps(spec.to_dict()),
            "--state-dir", str(registry.root),
            "--ready-fd", str(write_fd),
        ]  # fmt: skip
        if ephemeral:
            argv += ["--owner-pid", str(os.getpid())]
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as log:
            proc = _proc.spawn(argv, stdout=log, stderr=log, pass_fds=[write_fd], new_session=True)
        os.close(write_fd)
        write_fd = -1
        report = _await_ready(read_fd, timeout, log_path)
        proc.wait(5)  # the intermediate parent of the daemonised supervisor
    except BaseException as exc:
        if proc is not None:
            _kill_group(proc)
            with contextlib.suppress(Exception):
                proc.wait(5)
        registry.remove(name, created=reservation.created)  # ours only, not a successor's
        if isinstance(exc, PlanError | LaunchError):
            raise
        if isinstance(exc, Exception):
            raise LaunchError(f"cluster {name!r} failed to start: {exc}") from exc
        raise
    finally:
        for end in (read_fd, write_fd):
            if end >= 0:
                os.close(end)
    return report


def _await_ready(read_fd: int, timeout: float, log_path: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise LaunchError(
                f"the supervisor did not report ready within {timeout:g} s "
                f"(ctrlstack.launch-timeout); its log:\n{_tail(log_path)}"
            )
        ready, _, _ = select.select([read_fd], [], [], min(left, 0.5))
        if not ready:
            continue
        chunk = os.read(read_fd, 65536)
        if not chunk:  # EOF: the supervisor died without a word
            # proc is only the intermediate parent of the double fork (it exits 0 at once), so
            # its exit code says nothing about the supervisor: the log does.
            raise LaunchError(
                f"the supervisor exited before reporting ready; its log:\n{_tail(log_path)}"
            )
        buf += chunk
    report: dict[str, Any] = json.loads(buf.split(b"\n", 1)[0])
    if not report.get("ok"):
        message = report.get("error", "unknown error")
        if report.get("plan_error"):
            raise PlanError(message)
        raise LaunchError(f"{report.get('type', 'Error')}: {message}")
    return report
