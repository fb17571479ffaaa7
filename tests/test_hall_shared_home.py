"""One state dir, two "hosts": neither reaps or signals the other's clusters (issue 6, part 3).

Host A is this machine as it is.  Host B is the real ``ctrlstack`` command run in a subprocess
whose host name and boot id are different: a small wrapper fills the caches of
:func:`ctrlstack.deploy.procs.hostname` and :func:`~ctrlstack.deploy.procs.boot_id` with B's
values before running the CLI (or a snippet), so every part of ctrlstack in that process —
records, identities, judging — sees host B.  Nothing in ctrlstack itself is patched for tests.

Processes of "the other host" are real local processes here, which is the point: a pid in a
record of another host (or of this host before a reboot) may name a live, unrelated process on
the machine reading the record, and it must never be signalled.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from proc_helpers import alive, group_members, wait_until

import ctrlstack
from ctrlstack.deploy.procs import ProcessId, boot_id, hostname
from ctrlstack.deploy.registry import Registry
from ctrlstack.deploy.security import Credentials

HOST_B, BOOT_B = "node-b", "00000000-0000-0000-0000-00000000000b"
QUICK = 20.0

AS_HOST = '''
"""Run ctrlstack as if on another host: python as_host.py HOST BOOT (cli ARGS... | code CODE)."""
import builtins, io, socket, sys

host, boot, mode, *rest = sys.argv[1:]
from ctrlstack.deploy import procs

real_gethostname, real_open = socket.gethostname, builtins.open


def fake_open(file, *args, **kwargs):
    if file == "/proc/sys/kernel/random/boot_id":
        return io.StringIO(boot + "\\n")
    return real_open(file, *args, **kwargs)


procs.hostname.cache_clear()
procs.boot_id.cache_clear()
socket.gethostname, builtins.open = (lambda: host), fake_open
try:
    assert (procs.hostname(), procs.boot_id()) == (host, boot)  # cached from here on
finally:
    socket.gethostname, builtins.open = real_gethostname, real_open

if mode == "cli":
    from ctrlstack.cli import main

    main(args=rest, prog_name="ctrlstack")
else:
    exec(rest[0])
'''


@pytest.fixture
def as_host(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    wrapper = tmp_path / "as_host.py"
    wrapper.write_text(AS_HOST)

    def run(
        host: str, boot: str, mode: str, *args: str, timeout: float = QUICK
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(wrapper), host, boot, mode, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return run


@pytest.fixture
def bystander() -> Iterator[psutil.Process]:
    """A live, unrelated process in its own process group."""
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        yield psutil.Process(proc.pid)
    finally:
        proc.kill()
        proc.wait(10)


def test_wrapper_really_changes_the_host(as_host: Callable[..., Any]) -> None:
    code = "from ctrlstack.deploy import procs; print(procs.hostname(), procs.boot_id())"
    proc = as_host(HOST_B, BOOT_B, "code", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [HOST_B, BOOT_B]
    assert hostname() != HOST_B


@pytest.mark.slow
def test_cluster_of_host_a_from_host_b(state_dir: Path, as_host: Callable[..., Any]) -> None:
    handle = ctrlstack.launch("local", name="on-a", workers=1, threads=1)
    registry = Registry(state_dir)
    record = registry.read("on-a")
    assert record is not None
    assert record.supervisor is not None
    assert record.pgid is not None
    sup = psutil.Process(record.supervisor.pid)
    handle.wait_for_workers(1)
    members = group_members(record.pgid)
    assert len(members) >= 2  # supervisor and worker processes
    path = state_dir / "clusters" / "on-a.json"
    before = path.read_bytes()

    # B lists A's cluster as remote (its scheduler answers over TLS) and touches nothing.
    proc = as_host(HOST_B, BOOT_B, "cli", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    (entry,) = json.loads(proc.stdout)
    assert entry["state"] == "remote"
    assert entry["host"] == hostname()
    assert path.read_bytes() == before
    assert group_members(record.pgid) == members
    # forget is refused from B: the cluster provably runs.
    proc = as_host(HOST_B, BOOT_B, "cli", "forget", "on-a")
    assert proc.returncode == 2, proc.stderr
    assert "is remote" in proc.stderr
    assert path.read_bytes() == before

    # B connects with the credentials in the shared home and computes.
    code = textwrap.dedent(
        """
        import os, ctrlstack
        client = ctrlstack.connect("on-a")
        print(client.submit(os.getpid, pure=False).result(timeout=30))
        client.close()
        """
    )
    proc = as_host(HOST_B, BOOT_B, "code", code, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.split()[-1]) in set(members) - {sup.pid}  # ran in A's worker

    # B stops it through the scheduler; A's supervisor exits and removes its record.
    proc = as_host(HOST_B, BOOT_B, "cli", "stop", "on-a", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "stopped on-a"
    assert wait_until(lambda: not alive(sup), 30)
    assert wait_until(lambda: not group_members(record.pgid), 30)
    assert not path.exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_record(registry: Registry, name: str, host: str, boot: str, pid: int) -> Path:
    proc = psutil.Process(pid)
    ident = ProcessId(pid, proc.create_time(), host, boot)  # a perfect identity, but not here
    data = {
        "name": name,
        "profile": "local",
        "backend": "local",
        "state": "running",
        "created": proc.create_time() - 1,
        "host": host,
        "boot": boot,
        "supervisor": ident.to_dict(),
        "pgid": pid,
        "address": f"tls://127.0.0.1:{_closed_port()}",
    }
    registry.make_cluster_dir(name)
    Credentials.create(registry.tls_dir(name))
    path = registry.path(name)
    path.write_text(json.dumps(data))
    return path


def test_unreachable_record_of_host_b_is_kept_and_never_signalled(
    state_dir: Path, bystander: psutil.Process, as_host: Callable[..., Any]
) -> None:
    registry = Registry(state_dir)
    path = _write_record(registry, "on-b", HOST_B, BOOT_B, bystander.pid)
    before = path.read_bytes()

    # Seen from A (this host): unreachable, kept, the pid never signalled.
    proc = subprocess.run(
        [sys.executable, "-m", "ctrlstack.cli", "list", "--json"],
        capture_output=True,
        text=True,
        timeout=QUICK,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    (entry,) = json.loads(proc.stdout)
    assert entry["state"] == "unreachable"
    assert entry["host"] == HOST_B
    assert "not reachable from here" in entry["message"]
    assert path.read_bytes() == before
    proc = subprocess.run(
        [sys.executable, "-m", "ctrlstack.cli", "stop", "on-b"],
        capture_output=True,
        text=True,
        timeout=QUICK + 20,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0].startswith("error: cluster 'on-b' runs on host node-b")
    assert path.read_bytes() == before
    time.sleep(0.5)
    assert alive(bystander)

    # Seen from B itself, the same record is judged by its pid — the bystander matches the
    # identity, so B calls it running (its scheduler is not needed for that).
    proc = as_host(HOST_B, BOOT_B, "cli", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["state"] == "running"

    # forget on A removes the record only; still nothing signalled.
    proc = subprocess.run(
        [sys.executable, "-m", "ctrlstack.cli", "forget", "on-b"],
        capture_output=True,
        text=True,
        timeout=QUICK,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "forgot on-b (unreachable)"
    assert not path.exists()
    time.sleep(0.5)
    assert alive(bystander)


def test_record_of_this_host_before_a_reboot_is_dead_and_cleaned(
    state_dir: Path, bystander: psutil.Process, as_host: Callable[..., Any]
) -> None:
    registry = Registry(state_dir)
    path = _write_record(registry, "old-boot", hostname(), "boot-before-reboot", bystander.pid)
    assert boot_id() != "boot-before-reboot"
    proc = subprocess.run(
        [sys.executable, "-m", "ctrlstack.cli", "list", "--json"],
        capture_output=True,
        text=True,
        timeout=QUICK,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    (entry,) = json.loads(proc.stdout)
    assert entry["state"] == "dead"
    assert "rebooted" in entry["message"]
    assert not path.exists()
    assert not registry.cluster_dir("old-boot").exists()
    time.sleep(0.5)
    assert alive(bystander)  # its pid matched, but from another boot: never signalled
