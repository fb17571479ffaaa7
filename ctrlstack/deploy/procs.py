"""The one home for "is this the process we started?" and "stop this process group".

Why it is strict: the registry lives in a home directory that many hosts share, and a pid means
nothing on another host or after a reboot; on one host it can be reused by an unrelated process
minutes after ours died.  A process is therefore named by :class:`ProcessId` — pid, start time,
host and boot id — and :meth:`ProcessId.process` returns it only when all of them match.  Every
signal ctrlstack sends goes through this module, and only to processes it can prove are its own:
a record with a pid but no start time, or from another host, is never signalled.

Zombies count as gone everywhere: a daemonised supervisor is re-parented to init, which some
container inits reap late or never, and a zombie runs nothing.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import psutil

__all__ = [
    "ProcessId",
    "boot_id",
    "gone",
    "group_members",
    "hostname",
    "stop_group",
    "stop_leftovers",
    "terminate",
    "wait_gone",
]

#: Start times are read from /proc in clock ticks; allow for rounding between readers.
START_TOLERANCE = 1.0


@functools.cache
def hostname() -> str:
    """This host's name as records store it (the short name is what Slurm shows)."""
    return socket.gethostname()


@functools.cache
def boot_id() -> str:
    """This boot of this host: a pid from before a reboot names nothing now."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return f"boot-{psutil.boot_time():.0f}"


def gone(proc: psutil.Process) -> bool:
    """Whether ``proc`` has exited (a zombie counts as exited)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


@dataclass(frozen=True)
class ProcessId:
    """A process named so that it cannot be confused with another: pid + start time + host."""

    pid: int
    started: float
    host: str
    boot: str

    @classmethod
    def current(cls) -> ProcessId:
        me = psutil.Process()
        return cls(me.pid, me.create_time(), hostname(), boot_id())

    @classmethod
    def of(cls, pid: int) -> ProcessId | None:
        """The identity of local process ``pid`` now (None if it does not run)."""
        try:
            return cls(pid, psutil.Process(pid).create_time(), hostname(), boot_id())
        except psutil.Error:
            return None

    @classmethod
    def from_dict(cls, data: Any) -> ProcessId | None:
        """Parse a stored identity; anything incomplete or mistyped gives None (never signalled)."""
        if not isinstance(data, dict):
            return None
        pid, started = data.get("pid"), data.get("started")
        host, boot = data.get("host"), data.get("boot")
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            return None
        if not isinstance(started, int | float) or isinstance(started, bool):
            return None
        if not isinstance(host, str) or not isinstance(boot, str):
            return None
        return cls(pid, float(started), host, boot)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def local(self) -> bool:
        """Whether the process was started on this host in this boot (else: cannot be judged)."""
        return self.host == hostname() and self.boot == boot_id()

    def process(self) -> psutil.Process | None:
        """The live process if it is provably this one; None if gone, reused, or not local."""
        if not self.local:
            return None
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.started) > START_TOLERANCE:
                return None  # the pid was reused
        except psutil.Error:
            return None
        return None if gone(proc) else proc

    def alive(self) -> bool | None:
        """True/False on its own host; None elsewhere (liveness must be judged another way)."""
        if not self.local:
            return None
        return self.process() is not None


def wait_gone(procs: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait at most ``timeout`` seconds for ``procs`` to exit; return those still running.

    Unlike :func:`psutil.wait_procs`, a zombie counts as exited.  Our own children are reaped
    while waiting so they do not stay zombies.
    """
    pending = list(procs)
    deadline = time.monotonic() + timeout
    while True:
        for proc in pending:
            with contextlib.suppress(psutil.Error, ChildProcessError):
                proc.wait(0)
        pending = [p for p in pending if not gone(p)]
        if not pending or time.monotonic() >= deadline:
            return pending
        time.sleep(0.05)


def terminate(proc: psutil.Process, timeout: float = 5.0) -> bool:
    """SIGTERM, then SIGKILL after ``timeout``; True if it is gone.  ``proc`` must come from
    :meth:`ProcessId.process` (or be our own child): this function does not check identity."""
    with contextlib.suppress(psutil.Error):
        proc.terminate()
    if not wait_gone([proc], timeout):
        return True
    with contextlib.suppress(psutil.Error):
        proc.kill()
    return not wait_gone([proc], timeout)


def group_members(pgid: int, *, since: float) -> list[psutil.Process]:
    """Live members of process group ``pgid`` started at or after ``since`` (epoch seconds).

    ``since`` rules out an unrelated group that reused the id.  Our own group is never
    returned: a wrong pgid (a foreground supervisor, a hand-edited record) must not make a
    command kill the shell job that runs it.
    """
    if pgid <= 1 or pgid == os.getpgrp():
        return []
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) != pgid:
                continue
            if proc.create_time() >= since - START_TOLERANCE and not gone(proc):
                found.append(proc)
        except (OSError, psutil.Error):
            continue
    return found


def stop_group(pgid: int, *, since: float, timeout: float = 5.0) -> int:
    """Terminate what is left of process group ``pgid`` (see :func:`group_members`).

    SIGTERM first (workers flush and exit), SIGKILL after ``timeout``; at most ``2 * timeout``
    seconds.  Returns how many processes were found.
    """
    procs = group_members(pgid, since=since)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
    alive = wait_gone(procs, timeout)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    wait_gone(alive, timeout)
    return len(procs)


def stop_leftovers(pgid: int, *, since: float, timeout: float = 5.0) -> int:
    """Stop what a *dead* supervisor left in its process group ``pgid`` (see :func:`stop_group`).

    Refused (returns 0) while a live process leads group ``pgid``: the leader of a supervisor's
    group (the launcher's short-lived intermediate, or a foreground supervisor) is gone once the
    supervisor is dead, and Linux does not hand out a pid that is still in use as a group id.
    A live leader therefore means the id was reused by an unrelated process group, which
    ``since`` alone cannot rule out (it may have started after the record was written).
    """
    try:
        if not gone(psutil.Process(pgid)):
            return 0
    except psutil.Error:
        pass
    return stop_group(pgid, since=since, timeout=timeout)
