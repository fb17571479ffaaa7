"""Process checks shared by the end-to-end tests: what runs, in which group, waiting for it.

Zombies count as gone: a killed process whose parent has not reaped it runs nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import psutil


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def group_members(pgid: int) -> list[int]:
    """Pids of the live (non-zombie) members of process group ``pgid``, in pid order."""
    out = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and alive(proc):
                out.append(proc.pid)
        except (OSError, psutil.Error):
            continue
    return out


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()
